//! Running short external commands (`ip`, `tc`) with a time limit.
//!
//! These run synchronously: they are used from `Drop` (teardown) as well as
//! from setup, and each takes milliseconds.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Default time limit for one `ip`/`tc` invocation.
pub const SHORT: Duration = Duration::from_secs(10);

/// Renders a command line for messages.
pub fn display(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args...`, returns stdout; fails on a non-zero exit (with
/// stderr in the message) or after `timeout` (the command is killed).
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let command = display(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    // Read the pipes on threads so that a chatty command cannot block on a
    // full pipe while we wait for it.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::CommandTimeout { command, timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => {
                return Err(Error::Command {
                    command,
                    detail: e.to_string(),
                });
            }
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(Error::Command {
            command,
            detail: format!("{status}: {}", stderr.trim()),
        })
    }
}

/// Whether `program` can be found on PATH (or is an existing path).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_stdout_and_reports_failures_with_stderr() {
        assert_eq!(run("sh", &["-c", "echo hi"], SHORT).unwrap(), "hi\n");
        let err = run("sh", &["-c", "echo boom >&2; exit 3"], SHORT).unwrap_err();
        assert_eq!(err.label(), "command");
        assert!(err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn kills_commands_that_overrun() {
        let start = Instant::now();
        let err = run("sleep", &["5"], Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.label(), "command_timeout");
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
