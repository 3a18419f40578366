//! Running the tools dist uses: each step says what it runs before it runs it
//! (no minutes of silence), and a failure names the command.

use std::process::Command;
use std::time::Instant;
use thiserror::Error;

/// A command that could not run or did not succeed.
#[derive(Debug, Error)]
pub enum CommandError {
    /// The program could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("`{command}` failed ({status}){}", clipped_stderr(.stderr))]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its error output, when it was captured.
        stderr: String,
    },
}

fn clipped_stderr(stderr: &str) -> String {
    const MAX: usize = 2000;
    let text = stderr.trim();
    if text.is_empty() {
        return String::new();
    }
    let cut = text.len().saturating_sub(MAX);
    let start = (cut..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    format!(":\n{}", &text[start..])
}

/// The command line as a user would type it (environment overrides first).
pub fn shown(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={:?}", k.to_str()?, v?.to_str()?)))
        .collect();
    words.push(cmd.get_program().to_string_lossy().into_owned());
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Announces `step`, runs `cmd` with its output on ours, and reports the time.
pub fn step(step: &str, cmd: &mut Command) -> Result<(), CommandError> {
    let command = shown(cmd);
    eprintln!("==> {step}\n    $ {command}");
    let start = Instant::now();
    let status = cmd.status().map_err(|source| CommandError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !status.success() {
        return Err(CommandError::Failed {
            command,
            status,
            stderr: String::new(),
        });
    }
    eprintln!("    ({:.1?})", start.elapsed());
    Ok(())
}

/// Runs `cmd` quietly and returns its standard output.
pub fn output(cmd: &mut Command) -> Result<String, CommandError> {
    let command = shown(cmd);
    let out = cmd.output().map_err(|source| CommandError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
