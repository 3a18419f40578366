//! Reading the layers: the kernel command line (`--cmdline-file`, else
//! `/proc/cmdline`) and the file (`--config`, else the kernel command line's
//! `sockfwd.config=`, else [`DEFAULT_FILE`] if it exists); then
//! [`Effective::try_from`] merges them with the flags.

use crate::config::cmdline::{self, Param};
use crate::config::layers::{
    ConfigError, Effective, FileLayer, Layers, Source, Warning, CONFIG_KEY,
};
use crate::config::values::ValueError;
use crate::config::Keys;
use std::io;
use std::path::{Path, PathBuf};

/// The configuration file read when none is named.
pub const DEFAULT_FILE: &str = "/etc/sockfwd/agent.toml";
/// Where the kernel command line is read from when `--cmdline-file` is absent.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// The effective configuration: the layers read (see the module docs), then
/// merged with `flags`; `rust_log` is `RUST_LOG`.
pub fn effective(
    config_file: Option<&Path>,
    cmdline_file: Option<&Path>,
    flags: Keys,
    rust_log: Option<String>,
) -> Result<Effective, ConfigError> {
    let mut warnings = Vec::new();
    let cmdline_path = cmdline_file.map_or_else(|| PathBuf::from(PROC_CMDLINE), Path::to_path_buf);
    let cmdline = match std::fs::read_to_string(&cmdline_path) {
        Ok(text) => Some((cmdline_path, cmdline::parse(&text))),
        Err(source) if cmdline_file.is_some() => {
            return Err(ConfigError::ReadCmdline(cmdline_path, source))
        }
        Err(source) => {
            warnings.push(Warning::CmdlineUnread(cmdline_path, source));
            None
        }
    };
    let params = cmdline.as_ref().map_or(&[][..], |(_, p)| p.as_slice());
    let (path, named_by) = file_to_read(config_file, params)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound && named_by == Source::Default => None,
        Err(source) => return Err(ConfigError::ReadFile(path, source)),
    };
    Effective::try_from(Layers {
        file: FileLayer {
            path,
            text,
            named_by,
        },
        cmdline,
        flags,
        rust_log,
        warnings,
    })
}

/// The file to read: the flag's, else the kernel command line's last
/// `sockfwd.config=`, else the default.
fn file_to_read(flag: Option<&Path>, params: &[Param]) -> Result<(PathBuf, Source), ConfigError> {
    let mut named = params.iter().filter(|p| p.key == CONFIG_KEY);
    if let Some(empty) = named
        .clone()
        .find(|p| p.value.as_deref().unwrap_or("").is_empty())
    {
        return Err(ConfigError::Value {
            key: Source::Cmdline.spell(CONFIG_KEY),
            place: Source::Cmdline.place(),
            value: format!("{:?}", empty.value.as_deref().unwrap_or("")),
            expected: ValueError::Expected("a file path").to_string(),
        });
    }
    Ok(
        match (flag, named.next_back().and_then(|p| p.value.as_ref())) {
            (Some(path), _) => (path.to_path_buf(), Source::Flag),
            (None, Some(path)) => (PathBuf::from(path), Source::Cmdline),
            (None, None) => (PathBuf::from(DEFAULT_FILE), Source::Default),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_comes_from_the_flag_then_the_kernel_command_line() {
        let params = cmdline::parse("sockfwd.config=/k.toml");
        assert_eq!(
            file_to_read(None, &params).unwrap(),
            ("/k.toml".into(), Source::Cmdline)
        );
        assert_eq!(
            file_to_read(None, &[]).unwrap(),
            (DEFAULT_FILE.into(), Source::Default)
        );
        assert_eq!(
            file_to_read(Some(Path::new("/f.toml")), &params).unwrap(),
            ("/f.toml".into(), Source::Flag)
        );
        let bare = cmdline::parse("sockfwd.config");
        let err = file_to_read(None, &bare).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid value \"\" for sockfwd.config on the kernel command line: expected a file path"
        );
    }
}
