//! The global `tracing` subscriber every binary installs: the `RUST_LOG`
//! filter (`info` by default) and text or JSON lines.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

impl LogFormat {
    /// The names the command lines take (`--log-format`).
    pub const NAMES: [&str; 2] = ["text", "json"];
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?} (one of: {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    Stderr,
}

/// The filter from `RUST_LOG`, or `info` when it is unset or invalid.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the process's subscriber. Panics if one is installed already
/// (a binary calls this once, first thing).
pub fn init(format: LogFormat, output: LogOutput) {
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter());
    match (format, output) {
        (LogFormat::Text, LogOutput::Stdout) => builder.with_writer(std::io::stdout).init(),
        (LogFormat::Text, LogOutput::Stderr) => builder.with_writer(std::io::stderr).init(),
        (LogFormat::Json, LogOutput::Stdout) => builder.json().with_writer(std::io::stdout).init(),
        (LogFormat::Json, LogOutput::Stderr) => builder.json().with_writer(std::io::stderr).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_their_names_only() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("JSON".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::default(), LogFormat::Text);
        for name in LogFormat::NAMES {
            assert!(name.parse::<LogFormat>().is_ok(), "{name}");
        }
    }
}
