//! Python values in (texts, pairs, integer arrays) and numpy arrays out.

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};
use tinyfast_core::{Encoded, Input, Predictions};

const INPUTS_HINT: &str = "inputs must be a list of texts or a list of (text, text) pairs";

/// Owned copies of the caller's texts, so that the GIL can be released while they are used.
pub enum Texts {
    Single(Vec<String>),
    Pairs(Vec<(String, String)>),
}

impl Texts {
    /// Borrowed inputs for the core.
    pub fn inputs(&self) -> Vec<Input<'_>> {
        match self {
            Texts::Single(texts) => texts.iter().map(|t| Input::Single(t)).collect(),
            Texts::Pairs(pairs) => pairs.iter().map(|(a, b)| Input::Pair(a, b)).collect(),
        }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// A list (or any iterable) of `str`, or of `(str, str)` pairs given as 2-tuples or 2-lists; all
/// items of one kind.
pub fn texts(obj: &Bound<'_, PyAny>) -> PyResult<Texts> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{INPUTS_HINT}, not a single str: to predict one text, pass [text]"
        )));
    }
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
        return Err(PyTypeError::new_err(format!(
            "{INPUTS_HINT}, not {}: decode bytes to str first",
            type_name(obj)
        )));
    }
    let iter = obj
        .try_iter()
        .map_err(|_| PyTypeError::new_err(format!("{INPUTS_HINT}, got {}", type_name(obj))))?;
    let mut singles = Vec::new();
    let mut pairs = Vec::new();
    // (index, was a pair) of the first item, to name both kinds when they are mixed.
    let mut first: Option<(usize, bool)> = None;
    for (i, item) in iter.enumerate() {
        let item = item?;
        let is_pair = if let Ok(s) = item.cast::<PyString>() {
            singles.push(s.to_str()?.to_owned());
            false
        } else if let Some((a, b)) = pair(&item, i)? {
            pairs.push((a, b));
            true
        } else {
            return Err(PyTypeError::new_err(format!(
                "inputs[{i}]: expected a str or a (str, str) pair, got {}",
                type_name(&item)
            )));
        };
        match first {
            None => first = Some((i, is_pair)),
            Some((j, first_is_pair)) if first_is_pair != is_pair => {
                let kind = |p: bool| if p { "a pair" } else { "a text" };
                return Err(PyValueError::new_err(format!(
                    "inputs mix texts and pairs: inputs[{j}] is {} but inputs[{i}] is {}; pass \
                     only texts or only (text, text) pairs in one call",
                    kind(first_is_pair),
                    kind(is_pair)
                )));
            }
            Some(_) => {}
        }
    }
    Ok(match first {
        Some((_, true)) => Texts::Pairs(pairs),
        _ => Texts::Single(singles),
    })
}

/// `Some((a, b))` for a tuple or list of two `str`; `None` if `item` is no tuple or list; an
/// error for a tuple or list of another length or holding a non-`str`.
fn pair(item: &Bound<'_, PyAny>, i: usize) -> PyResult<Option<(String, String)>> {
    let items: Vec<Bound<'_, PyAny>> = if let Ok(t) = item.cast::<PyTuple>() {
        t.iter().collect()
    } else if let Ok(l) = item.cast::<PyList>() {
        l.iter().collect()
    } else {
        return Ok(None);
    };
    if items.len() != 2 {
        return Err(PyValueError::new_err(format!(
            "inputs[{i}]: a pair has exactly two texts, got a {} of {}",
            type_name(item),
            items.len()
        )));
    }
    let text = |k: usize| -> PyResult<String> {
        match items[k].cast::<PyString>() {
            Ok(s) => Ok(s.to_str()?.to_owned()),
            Err(_) => Err(PyTypeError::new_err(format!(
                "inputs[{i}][{k}]: expected a str, got {}",
                type_name(&items[k])
            ))),
        }
    };
    Ok(Some((text(0)?, text(1)?)))
}

/// An integer numpy array copied to i64, row-major, with its shape.
pub struct IntArray {
    pub data: Vec<i64>,
    pub shape: Vec<usize>,
}

impl IntArray {
    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    pub fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }
}

trait AsI64: Copy {
    fn as_i64(self) -> i64;
}

macro_rules! as_i64_lossless {
    ($($t:ty),*) => {$(
        impl AsI64 for $t {
            fn as_i64(self) -> i64 {
                i64::from(self)
            }
        }
    )*};
}
as_i64_lossless!(i64, i32, i16, i8, u32, u16, u8, bool);

impl AsI64 for u64 {
    fn as_i64(self) -> i64 {
        // Saturates: any value this large is out of every range checked later.
        i64::try_from(self).unwrap_or(i64::MAX)
    }
}

/// An integer (or bool) numpy array of `ndim` dimensions (1 or 2), any layout, native byte order.
pub fn int_array(obj: &Bound<'_, PyAny>, name: &str, ndim: usize) -> PyResult<IntArray> {
    let Ok(array) = obj.cast::<PyUntypedArray>() else {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a numpy integer array, got {}",
            type_name(obj)
        )));
    };
    if array.ndim() != ndim {
        return Err(PyValueError::new_err(format!(
            "{name} must be {ndim}-dimensional, got shape {:?}",
            array.shape()
        )));
    }
    let shape = array.shape().to_vec();
    macro_rules! try_types {
        ($($t:ty),*) => {$(
            if ndim == 2 {
                if let Ok(a) = obj.extract::<PyReadonlyArray2<'_, $t>>() {
                    let data = a.as_array().iter().map(|v| v.as_i64()).collect();
                    return Ok(IntArray { data, shape });
                }
            } else if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, $t>>() {
                let data = a.as_array().iter().map(|v| v.as_i64()).collect();
                return Ok(IntArray { data, shape });
            }
        )*};
    }
    try_types!(i64, i32, i16, i8, u64, u32, u16, u8, bool);
    let dtype = obj
        .getattr("dtype")
        .and_then(|d| d.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    Err(PyTypeError::new_err(format!(
        "{name} must hold integers (int64 or int32; native byte order), got dtype {dtype}"
    )))
}

/// Row lengths from a right-padded attention mask of 0s and 1s.
pub fn lengths_from_mask(mask: &IntArray) -> PyResult<Vec<usize>> {
    let cols = mask.cols();
    let mut lengths = Vec::with_capacity(mask.rows());
    for r in 0..mask.rows() {
        let row = &mask.data[r * cols..(r + 1) * cols];
        let mut len = 0;
        for (j, &m) in row.iter().enumerate() {
            match m {
                1 if len == j => len += 1,
                1 => {
                    return Err(PyValueError::new_err(format!(
                        "attention_mask[{r}]: a 1 at position {j} after a 0 at position {len}; \
                         rows must be right-padded (ones, then zeros)"
                    )))
                }
                0 => {}
                other => {
                    return Err(PyValueError::new_err(format!(
                        "attention_mask[{r}, {j}] is {other}; expected 0 or 1"
                    )))
                }
            }
        }
        lengths.push(len);
    }
    Ok(lengths)
}

/// Row lengths given directly (a 1-D array with one entry per row).
pub fn lengths_from_array(lengths: &IntArray, rows: usize, width: usize) -> PyResult<Vec<usize>> {
    if lengths.data.len() != rows {
        return Err(PyValueError::new_err(format!(
            "lengths has {} entries but input_ids has {rows} rows",
            lengths.data.len()
        )));
    }
    lengths
        .data
        .iter()
        .enumerate()
        .map(|(r, &n)| {
            usize::try_from(n)
                .ok()
                .filter(|&n| n <= width)
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "lengths[{r}] is {n}; expected 0..={width} (the width of input_ids)"
                    ))
                })
        })
        .collect()
}

/// The first `lengths[r]` values of every row as u32, padding set to 0 (padding values are never
/// read, so whatever the caller padded with is accepted).
pub fn token_values(array: &IntArray, lengths: &[usize], name: &str) -> PyResult<Vec<u32>> {
    let cols = array.cols();
    let mut out = vec![0u32; array.data.len()];
    for (r, &len) in lengths.iter().enumerate() {
        for j in 0..len.min(cols) {
            let at = r * cols + j;
            let v = array.data[at];
            out[at] = u32::try_from(v).map_err(|_| {
                PyValueError::new_err(format!(
                    "{name}[{r}, {j}] is {v}; expected a non-negative id below 2**32"
                ))
            })?;
        }
    }
    Ok(out)
}

/// The values of an optional `token_type_ids` array shaped as `ids`, within each row's length.
pub fn token_types(
    token_type_ids: Option<&Bound<'_, PyAny>>,
    ids: &IntArray,
    lengths: &[usize],
) -> PyResult<Option<Vec<u32>>> {
    let Some(types) = token_type_ids else {
        return Ok(None);
    };
    let types = int_array(types, "token_type_ids", 2)?;
    if types.shape != ids.shape {
        return Err(PyValueError::new_err(format!(
            "token_type_ids has shape {:?} but input_ids has {:?}",
            types.shape, ids.shape
        )));
    }
    Ok(Some(token_values(&types, lengths, "token_type_ids")?))
}

/// `data` as a numpy array of shape `[rows, cols]`.
pub fn matrix<'py, T: numpy::Element>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
    data: Vec<T>,
) -> PyResult<Bound<'py, PyAny>> {
    let array = Array2::from_shape_vec((rows, cols), data)
        .map_err(|e| PyRuntimeError::new_err(format!("tinyfast internal error: {e}")))?;
    Ok(array.into_pyarray(py).into_any())
}

/// `{"labels": int64 [N], "probabilities": float32 [N, C], "logits": float32 [N, C],
/// "exit_layers": int32 [N]}`.
pub fn predictions<'py>(py: Python<'py>, p: Predictions) -> PyResult<Bound<'py, PyDict>> {
    let n = p.len();
    let c = p.num_outputs;
    let out = PyDict::new(py);
    let labels: Vec<i64> = p.labels.iter().map(|&l| l as i64).collect();
    out.set_item("labels", labels.into_pyarray(py))?;
    out.set_item("probabilities", matrix(py, n, c, p.probabilities)?)?;
    out.set_item("logits", matrix(py, n, c, p.logits)?)?;
    let exits: Vec<i32> = p
        .exit_layers
        .iter()
        .map(|&l| i32::try_from(l).unwrap_or(i32::MAX))
        .collect();
    out.set_item("exit_layers", exits.into_pyarray(py))?;
    Ok(out)
}

/// `{"input_ids", "token_type_ids", "attention_mask": int64 [N, W], "lengths": int64 [N]}`,
/// right-padded with 0 to the longest row.
pub fn encoded<'py>(py: Python<'py>, e: Encoded) -> PyResult<Bound<'py, PyDict>> {
    let (n, w) = (e.rows(), e.width);
    let mut mask = vec![0i64; n * w];
    for (r, &len) in e.lengths.iter().enumerate() {
        mask[r * w..r * w + len].fill(1);
    }
    let widen = |v: Vec<u32>| -> Vec<i64> { v.into_iter().map(i64::from).collect() };
    let out = PyDict::new(py);
    out.set_item("input_ids", matrix(py, n, w, widen(e.ids))?)?;
    out.set_item("token_type_ids", matrix(py, n, w, widen(e.type_ids))?)?;
    out.set_item("attention_mask", matrix(py, n, w, mask)?)?;
    let lengths: Vec<i64> = e.lengths.iter().map(|&l| l as i64).collect();
    out.set_item("lengths", lengths.into_pyarray(py))?;
    Ok(out)
}
