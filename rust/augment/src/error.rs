//! The crate's one error type: a file that cannot be read, a file whose contents are wrong (with
//! the line, when there is one), or a caller's argument out of range. Never a panic.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// The operating system refused to open, read or write `path`.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `path` was read, but what it holds is malformed (at `line`, 1-based, when known).
    Data {
        path: PathBuf,
        line: Option<u64>,
        message: String,
    },
    /// An argument a caller passed is invalid (a probability, a count, a shape).
    Input(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn data(path: impl Into<PathBuf>, line: Option<u64>, message: String) -> Self {
        Error::Data {
            path: path.into(),
            line,
            message,
        }
    }

    pub(crate) fn input(message: impl Into<String>) -> Self {
        Error::Input(message.into())
    }
}

impl From<tinyfast_core::Error> for Error {
    /// The core's file checks (`tinyfast_core::files`) report a special file as a malformed
    /// bundle file; here that file is a vector file.
    fn from(e: tinyfast_core::Error) -> Self {
        match e {
            tinyfast_core::Error::Io { path, source } => Error::Io { path, source },
            tinyfast_core::Error::Bundle { file, message } => Error::data(file, None, message),
            other => Error::Input(other.to_string()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Data {
                path,
                line: Some(line),
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
            Error::Data {
                path,
                line: None,
                message,
            } => write!(f, "{}: {message}", path.display()),
            Error::Input(message) => f.write_str(message),
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
