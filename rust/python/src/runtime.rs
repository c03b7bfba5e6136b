//! `tinyfast._native.Runtime`: the core [`Runtime`] as a frozen (immutable, `Sync`) Python class.
//!
//! Every method that tokenizes or computes releases the GIL for that work, so Python threads
//! sharing one `Runtime` run concurrently (they share the core's thread pool and weights; the core
//! is `Send + Sync`). Arguments are checked and copied out of Python objects before the GIL is
//! released, and results are converted to numpy arrays after it is taken back.
//!
//! A `Runtime` loaded before `os.fork()` (gunicorn --preload, Celery prefork, a `fork`
//! multiprocessing pool) works in the child: the core builds the child its own thread pool on the
//! first call there (see `tinyfast_core::runtime`).

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tinyfast_core::config::{ExitKind, Quantization, Task};
use tinyfast_core::cpu::KernelKind;
use tinyfast_core::{Runtime, RuntimeOptions, TokenBatch};

use crate::convert;
use crate::errors::{detached, guarded};

/// The most worker threads `load` accepts: far beyond any CPU this runs on, and low enough that a
/// typo cannot make the process try to start millions of threads.
const MAX_THREADS: i64 = 1024;

/// A loaded bundle ready to predict (see `tinyfast.Runtime` for the documented Python API).
#[pyclass(frozen, name = "Runtime", module = "tinyfast._native")]
pub struct PyRuntime {
    inner: Runtime,
}

fn check_speed(speed: f64) -> PyResult<f32> {
    // Checked in f64 first: 1.00000001 would round to 1.0 as an f32.
    if !(speed.is_finite() && (0.0..=1.0).contains(&speed)) {
        return Err(PyValueError::new_err(format!(
            "speed must be a finite number in [0, 1], got {speed}"
        )));
    }
    Ok(speed as f32)
}

fn check_batch_size(batch_size: i64) -> PyResult<usize> {
    usize::try_from(batch_size)
        .ok()
        .filter(|&b| b >= 1)
        .ok_or_else(|| {
            PyValueError::new_err(format!("batch_size must be at least 1, got {batch_size}"))
        })
}

#[pymethods]
impl PyRuntime {
    /// Loads and validates the bundle directory `path`. `threads`: worker threads (0 = one per
    /// core). `kernel`: "avx512-vnni", "avx2" or "portable"; None takes $TINYFAST_KERNEL when set,
    /// else the fastest this CPU runs.
    #[staticmethod]
    #[pyo3(signature = (path, threads = 0, kernel = None))]
    fn load(py: Python<'_>, path: PathBuf, threads: i64, kernel: Option<&str>) -> PyResult<Self> {
        guarded(py, || {
            let threads = usize::try_from(threads)
                .ok()
                .filter(|_| threads <= MAX_THREADS)
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "threads must be in 0..={MAX_THREADS} (0 = one per core), got {threads}"
                    ))
                })?;
            let kernel = match kernel {
                None => None,
                Some(name) => Some(KernelKind::from_name(name).ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "unknown kernel {name:?}: expected \"avx512-vnni\", \"avx2\" or \
                         \"portable\" (or None for the fastest this CPU runs)"
                    ))
                })?),
            };
            let options = RuntimeOptions { threads, kernel };
            let inner = detached(py, move || Runtime::load(&path, options))?;
            Ok(PyRuntime { inner })
        })
    }

    /// Predicts a list of texts or of (text, text) pairs. Returns a dict of numpy arrays:
    /// labels int64 [N], probabilities float32 [N, C], logits float32 [N, C], exit_layers int32 [N].
    #[pyo3(signature = (inputs, speed = 0.0, batch_size = 32))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
        speed: f64,
        batch_size: i64,
    ) -> PyResult<Bound<'py, PyDict>> {
        guarded(py, || {
            let speed = check_speed(speed)?;
            let batch_size = check_batch_size(batch_size)?;
            let texts = convert::texts(inputs)?;
            let rt = &self.inner;
            let p = detached(py, || rt.predict(&texts.inputs(), speed, batch_size))?;
            convert::predictions(py, p)
        })
    }

    /// Predicts pre-tokenized, right-padded rows: `input_ids` [N, W] (int64 or int32, with the
    /// special tokens); the rows' lengths from `attention_mask` [N, W] (ones then zeros) or
    /// `lengths` [N] (not both; neither means every row is W tokens); `token_type_ids` [N, W]
    /// (zeros when None). Values past a row's length are ignored. Returns what `predict` returns.
    #[pyo3(signature = (
        input_ids, attention_mask = None, token_type_ids = None, *, lengths = None, speed = 0.0,
        batch_size = 32
    ))]
    #[allow(clippy::too_many_arguments)]
    fn predict_ids<'py>(
        &self,
        py: Python<'py>,
        input_ids: &Bound<'py, PyAny>,
        attention_mask: Option<&Bound<'py, PyAny>>,
        token_type_ids: Option<&Bound<'py, PyAny>>,
        lengths: Option<&Bound<'py, PyAny>>,
        speed: f64,
        batch_size: i64,
    ) -> PyResult<Bound<'py, PyDict>> {
        guarded(py, || {
            let speed = check_speed(speed)?;
            let batch_size = check_batch_size(batch_size)?;
            let ids = convert::int_array(input_ids, "input_ids", 2)?;
            let (rows, width) = (ids.rows(), ids.cols());
            let lengths = match (attention_mask, lengths) {
                (Some(_), Some(_)) => {
                    return Err(PyValueError::new_err(
                        "give attention_mask or lengths, not both",
                    ))
                }
                (Some(mask), None) => {
                    let mask = convert::int_array(mask, "attention_mask", 2)?;
                    if mask.shape != ids.shape {
                        return Err(PyValueError::new_err(format!(
                            "attention_mask has shape {:?} but input_ids has {:?}",
                            mask.shape, ids.shape
                        )));
                    }
                    convert::lengths_from_mask(&mask)?
                }
                (None, Some(lengths)) => {
                    let lengths = convert::int_array(lengths, "lengths", 1)?;
                    convert::lengths_from_array(&lengths, rows, width)?
                }
                (None, None) => vec![width; rows],
            };
            let id_values = convert::token_values(&ids, &lengths, "input_ids")?;
            let type_values = convert::token_types(token_type_ids, &ids, &lengths)?;
            let rt = &self.inner;
            let p = detached(py, || {
                let batch = TokenBatch {
                    ids: &id_values,
                    type_ids: type_values.as_deref(),
                    lengths: &lengths,
                    width,
                };
                rt.predict_ids(&batch, speed, batch_size)
            })?;
            convert::predictions(py, p)
        })
    }

    /// A masked_lm bundle's `k` best vocabulary ids at each `(row, token)` pair of `positions`
    /// ([M, 2] integers) of the right-padded `input_ids` [N, W] with their `lengths` [N]: int64
    /// [M, k], best first, -1 where fewer than k ids are allowed. `allowed` ([V] bools) restricts
    /// the ids returned.
    #[pyo3(signature = (
        input_ids, lengths, positions, k, *, token_type_ids = None, allowed = None,
        batch_size = 64
    ))]
    #[allow(clippy::too_many_arguments)]
    fn masked_lm_top_k<'py>(
        &self,
        py: Python<'py>,
        input_ids: &Bound<'py, PyAny>,
        lengths: &Bound<'py, PyAny>,
        positions: &Bound<'py, PyAny>,
        k: i64,
        token_type_ids: Option<&Bound<'py, PyAny>>,
        allowed: Option<&Bound<'py, PyAny>>,
        batch_size: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, || {
            let batch_size = check_batch_size(batch_size)?;
            let k = usize::try_from(k)
                .ok()
                .filter(|&k| k >= 1)
                .ok_or_else(|| PyValueError::new_err(format!("k must be at least 1, got {k}")))?;
            let ids = convert::int_array(input_ids, "input_ids", 2)?;
            let (rows, width) = (ids.rows(), ids.cols());
            let lengths = convert::lengths_from_array(
                &convert::int_array(lengths, "lengths", 1)?,
                rows,
                width,
            )?;
            let id_values = convert::token_values(&ids, &lengths, "input_ids")?;
            let type_values = convert::token_types(token_type_ids, &ids, &lengths)?;
            let pos = convert::int_array(positions, "positions", 2)?;
            if pos.cols() != 2 {
                return Err(PyValueError::new_err(format!(
                    "positions must have shape [M, 2] (row, token), got {:?}",
                    pos.shape
                )));
            }
            let at: Vec<(usize, usize)> = pos
                .data
                .chunks_exact(2)
                .enumerate()
                .map(
                    |(i, p)| match (usize::try_from(p[0]), usize::try_from(p[1])) {
                        (Ok(r), Ok(t)) => Ok((r, t)),
                        _ => Err(PyValueError::new_err(format!(
                            "positions[{i}] is ({}, {}); rows and tokens count from 0",
                            p[0], p[1]
                        ))),
                    },
                )
                .collect::<PyResult<_>>()?;
            let allowed: Option<Vec<bool>> = match allowed {
                None => None,
                Some(a) => Some(
                    convert::int_array(a, "allowed", 1)?
                        .data
                        .iter()
                        .map(|&v| v != 0)
                        .collect(),
                ),
            };
            let rt = &self.inner;
            let found = detached(py, || {
                let batch = TokenBatch {
                    ids: &id_values,
                    type_ids: type_values.as_deref(),
                    lengths: &lengths,
                    width,
                };
                rt.masked_lm_top_k(&batch, &at, allowed.as_deref(), k, batch_size)
            })?;
            convert::matrix(py, at.len(), k, found)
        })
    }

    /// Tokenizes as `predict` does (truncated to max_length). Returns a dict of int64 numpy
    /// arrays: input_ids, token_type_ids, attention_mask [N, W] (right-padded with 0 to the
    /// longest row) and lengths [N].
    fn tokenize<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        guarded(py, || {
            let texts = convert::texts(inputs)?;
            let rt = &self.inner;
            let encoded = detached(py, || rt.tokenize(&texts.inputs()))?;
            convert::encoded(py, encoded)
        })
    }

    /// The label names in id order (empty for regression).
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.inner.config().labels.clone()
    }

    /// Outputs per row: the number of labels, or 1 for regression.
    #[getter]
    fn num_outputs(&self) -> usize {
        self.inner.config().num_outputs()
    }

    /// Encoder layers.
    #[getter]
    fn num_layers(&self) -> usize {
        self.inner.config().architecture.num_layers
    }

    /// The 1-based layers after which an early-exit branch runs.
    #[getter]
    fn exit_layers(&self) -> Vec<usize> {
        self.inner.config().exits.iter().map(|e| e.layer).collect()
    }

    /// (layer, kind) of every exit branch, kind "fastbert" or "linear".
    #[getter]
    fn exits(&self) -> Vec<(usize, &'static str)> {
        self.inner
            .config()
            .exits
            .iter()
            .map(|e| {
                let kind = match e.kind {
                    ExitKind::FastBert => "fastbert",
                    ExitKind::Linear => "linear",
                };
                (e.layer, kind)
            })
            .collect()
    }

    /// Tokens per text or pair, special tokens included; longer inputs are truncated.
    #[getter]
    fn max_length(&self) -> usize {
        self.inner.config().max_length
    }

    /// "classification", "regression" or "masked_lm".
    #[getter]
    fn task(&self) -> &'static str {
        match self.inner.config().task {
            Task::Classification => "classification",
            Task::Regression => "regression",
            Task::MaskedLm => "masked_lm",
        }
    }

    /// "int8", or "none" for an f32 bundle.
    #[getter]
    fn quantization(&self) -> &'static str {
        match self.inner.config().quantization {
            Quantization::Int8 => "int8",
            Quantization::None => "none",
        }
    }

    /// The int8 kernel in use: "avx512-vnni", "avx2" or "portable".
    #[getter]
    fn kernel(&self) -> &'static str {
        self.inner.kernel().name()
    }

    /// Worker threads of the runtime's pool.
    #[getter]
    fn threads(&self) -> usize {
        self.inner.threads()
    }

    /// The bundle directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.bundle().dir.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Runtime({:?}, task={}, quantization={}, kernel={}, threads={}, exit_layers={:?})",
            self.inner.bundle().dir.display().to_string(),
            self.task(),
            self.quantization(),
            self.kernel(),
            self.threads(),
            self.exit_layers()
        )
    }
}
