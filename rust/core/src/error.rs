//! The one error type of the runtime: every failure a user can cause (a malformed bundle, a bad
//! argument, an input the model cannot take) is a value of [`Error`], never a panic.

use std::fmt;
use std::path::PathBuf;

/// What went wrong while loading a bundle or running the model.
#[derive(Debug)]
pub enum Error {
    /// A file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A bundle file is malformed or does not match `tinyfast.json`.
    Bundle {
        /// The bundle file at fault (`tinyfast.json`, `model.safetensors`, `tokenizer.json`), with
        /// its directory.
        file: PathBuf,
        /// The field or tensor, what was expected and what was found.
        message: String,
    },
    /// A caller's argument or input is invalid (speed, batch size, token ids, ...).
    InvalidInput(String),
    /// The computation itself failed (a non-finite activation, a tokenizer failure, ...).
    Compute(String),
}

impl Error {
    pub(crate) fn bundle(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Bundle {
            file: file.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    pub(crate) fn compute(message: impl Into<String>) -> Self {
        Error::Compute(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Bundle { file, message } => write!(f, "{}: {message}", file.display()),
            Error::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Error::Compute(m) => write!(f, "computation failed: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
