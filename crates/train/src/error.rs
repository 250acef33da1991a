//! The error of everything in this crate that reads what a user wrote: configs and their
//! overrides, run folders, metrics files and study plans. Tensor work returns `candle_core::Error`.

/// A config, run folder or metrics file that cannot be used. The message names the file, key or
/// line, the value found and the value expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for ConfigError {
    fn from(message: &str) -> Self {
        Self(message.to_string())
    }
}
