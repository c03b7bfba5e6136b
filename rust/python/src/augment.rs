//! `tinyfast._native.WordVectors`, `Augmenter` and `AugmentPlan`: thin bindings over
//! tinyfast-augment (the Python side is `tinyfast.augment`). Arguments are copied out of Python
//! objects, the work runs with the GIL released, and errors map as:
//!
//! | tinyfast-augment | Python |
//! | --- | --- |
//! | `Error::Data` (a malformed vector or index file) | `ValueError`, with `.where` (`path` or `path:line`) and `.problem` |
//! | `Error::Io` | `OSError(errno, message, path)` (`FileNotFoundError`, ...) |
//! | `Error::Input` (a bad argument) | `ValueError` |

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use tinyfast_augment::augmenter::{ExtraVectors, MaskedLmCandidates, Sentence};
use tinyfast_augment::knn::Kernel;
use tinyfast_augment::vectors::{self, Loaded};
use tinyfast_augment::{Augmenter, Error, Index, Lexicon, Settings, Source};

use crate::errors::detached;

/// Converts an augmentation error (see the module docs).
fn augment_error(e: Error) -> PyErr {
    match e {
        Error::Data {
            ref path,
            line,
            ref message,
        } => {
            let place = match line {
                Some(line) => format!("{}:{line}", path.display()),
                None => path.display().to_string(),
            };
            let err = PyValueError::new_err(format!("{place}: {message}"));
            Python::attach(|py| {
                let value = err.value(py);
                let _ = value.setattr("where", place);
                let _ = value.setattr("problem", message.clone());
            });
            err
        }
        Error::Io { path, source } => {
            let name = path.to_string_lossy().into_owned();
            let text = source.to_string();
            let text = text
                .split(" (os error ")
                .next()
                .unwrap_or_default()
                .to_owned();
            match source.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, text, name)),
                None => PyOSError::new_err(format!("{name}: {text}")),
            }
        }
        Error::Input(message) => PyValueError::new_err(message),
    }
}

/// `errors::detached` (GIL released, panics caught) for work that fails with an augmentation
/// error: the error is carried out of the closure and converted once the GIL is back.
fn run<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> tinyfast_augment::Result<T> + Send,
) -> PyResult<T> {
    let outcome = detached(py, move || Ok(f()))?;
    outcome.map_err(augment_error)
}

fn kernel_named(name: Option<&str>) -> PyResult<Kernel> {
    let Some(name) = name else {
        return Ok(Kernel::detect());
    };
    Kernel::named(name)
        .filter(|k| k.available())
        .ok_or_else(|| {
            let here: Vec<String> = Kernel::ALL
                .into_iter()
                .filter(|k| k.available())
                .map(|k| format!("{:?}", k.name()))
                .collect();
            PyValueError::new_err(format!(
                "kernel {name:?} is not available here: expected one of {}",
                here.join(", ")
            ))
        })
}

fn threads_arg(threads: i64) -> PyResult<usize> {
    usize::try_from(threads)
        .ok()
        .filter(|&t| t <= 1024)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "threads must be in 0..=1024 (0 = one per core), got {threads}"
            ))
        })
}

fn matrix(values: &PyReadonlyArray2<'_, f32>) -> (Vec<f32>, usize, usize) {
    let view = values.as_array();
    let (rows, cols) = view.dim();
    (view.iter().copied().collect(), rows, cols)
}

/// Word vectors ready for the neighbour search (unit length, padded; see tinyfast-augment).
#[pyclass(frozen, name = "WordVectors", module = "tinyfast._native")]
pub struct PyWordVectors {
    index: Arc<Index>,
    loaded: Option<&'static str>,
}

#[pymethods]
impl PyWordVectors {
    /// Loads GloVe / word2vec text or a saved index. For text, `cache` names the saved index to
    /// reuse when it was built from this very file, or to write for next time.
    #[staticmethod]
    #[pyo3(signature = (path, cache = None))]
    fn load(py: Python<'_>, path: PathBuf, cache: Option<PathBuf>) -> PyResult<Self> {
        let (index, how) = run(py, move || vectors::load(&path, cache.as_deref()))?;
        let loaded = match how {
            Loaded::Index => "index",
            Loaded::Cached => "cached",
            Loaded::BuiltAndSaved => "built-and-saved",
            Loaded::Built => "built",
        };
        Ok(PyWordVectors {
            index: Arc::new(index),
            loaded: Some(loaded),
        })
    }

    /// Vectors handed over: `values[i]` (float32 [N, D]) is the vector of `words[i]`.
    #[staticmethod]
    fn from_arrays(
        py: Python<'_>,
        words: Vec<String>,
        values: PyReadonlyArray2<'_, f32>,
    ) -> PyResult<Self> {
        let (data, _, dim) = matrix(&values);
        let index = run(py, move || Index::from_vectors(words, &data, dim))?;
        Ok(PyWordVectors {
            index: Arc::new(index),
            loaded: None,
        })
    }

    /// Saves the index (binary, mapped by later loads) at `path`.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let index = self.index.clone();
        run(py, move || vectors::file::save(&index, &path, None))
    }

    /// How `load` got the vectors: "index", "cached", "built-and-saved", "built" (None for
    /// `from_arrays`).
    #[getter]
    fn loaded(&self) -> Option<&'static str> {
        self.loaded
    }

    #[getter]
    fn dim(&self) -> usize {
        self.index.dim()
    }

    fn __len__(&self) -> usize {
        self.index.len()
    }

    /// The row of `word` (as written, else lowercased), or None.
    fn row(&self, word: &str) -> Option<u32> {
        self.index.row(word)
    }

    fn word(&self, row: usize) -> PyResult<String> {
        if row >= self.index.len() {
            return Err(PyValueError::new_err(format!("no row {row}")));
        }
        Ok(self.index.word(row as u32).to_owned())
    }

    /// The `k` nearest rows of each query (float32 [Q, D]; scaled to unit length here) by cosine
    /// similarity, best first, never the row `exclude[q]` (-1: none). Returns (rows int64 [Q, k],
    /// scores float32 [Q, k]); rows past what the index holds are -1.
    #[pyo3(signature = (queries, k, exclude = None, threads = 0, kernel = None))]
    #[allow(clippy::type_complexity)]
    fn nearest<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        k: usize,
        exclude: Option<PyReadonlyArray1<'py, i64>>,
        threads: i64,
        kernel: Option<&str>,
    ) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>)> {
        let kernel = kernel_named(kernel)?;
        let threads = threads_arg(threads)?;
        let (data, n, dim) = matrix(&queries);
        if dim != self.index.dim() {
            return Err(PyValueError::new_err(format!(
                "queries have {dim} dimensions, the vectors {}",
                self.index.dim()
            )));
        }
        let exclude: Vec<Option<u32>> = match exclude {
            None => vec![None; n],
            Some(e) => e
                .as_array()
                .iter()
                .map(|&r| u32::try_from(r).ok())
                .collect(),
        };
        if exclude.len() != n {
            return Err(PyValueError::new_err("exclude needs one entry per query"));
        }
        let index = self.index.clone();
        let found = run(py, move || {
            let padded = index.padded_dim();
            let mut units = vec![0.0f32; n * padded];
            for (q, out) in data.chunks_exact(dim).zip(units.chunks_exact_mut(padded)) {
                if q.iter().any(|v| !v.is_finite()) {
                    return Err(Error::Input(
                        "a query holds a value that is not finite".into(),
                    ));
                }
                vectors::unit_into(q, out);
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| Error::Input(format!("cannot start threads: {e}")))?;
            Ok(pool.install(|| index.nearest(&units, &exclude, k, kernel)))
        })?;
        let mut rows = Array2::<i64>::from_elem((n, k), -1);
        let mut scores = Array2::<f32>::from_elem((n, k), f32::NEG_INFINITY);
        for (q, hits) in found.iter().enumerate() {
            for (j, &(r, s)) in hits.iter().enumerate() {
                rows[[q, j]] = i64::from(r);
                scores[[q, j]] = s;
            }
        }
        Ok((rows.into_pyarray(py), scores.into_pyarray(py)))
    }
}

/// The sentences of one chunk, split and planned (opaque to Python but for what the masked LM
/// needs).
#[pyclass(frozen, name = "AugmentPlan", module = "tinyfast._native")]
pub struct PyPlan {
    sentences: Vec<Sentence>,
}

#[pymethods]
impl PyPlan {
    fn __len__(&self) -> usize {
        self.sentences.len()
    }

    /// Each sentence's tokens, as the tokenizer should see them (`is_split_into_words`).
    fn tokens(&self) -> Vec<Vec<&str>> {
        self.sentences
            .iter()
            .map(|s| s.tokens.iter().map(|r| &s.text[r.clone()]).collect())
            .collect()
    }

    /// The words waiting for masked-LM candidates, in the order their candidate rows are
    /// expected: (sentence int64 [M], token int64 [M]).
    fn masked_words<'py>(
        &self,
        py: Python<'py>,
    ) -> (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>) {
        let (mut sentence, mut token) = (Vec::new(), Vec::new());
        for (i, s) in self.sentences.iter().enumerate() {
            for slot in s.slots.iter().filter(|x| x.source == Source::MaskedLm) {
                sentence.push(i as i64);
                token.push(slot.token as i64);
            }
        }
        (sentence.into_pyarray(py), token.into_pyarray(py))
    }

    /// How many replaceable words take candidates from the masked LM and from vectors.
    fn counts(&self) -> (usize, usize) {
        let slots = self.sentences.iter().flat_map(|s| &s.slots);
        let mlm = slots
            .clone()
            .filter(|x| x.source == Source::MaskedLm)
            .count();
        (mlm, slots.count() - mlm)
    }
}

/// One augmentation run (see `tinyfast.augment`).
#[pyclass(frozen, name = "Augmenter", module = "tinyfast._native")]
pub struct PyAugmenter {
    inner: Augmenter,
}

#[pymethods]
impl PyAugmenter {
    /// `mlm_words[id]`: the whole word output `id` of the masked LM stands for ("" for none);
    /// None when there is no masked LM. `lowercase`: its tokenizer lowercases. `vectors`: the
    /// word vectors, or None.
    #[new]
    #[pyo3(signature = (
        n, p, k, seed, *, threads = 0, mlm_words = None, lowercase = true, vectors = None,
        kernel = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        n: usize,
        p: f64,
        k: usize,
        seed: u64,
        threads: i64,
        mlm_words: Option<Vec<String>>,
        lowercase: bool,
        vectors: Option<&PyWordVectors>,
        kernel: Option<&str>,
    ) -> PyResult<Self> {
        if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
            return Err(PyValueError::new_err(format!(
                "p must be in [0, 1], got {p}"
            )));
        }
        let settings = Settings {
            n,
            p: p as f32,
            k,
            seed,
        };
        let kernel = kernel_named(kernel)?;
        let threads = threads_arg(threads)?;
        let index = vectors.map(|v| v.index.clone());
        let inner = run(py, move || {
            let lexicon = mlm_words.map(|w| Lexicon::new(w, lowercase));
            Augmenter::new(settings, lexicon, index, kernel, threads)
        })?;
        Ok(PyAugmenter { inner })
    }

    #[getter]
    fn kernel(&self) -> &'static str {
        self.inner.kernel().name()
    }

    #[getter]
    fn threads(&self) -> usize {
        self.inner.threads()
    }

    /// Per output id of the masked LM, whether it may be proposed (bool [V]); None without one.
    fn candidate_mask<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<bool>>> {
        let lexicon = self.inner.lexicon()?;
        Some(lexicon.candidate_mask().into_pyarray(py))
    }

    fn plan(&self, py: Python<'_>, texts: Vec<String>) -> PyResult<PyPlan> {
        let inner = &self.inner;
        let sentences = run(py, move || Ok(inner.plan(texts)))?;
        Ok(PyPlan { sentences })
    }

    /// The distinct words that take candidates from vectors but have none in them: give
    /// vectors for them to `variants` (the teacher's word pieces, averaged).
    fn missing_words(&self, plan: &PyPlan) -> Vec<String> {
        self.inner.missing_words(&plan.sentences)
    }

    /// The variants of every planned sentence (the original not included). `mlm_ids`: int64
    /// [M, W], a row of candidate ids (best first; < 0 for none) per `plan.masked_words()`;
    /// `extra_words` / `extra_values` (float32 [E, D]): vectors for `missing_words`; `streams`:
    /// a number per sentence that, with the seed, seeds its draws.
    #[pyo3(signature = (plan, streams, mlm_ids = None, extra_words = None, extra_values = None))]
    fn variants(
        &self,
        py: Python<'_>,
        plan: &PyPlan,
        streams: Vec<u64>,
        mlm_ids: Option<PyReadonlyArray2<'_, i64>>,
        extra_words: Option<Vec<String>>,
        extra_values: Option<PyReadonlyArray2<'_, f32>>,
    ) -> PyResult<Vec<Vec<String>>> {
        let mlm = mlm_ids.as_ref().map(|a| {
            let view = a.as_array();
            (view.iter().copied().collect::<Vec<i64>>(), view.dim().1)
        });
        let extra = match (extra_words, extra_values.as_ref()) {
            (Some(w), Some(v)) => Some((w, matrix(v).0)),
            (None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "extra_words and extra_values go together",
                ))
            }
        };
        let inner = &self.inner;
        let sentences = &plan.sentences;
        run(py, move || {
            let mlm = mlm
                .as_ref()
                .map(|(ids, width)| MaskedLmCandidates { ids, width: *width });
            let extra = extra
                .as_ref()
                .map(|(words, values)| ExtraVectors { words, values });
            inner.variants(sentences, mlm, extra, &streams)
        })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyWordVectors>()?;
    m.add_class::<PyAugmenter>()?;
    m.add_class::<PyPlan>()?;
    Ok(())
}
