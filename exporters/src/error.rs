use thiserror::Error;

/// Errors from writing or pushing a profile.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("writing the profile: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding pprof: {0}")]
    Encode(String),
    #[error("drawing the flame graph: {0}")]
    FlameGraph(String),
    #[error("profile has no sample type {0}")]
    NoSuchValue(usize),
    #[error("pushing to Pyroscope: {0}")]
    Push(String),
    /// A sink could not deliver everything it was given.
    #[error("{0}")]
    Undelivered(String),
}
