//! `tinyfast._native.kernels`: single runtime kernels, callable one at a time, for the
//! micro-benchmarks in benches/micro. Not part of the documented API: it exists so that a
//! benchmark can time one kernel without the rest of a forward pass. Each call runs the core's own
//! code at the instruction-set level it is given ("avx512-vnni", "avx2" or "portable"):
//!
//! - [`PyPackedInt8Weights::gemm_dequant`]: the int8 GEMM with its fused dequantization
//!   (`tinyfast_core::gemm::gemm_dequant`, as every int8 linear calls it), one thread;
//! - [`quantize_rows`]: the per-token u8 activation quantizer that precedes it
//!   (`tinyfast_core::model::quantize::quantize_rows`), one thread;
//! - [`PySelfAttention::run`]: one layer's multi-head self-attention over packed sequences
//!   (`tinyfast_core::model::attention::self_attention`), on its own pool of `threads` workers.
//!
//! Results go into numpy arrays the caller allocated (C-contiguous, of the documented dtype and
//! shape), so a timed call allocates nothing; the work runs with the GIL released (do not write
//! to the arguments from another thread meanwhile). A wrong shape, layout, value or level name is
//! a `ValueError`; a wrong dtype is numpy's `TypeError`.

use std::sync::Mutex;

use numpy::ndarray::Dimension;
use numpy::{
    Element, PyReadonlyArray, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray,
    PyReadwriteArray1, PyReadwriteArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tinyfast_core::cpu::{Isa, KernelKind};
use tinyfast_core::gemm::{gemm_dequant, PackedWeights};
use tinyfast_core::model::attention::self_attention;
use tinyfast_core::quant::QuantizedMatrix;
use tinyfast_core::Error;

use crate::errors::detached;

/// The most tokens a [`PySelfAttention`] plans for: far above any batch the runtime takes, low
/// enough that a typo cannot ask for gigabytes of bookkeeping.
const MAX_TOKENS: usize = 1 << 24;
/// The most worker threads a [`PySelfAttention`] starts (as `Runtime.load` allows).
const MAX_THREADS: usize = 1024;

fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// The level named `name`, if this CPU runs it.
fn isa_named(name: &str) -> PyResult<Isa> {
    let names = |kinds: &mut dyn Iterator<Item = KernelKind>| {
        kinds.map(|k| k.name()).collect::<Vec<_>>().join(", ")
    };
    let kind = KernelKind::from_name(name).ok_or_else(|| {
        value_error(format!(
            "unknown kernel {name:?}: expected one of {}",
            names(&mut KernelKind::ALL.into_iter())
        ))
    })?;
    Isa::new(kind).ok_or_else(|| {
        value_error(format!(
            "kernel {name:?} is not available on this CPU (it runs {})",
            names(&mut Isa::available().into_iter().map(Isa::kind))
        ))
    })
}

/// Checks that an array argument has the expected shape.
fn check_shape(what: &str, got: &[usize], want: &[usize]) -> PyResult<()> {
    if got == want {
        Ok(())
    } else {
        Err(value_error(format!(
            "{what} has shape {got:?}, expected {want:?}"
        )))
    }
}

fn not_c_order(what: &str) -> PyErr {
    value_error(format!("{what} must be a C-contiguous, aligned array"))
}

/// The elements of `a` in C order. (`as_slice` alone would take a Fortran-ordered array too and
/// hand over its elements transposed.)
fn slice_of<'a, T: Element, D: Dimension>(
    what: &str,
    a: &'a PyReadonlyArray<'_, T, D>,
) -> PyResult<&'a [T]> {
    if !a.is_c_contiguous() {
        return Err(not_c_order(what));
    }
    a.as_slice().map_err(|_| not_c_order(what))
}

/// [`slice_of`] for an output array.
fn slice_mut_of<'a, T: Element, D: Dimension>(
    what: &str,
    a: &'a mut PyReadwriteArray<'_, T, D>,
) -> PyResult<&'a mut [T]> {
    if !a.is_c_contiguous() {
        return Err(not_c_order(what));
    }
    a.as_slice_mut().map_err(|_| not_c_order(what))
}

/// Int8 weights `[n, k]` (codes in -127..=127, one positive scale per output channel) packed once
/// into the GEMM kernels' layout.
#[pyclass(
    frozen,
    name = "PackedInt8Weights",
    module = "tinyfast._native.kernels"
)]
pub struct PyPackedInt8Weights {
    packed: PackedWeights,
}

#[pymethods]
impl PyPackedInt8Weights {
    /// Packs `codes` (int8 [n, k]) with `scales` (float32 [n]).
    #[new]
    fn new(
        py: Python<'_>,
        codes: PyReadonlyArray2<'_, i8>,
        scales: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<Self> {
        let [n, k] = [codes.shape()[0], codes.shape()[1]];
        let data = codes.as_array().iter().copied().collect::<Vec<i8>>();
        let scales = scales.as_array().to_vec();
        let packed = detached(py, move || {
            let invalid = |e: &dyn std::fmt::Display| Error::InvalidInput(e.to_string());
            let m = QuantizedMatrix::from_parts(n, k, data, scales).map_err(|e| invalid(&e))?;
            PackedWeights::new(&m).map_err(|e| invalid(&e))
        })?;
        Ok(PyPackedInt8Weights { packed })
    }

    /// Output channels.
    #[getter]
    fn n(&self) -> usize {
        self.packed.n()
    }

    /// Input features (the GEMM's K).
    #[getter]
    fn k(&self) -> usize {
        self.packed.k()
    }

    /// `out[t, o] = a_scales[t] * w_scale[o] * (sum_k a[t, k] * w[o, k] - a_zero_points[t] *
    /// colsum[o]) + bias[o]` with the kernel of level `kernel`: `a` uint8 [rows, k], `a_scales`
    /// float32 [rows], `a_zero_points` uint8 [rows], `bias` float32 [n] or None, `out` float32
    /// [rows, n].
    #[pyo3(signature = (a, a_scales, a_zero_points, bias, out, kernel))]
    #[allow(clippy::too_many_arguments)]
    fn gemm_dequant(
        &self,
        py: Python<'_>,
        a: PyReadonlyArray2<'_, u8>,
        a_scales: PyReadonlyArray1<'_, f32>,
        a_zero_points: PyReadonlyArray1<'_, u8>,
        bias: Option<PyReadonlyArray1<'_, f32>>,
        mut out: PyReadwriteArray2<'_, f32>,
        kernel: &str,
    ) -> PyResult<()> {
        let isa = isa_named(kernel)?;
        let (n, k) = (self.packed.n(), self.packed.k());
        let rows = a.shape()[0];
        check_shape("a", a.shape(), &[rows, k])?;
        check_shape("a_scales", a_scales.shape(), &[rows])?;
        check_shape("a_zero_points", a_zero_points.shape(), &[rows])?;
        if let Some(b) = &bias {
            check_shape("bias", b.shape(), &[n])?;
        }
        check_shape("out", out.shape(), &[rows, n])?;
        let a = slice_of("a", &a)?;
        let a_scales = slice_of("a_scales", &a_scales)?;
        let a_zero_points = slice_of("a_zero_points", &a_zero_points)?;
        let bias = match &bias {
            Some(b) => Some(slice_of("bias", b)?),
            None => None,
        };
        let out = slice_mut_of("out", &mut out)?;
        let packed = &self.packed;
        detached(py, move || {
            gemm_dequant(
                a,
                rows,
                k,
                packed,
                a_scales,
                a_zero_points,
                bias,
                out,
                isa.kind(),
            )
            .map_err(|e| Error::InvalidInput(e.to_string()))
        })
    }
}

/// Quantizes each row of `x` (float32 [rows, k]) to uint8 with its own scale and zero point into
/// `q` (uint8 [rows, k]), `scales` (float32 [rows]) and `zero_points` (uint8 [rows]), with the
/// runtime's kernel of level `kernel`. A non-finite value is a `ValueError` naming it.
#[pyfunction]
#[pyo3(signature = (x, q, scales, zero_points, kernel))]
fn quantize_rows(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    mut q: PyReadwriteArray2<'_, u8>,
    mut scales: PyReadwriteArray1<'_, f32>,
    mut zero_points: PyReadwriteArray1<'_, u8>,
    kernel: &str,
) -> PyResult<()> {
    let isa = isa_named(kernel)?;
    let [rows, k] = [x.shape()[0], x.shape()[1]];
    check_shape("q", q.shape(), &[rows, k])?;
    check_shape("scales", scales.shape(), &[rows])?;
    check_shape("zero_points", zero_points.shape(), &[rows])?;
    let x = slice_of("x", &x)?;
    let q = slice_mut_of("q", &mut q)?;
    let scales = slice_mut_of("scales", &mut scales)?;
    let zero_points = slice_mut_of("zero_points", &mut zero_points)?;
    detached(py, move || {
        tinyfast_core::model::quantize::quantize_rows(isa, x, rows, k, q, scales, zero_points)
            .map_err(|e| Error::InvalidInput(e.to_string()))
    })
}

/// One layer's self-attention over a fixed batch of packed sequences: their lengths, the hidden
/// width and the head count are given once, the buffers on each call.
#[pyclass(frozen, name = "SelfAttention", module = "tinyfast._native.kernels")]
pub struct PySelfAttention {
    width: usize,
    heads: usize,
    /// Sequence `s` owns token rows `offsets[s]..offsets[s + 1]`.
    offsets: Vec<usize>,
    /// The sequence of each token row.
    token_seq: Vec<u32>,
    /// The kernel's scratch, kept between calls so that a timed call allocates nothing.
    scores: Mutex<Vec<f32>>,
    pool: rayon::ThreadPool,
}

#[pymethods]
impl PySelfAttention {
    /// Sequences of `lengths` tokens (packed one after the other), rows of `width` values in
    /// `heads` heads, run on a pool of `threads` workers (0 = one per core).
    #[new]
    #[pyo3(signature = (lengths, width, heads, threads = 1))]
    fn new(lengths: Vec<usize>, width: usize, heads: usize, threads: usize) -> PyResult<Self> {
        if heads == 0 || width == 0 || !width.is_multiple_of(heads) {
            return Err(value_error(format!(
                "width {width} must be a positive multiple of heads {heads}"
            )));
        }
        if threads > MAX_THREADS {
            return Err(value_error(format!(
                "threads must be in 0..={MAX_THREADS} (0 = one per core), got {threads}"
            )));
        }
        let tokens = lengths
            .iter()
            .try_fold(0usize, |sum, &n| sum.checked_add(n))
            .filter(|&t| t <= MAX_TOKENS)
            .ok_or_else(|| value_error(format!("at most {MAX_TOKENS} tokens in all")))?;
        if width
            .checked_mul(3 * tokens)
            .is_none_or(|v| v > isize::MAX as usize)
        {
            return Err(value_error("width x tokens overflows the address space"));
        }
        let mut offsets = Vec::with_capacity(lengths.len() + 1);
        let mut token_seq = Vec::with_capacity(tokens);
        offsets.push(0);
        for (s, &n) in lengths.iter().enumerate() {
            let seq = u32::try_from(s).map_err(|_| value_error("too many sequences"))?;
            token_seq.extend(std::iter::repeat_n(seq, n));
            offsets.push(token_seq.len());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| value_error(format!("cannot start {threads} threads: {e}")))?;
        Ok(PySelfAttention {
            width,
            heads,
            offsets,
            token_seq,
            scores: Mutex::new(Vec::new()),
            pool,
        })
    }

    /// Tokens in all (rows of `qkv` and `out`).
    #[getter]
    fn tokens(&self) -> usize {
        self.token_seq.len()
    }

    #[getter]
    fn width(&self) -> usize {
        self.width
    }

    #[getter]
    fn heads(&self) -> usize {
        self.heads
    }

    /// Worker threads of the pool.
    #[getter]
    fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Attention of every token: `qkv` float32 [tokens, 3 * width] (each row a token's query, key
    /// and value, as the fused qkv linear writes them), into `out` float32 [tokens, width], with
    /// the kernel of level `kernel`.
    fn run(
        &self,
        py: Python<'_>,
        qkv: PyReadonlyArray2<'_, f32>,
        mut out: PyReadwriteArray2<'_, f32>,
        kernel: &str,
    ) -> PyResult<()> {
        let isa = isa_named(kernel)?;
        let (tokens, width) = (self.token_seq.len(), self.width);
        check_shape("qkv", qkv.shape(), &[tokens, 3 * width])?;
        check_shape("out", out.shape(), &[tokens, width])?;
        let qkv = slice_of("qkv", &qkv)?;
        let out = slice_mut_of("out", &mut out)?;
        detached(py, move || {
            // The scratch is only ever reset before use, so a poisoned lock is still usable.
            let mut guard = self.scores.lock().unwrap_or_else(|e| e.into_inner());
            let scores: &mut Vec<f32> = &mut guard;
            self.pool.install(|| {
                self_attention(
                    isa,
                    qkv,
                    width,
                    self.heads,
                    &self.offsets,
                    &self.token_seq,
                    scores,
                    out,
                )
            })
        })
    }
}

/// Adds the `kernels` submodule to `parent` (and to `sys.modules`, so that
/// `import tinyfast._native.kernels` works as well as attribute access).
pub fn register(parent: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = parent.py();
    let m = PyModule::new(py, "kernels")?;
    m.add_class::<PyPackedInt8Weights>()?;
    m.add_class::<PySelfAttention>()?;
    m.add_function(wrap_pyfunction!(quantize_rows, &m)?)?;
    parent.add_submodule(&m)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("tinyfast._native.kernels", &m)?;
    Ok(())
}
