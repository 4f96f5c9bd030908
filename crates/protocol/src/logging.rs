//! Log output of every Cascade process — the `cascade` binary and the lean
//! `cascade-agent` — set up in one place so both behave alike: to stderr,
//! filtered by `CASCADE_LOG`, as text (coloured only when stderr is a
//! terminal and `NO_COLOR` is unset) or as JSON lines
//! (`CASCADE_LOG_FORMAT=json`).
//!
//! It lives in the protocol crate because that is the lowest crate both
//! binaries depend on; it owns no process and is only called from `main`.

use std::io::IsTerminal;

/// The levels a bare `CASCADE_LOG` word may name.
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event for people; coloured on a terminal only.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = LogError;

    fn from_str(text: &str) -> Result<LogFormat, LogError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(LogError(format!(
                "CASCADE_LOG_FORMAT={text:?} is not a log format: use text or json"
            ))),
        }
    }
}

/// A `CASCADE_LOG` or `CASCADE_LOG_FORMAT` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LogError(String);

/// Parses a `CASCADE_LOG` filter such as `debug` or
/// `info,cascade_dp=debug`. Stricter than `EnvFilter` alone, which reads a
/// misspelt level (`debgu`) as the name of a target and so logs nothing
/// without a word: a bare word must be a level or a target of Cascade's
/// own crates (`cascade_site`), and `target=level` must name a level.
pub fn parse_filter(text: &str) -> Result<tracing_subscriber::EnvFilter, LogError> {
    let refuse = |why: String| {
        LogError(format!(
            "CASCADE_LOG={text:?}: {why}; for example CASCADE_LOG=debug or CASCADE_LOG=info,cascade_dp=debug"
        ))
    };
    let is_level = |word: &str| {
        let word = word.trim().to_ascii_lowercase();
        LEVELS.contains(&word.as_str())
            || matches!(word.as_str(), "0" | "1" | "2" | "3" | "4" | "5")
    };
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.contains('[') {
            // Span filters: their syntax is EnvFilter's to judge below.
            continue;
        }
        match directive.rsplit_once('=') {
            Some((_, level)) if !is_level(level) => {
                return Err(refuse(format!(
                    "{level:?} is not a level ({})",
                    LEVELS.join(", ")
                )))
            }
            Some(_) => {}
            None if is_level(directive)
                || directive.starts_with("cascade")
                || directive.contains("::") => {}
            None => {
                return Err(refuse(format!(
                    "{directive:?} is neither a level ({}) nor a cascade target such as cascade_dp",
                    LEVELS.join(", ")
                )))
            }
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map_err(|err| refuse(err.to_string()))
}

/// True when log lines may carry colour: stderr is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>).
pub fn colour_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Sets up the process's log: the filter from `CASCADE_LOG` (else
/// `default_filter`), the format `format` if given (a command-line flag),
/// else from `CASCADE_LOG_FORMAT` (else text). An unusable value of either
/// variable is an error, for `main` to report. Does nothing if a logger is
/// already installed.
pub fn init(default_filter: &str, format: Option<LogFormat>) -> Result<(), LogError> {
    let filter = match std::env::var("CASCADE_LOG") {
        Ok(text) if !text.trim().is_empty() => parse_filter(&text)?,
        Ok(_) | Err(std::env::VarError::NotPresent) => parse_filter(default_filter)?,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(LogError("CASCADE_LOG is not valid UTF-8".into()))
        }
    };
    let format = match format {
        Some(format) => format,
        None => match std::env::var("CASCADE_LOG_FORMAT") {
            Ok(text) if !text.trim().is_empty() => text.parse()?,
            _ => LogFormat::Text,
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // An error here means a logger is already set (tests): keep that one.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour_wanted()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_targets_and_directives_parse() {
        for good in [
            "debug",
            "INFO",
            "warn,cascade_dp=debug",
            "cascade_site",
            "sqlx=warn",
            "cascade_site::api=trace",
            "off",
            "",
        ] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_misspelt_level_is_refused_with_the_accepted_forms() {
        let err = parse_filter("debgu").unwrap_err().to_string();
        assert!(err.contains("CASCADE_LOG=\"debgu\""), "{err}");
        assert!(err.contains("trace, debug, info"), "{err}");
        let err = parse_filter("cascade_dp=loud").unwrap_err().to_string();
        assert!(err.contains("\"loud\" is not a level"), "{err}");
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("Text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        let err = "xml".parse::<LogFormat>().unwrap_err().to_string();
        assert!(err.contains("CASCADE_LOG_FORMAT=\"xml\""), "{err}");
    }
}
