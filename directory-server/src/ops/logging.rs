//! Log output: human-readable lines by default, or one JSON object per line (`json`) for log
//! shippers. Both go to standard error, filtered by `RUST_LOG` (default `info`); standard
//! output is kept for the `listening on` / `metrics on` lines that scripts read.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}; use \"text\" or \"json\"")),
        }
    }
}

/// Installs the process's log subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colour only for a person at a terminal: journald and log files show escapes raw.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        // Fields at the top level (`flatten_event`) are what most shippers index directly.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}
