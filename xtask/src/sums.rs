//! `SHA256SUMS` in the format `sha256sum -c` reads: `HEX  NAME` per file,
//! names relative to the directory, sorted.

use sha2::{Digest as _, Sha256};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The name of the checksum file.
pub const SUMS: &str = "SHA256SUMS";

/// Writes `dir/SHA256SUMS` over every other file under `dir`, named by its
/// path relative to `dir` (`man/man8/sockfwd-agent.8.gz`).
pub fn write(dir: &Path) -> std::io::Result<PathBuf> {
    let mut names = Vec::new();
    files(dir, "", &mut names)?;
    names.retain(|n| n != SUMS);
    names.sort();
    let mut text = String::new();
    for name in names {
        let digest = digest(&dir.join(&name))?;
        let _ = writeln!(text, "{digest}  {name}");
    }
    let path = dir.join(SUMS);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The files under `dir`, as paths relative to the top (`prefix` so far).
fn files(dir: &Path, prefix: &str, names: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let relative = format!("{prefix}{name}");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files(&entry.path(), &format!("{relative}/"), names)?;
        } else if kind.is_file() {
            names.push(relative);
        }
    }
    Ok(())
}

fn digest(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sums_match_known_digests_and_skip_themselves() {
        let dir = std::env::temp_dir().join(format!("xtask-sums-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b"), b"abc").unwrap();
        std::fs::write(dir.join("a"), b"").unwrap();
        std::fs::write(dir.join(SUMS), b"stale").unwrap();
        std::fs::create_dir_all(dir.join("man/man1")).unwrap();
        std::fs::write(dir.join("man/man1/c.1"), b"abc").unwrap();
        let text = std::fs::read_to_string(write(&dir).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  b\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  man/man1/c.1\n"
        );
    }
}
