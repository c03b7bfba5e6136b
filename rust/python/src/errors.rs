//! How core errors and panics become Python exceptions.
//!
//! | core | Python |
//! | --- | --- |
//! | `Error::Bundle` (a malformed bundle file) | `tinyfast.BundleError` (a `ValueError`), `.path` set |
//! | `Error::Io` with an OS error code | `OSError(errno, strerror, path)`: Python picks the subclass |
//! |                                   | (`FileNotFoundError`, `PermissionError`, ...), `.filename` set |
//! | `Error::Io` cut short (unexpected end of file, invalid data) | `tinyfast.BundleError` |
//! | `Error::InvalidInput` (speed, batch size, ids, kernel) | `ValueError` |
//! | `Error::Compute` (tokenizer failure, non-finite logits) | `RuntimeError` |
//! | a panic anywhere in the core (a bug) | `RuntimeError` naming it a bug |
//!
//! `BundleError` is defined in Python (`tinyfast/runtime.py`, as a subclass of both
//! `tinyfast.errors.TinyfastError` and `ValueError`, so the CLI reports it like every other user
//! error) and looked up once, when first raised.

use std::any::Any;
use std::io::ErrorKind;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use tinyfast_core::Error;

static BUNDLE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// A failure of work done without the GIL, converted to a Python exception once it is held again.
pub enum Failure {
    Core(Error),
    Panic(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Core(e)
    }
}

impl Failure {
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Core(e) => core_error(py, e),
            Failure::Panic(message) => PyRuntimeError::new_err(format!(
                "tinyfast internal error (a bug, please report it): the runtime panicked: {message}"
            )),
        }
    }
}

/// Runs `f` with the GIL released, turning a panic into a [`Failure`] instead of unwinding into
/// Python. Unwind safety is asserted: the core's shared state (the workspace pool) is a
/// poison-tolerant mutex of scratch buffers that every call resets before use.
pub fn detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> Result<T, Error> + Send,
    T: Send,
{
    let outcome = py.detach(move || match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failure::Core(e)),
        Err(payload) => Err(Failure::Panic(panic_message(payload.as_ref()))),
    });
    outcome.map_err(|f| f.into_pyerr(py))
}

/// Runs `f` (with the GIL held), turning a panic into a `RuntimeError`.
pub fn guarded<T>(py: Python<'_>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(Failure::Panic(panic_message(payload.as_ref())).into_pyerr(py)),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// The Python exception for a core error.
pub fn core_error(py: Python<'_>, e: Error) -> PyErr {
    match e {
        Error::Bundle { file, message } => {
            bundle_error(py, format!("{}: {message}", file.display()), &file)
        }
        Error::Io { path, source } => io_error(py, &path, &source),
        Error::InvalidInput(message) => PyValueError::new_err(message),
        Error::Compute(message) => {
            PyRuntimeError::new_err(format!("computation failed: {message}"))
        }
    }
}

/// `tinyfast.BundleError(message, path)`; a plain `ValueError` if `tinyfast.runtime` cannot be
/// imported (a broken install), so that the message is never lost.
pub fn bundle_error(py: Python<'_>, message: String, path: &Path) -> PyErr {
    let path = path.to_string_lossy().into_owned();
    match BUNDLE_ERROR.import(py, "tinyfast.runtime", "BundleError") {
        Ok(ty) => PyErr::from_type(ty.clone(), (message, path)),
        Err(import_error) => {
            let err = PyValueError::new_err(message);
            err.set_cause(py, Some(import_error));
            err
        }
    }
}

fn io_error(py: Python<'_>, path: &Path, source: &std::io::Error) -> PyErr {
    if matches!(
        source.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::InvalidData
    ) {
        // The file exists and was readable: its contents are what is wrong.
        return bundle_error(py, format!("{}: {source}", path.display()), path);
    }
    let name = path.to_string_lossy().into_owned();
    match source.raw_os_error() {
        // OSError(errno, strerror, filename) becomes FileNotFoundError, PermissionError, ...
        Some(errno) => PyOSError::new_err((errno, strerror(source), name)),
        None => PyOSError::new_err(format!("{name}: {source}")),
    }
}

/// The OS message without Rust's " (os error N)" suffix (Python shows the number itself).
fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}
