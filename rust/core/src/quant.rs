//! Int8 quantization: the one definition of the scheme (docs/bundle.md, "Int8 scheme").
//!
//! The scalar functions here are the reference: [`quantize_weights`] is the only weight quantizer,
//! and [`quantize_activations_into`] defines what the runtime's vectorized activation quantizers
//! (`crate::model::quantize`) must reproduce bit for bit. Every step is f32 with true division;
//! `round` rounds half away from zero.
//!
//! - **Weights**: symmetric int8 per output channel. Row `o` of a `[rows_out, cols_in]` matrix (the
//!   PyTorch `nn.Linear` layout) gets `scale[o] = max(amax / 127, f32::MIN_POSITIVE)` with
//!   `amax = max_k |w[o, k]|`, and `q[o, k] = clamp(round(w[o, k] / scale[o]), -127, 127)`.
//! - **Activations**: asymmetric u8 per token (per row), computed at run time. With `lo` and `hi`
//!   the row's minimum and maximum, each widened to include 0,
//!   `scale = max((hi - lo) / 255, f32::MIN_POSITIVE)` (`hi / 255 - lo / 255` when `hi - lo`
//!   overflows to infinity), `zero_point = clamp(round(-lo / scale), 0, 255)` and
//!   `q = clamp(round(x / scale) + zero_point, 0, 255)`.
//! - **Dequantization** of a GEMM output (done by [`crate::gemm::gemm_dequant`]):
//!   `y[t, o] = a_scale[t] * w_scale[o] * (sum_k q_a[t, k] * q_w[o, k] - zp[t] * colsum_w[o]) + bias[o]`
//!   with `colsum_w[o] = sum_k q_w[o, k]` precomputed when the weights are packed.
//!
//! Degenerate rows: an all-zero row (signed zeros included) gets scale 1 and codes 0 (activations:
//! zero point 0). The `f32::MIN_POSITIVE` floor keeps the scale of a row of tiny values (all
//! |values| below about 1e-36) a normal number: a subnormal scale carries few significant bits, so
//! `x / scale` could land well past the code range and the round-trip bound (error <= scale / 2)
//! would fail. NaN or infinite inputs are errors naming the offending row and column.

use std::fmt;

/// Largest magnitude a quantized weight takes (`-127..=127`, symmetric).
pub const WEIGHT_QMAX: f32 = 127.0;
/// Largest quantized activation (`0..=255`).
pub const ACT_QMAX: f32 = 255.0;

/// What went wrong while quantizing, or while assembling quantized data from stored parts.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantError {
    /// A buffer's length does not match the shape it was declared with.
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// `rows * cols` does not fit in `usize`.
    SizeOverflow { rows: usize, cols: usize },
    /// An input value is NaN or infinite.
    NonFinite {
        what: &'static str,
        row: usize,
        col: usize,
        value: f32,
    },
    /// A stored per-channel scale is NaN, infinite, zero or negative.
    InvalidScale { row: usize, value: f32 },
    /// A stored weight code is -128, which the symmetric scheme never produces.
    WeightOutOfRange { row: usize, col: usize },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::ShapeMismatch {
                what,
                expected,
                got,
            } => write!(f, "{what}: expected {expected} elements, got {got}"),
            QuantError::SizeOverflow { rows, cols } => {
                write!(f, "shape {rows} x {cols} overflows the address space")
            }
            QuantError::NonFinite {
                what,
                row,
                col,
                value,
            } => write!(
                f,
                "{what} row {row}, column {col}: {value} is not a finite number"
            ),
            QuantError::InvalidScale { row, value } => write!(
                f,
                "weight scale of row {row} is {value}; scales must be finite and > 0"
            ),
            QuantError::WeightOutOfRange { row, col } => write!(
                f,
                "weight row {row}, column {col} is -128; int8 weight codes must be in -127..=127"
            ),
        }
    }
}

impl std::error::Error for QuantError {}

/// `rows * cols`, or an error when it overflows.
pub(crate) fn checked_len(rows: usize, cols: usize) -> Result<usize, QuantError> {
    rows.checked_mul(cols)
        .ok_or(QuantError::SizeOverflow { rows, cols })
}

pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), QuantError> {
    if expected == got {
        Ok(())
    } else {
        Err(QuantError::ShapeMismatch {
            what,
            expected,
            got,
        })
    }
}

/// An int8 weight matrix `[rows_out, cols_in]`, row-major, with one f32 scale per output row.
/// Codes are in `-127..=127` and scales finite and positive: both constructors guarantee it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedMatrix {
    rows_out: usize,
    cols_in: usize,
    data: Vec<i8>,
    scales: Vec<f32>,
}

impl QuantizedMatrix {
    /// Assembles a matrix from stored parts (for instance a bundle's int8 tensor and its scales),
    /// checking lengths, that every scale is finite and positive, and that no code is -128. The
    /// scheme is symmetric and never produces -128, so a stored -128 means the writer did not
    /// follow it; rejecting it keeps this loader's contract the Python reference loader's. (The
    /// GEMM kernels would be exact for -128 too: none relies on the exclusion.)
    pub fn from_parts(
        rows_out: usize,
        cols_in: usize,
        data: Vec<i8>,
        scales: Vec<f32>,
    ) -> Result<Self, QuantError> {
        check_len("weight data", checked_len(rows_out, cols_in)?, data.len())?;
        check_len("weight scales", rows_out, scales.len())?;
        if let Some((row, &value)) = scales
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s > 0.0))
        {
            return Err(QuantError::InvalidScale { row, value });
        }
        if let Some(i) = data.iter().position(|&q| q == i8::MIN) {
            return Err(QuantError::WeightOutOfRange {
                row: i / cols_in,
                col: i % cols_in,
            });
        }
        Ok(QuantizedMatrix {
            rows_out,
            cols_in,
            data,
            scales,
        })
    }

    /// Number of output channels (rows).
    pub fn rows_out(&self) -> usize {
        self.rows_out
    }

    /// Number of input features (columns), the GEMM's K.
    pub fn cols_in(&self) -> usize {
        self.cols_in
    }

    /// All quantized values, row-major.
    pub fn data(&self) -> &[i8] {
        &self.data
    }

    /// One scale per output row.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The quantized values of output row `o`. Panics if `o >= rows_out`.
    pub fn row(&self, o: usize) -> &[i8] {
        &self.data[o * self.cols_in..(o + 1) * self.cols_in]
    }

    /// `q * scale` for every element, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.data.len());
        for o in 0..self.rows_out {
            let s = self.scales[o];
            out.extend(self.row(o).iter().map(|&q| f32::from(q) * s));
        }
        out
    }
}

/// Quantizes a row-major f32 weight matrix `[rows_out, cols_in]` to symmetric int8, one scale per
/// output row: the reference weight quantizer (see the module docs for the exact rule).
pub fn quantize_weights(
    w: &[f32],
    rows_out: usize,
    cols_in: usize,
) -> Result<QuantizedMatrix, QuantError> {
    let len = checked_len(rows_out, cols_in)?;
    check_len("weights", len, w.len())?;
    let mut data = vec![0i8; len];
    let mut scales = vec![1.0f32; rows_out];
    for o in 0..rows_out {
        let row = &w[o * cols_in..(o + 1) * cols_in];
        let mut amax = 0.0f32;
        for (col, &v) in row.iter().enumerate() {
            if !v.is_finite() {
                return Err(QuantError::NonFinite {
                    what: "weight",
                    row: o,
                    col,
                    value: v,
                });
            }
            amax = amax.max(v.abs());
        }
        if amax == 0.0 {
            continue; // scale 1, all q = 0
        }
        let scale = (amax / WEIGHT_QMAX).max(f32::MIN_POSITIVE);
        scales[o] = scale;
        for (q, &v) in data[o * cols_in..(o + 1) * cols_in].iter_mut().zip(row) {
            // `f32::round` rounds half away from zero.
            *q = (v / scale).round().clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8;
        }
    }
    Ok(QuantizedMatrix {
        rows_out,
        cols_in,
        data,
        scales,
    })
}

/// Scale and (integer-valued) zero point of a finite activation row whose minimum and maximum,
/// each widened to include 0, are `lo` and `hi`; `None` for an all-zero row (scale 1, codes 0).
#[inline]
pub(crate) fn activation_params(lo: f32, hi: f32) -> Option<(f32, f32)> {
    if lo == 0.0 && hi == 0.0 {
        return None;
    }
    let range = hi - lo;
    // Near f32::MAX the range itself can overflow; dividing first keeps it finite.
    let scale = if range.is_finite() {
        range / ACT_QMAX
    } else {
        hi / ACT_QMAX - lo / ACT_QMAX
    };
    let scale = scale.max(f32::MIN_POSITIVE);
    Some((scale, (-lo / scale).round().clamp(0.0, ACT_QMAX)))
}

/// Quantizes one activation row into `q` (same length) and returns `(scale, zero_point)`.
/// `row` is only used to name the row in an error.
fn quantize_activation_row(x: &[f32], q: &mut [u8], row: usize) -> Result<(f32, u8), QuantError> {
    // The range always includes 0, so that 0 is exactly representable (padding, ReLU-like zeros).
    let mut lo = 0.0f32;
    let mut hi = 0.0f32;
    let mut finite = true;
    for &v in x {
        finite &= v.is_finite();
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !finite {
        let (col, &value) = x
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
            .expect("a non-finite value was seen");
        return Err(QuantError::NonFinite {
            what: "activation",
            row,
            col,
            value,
        });
    }
    let Some((scale, zp)) = activation_params(lo, hi) else {
        q.fill(0);
        return Ok((1.0, 0));
    };
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = ((v / scale).round() + zp).clamp(0.0, ACT_QMAX) as u8;
    }
    Ok((scale, zp as u8))
}

/// Quantizes `x` (`[rows, cols]`, row-major) per row into caller-owned buffers: `q` (`rows * cols`),
/// `scales` and `zero_points` (`rows` each). Allocates nothing. This is the reference: the runtime
/// calls the vectorized `crate::model::quantize::quantize_rows`, which gives the same bits.
pub fn quantize_activations_into(
    x: &[f32],
    rows: usize,
    cols: usize,
    q: &mut [u8],
    scales: &mut [f32],
    zero_points: &mut [u8],
) -> Result<(), QuantError> {
    let len = checked_len(rows, cols)?;
    check_len("activations", len, x.len())?;
    check_len("quantized activations", len, q.len())?;
    check_len("activation scales", rows, scales.len())?;
    check_len("activation zero points", rows, zero_points.len())?;
    for t in 0..rows {
        let span = t * cols..(t + 1) * cols;
        let (s, zp) = quantize_activation_row(&x[span.clone()], &mut q[span], t)?;
        scales[t] = s;
        zero_points[t] = zp;
    }
    Ok(())
}

/// Activations quantized per row: u8 values with one scale and one zero point per row.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedActivations {
    rows: usize,
    cols: usize,
    q: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<u8>,
}

impl QuantizedActivations {
    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features), the GEMM's K.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The u8 values, row-major.
    pub fn q(&self) -> &[u8] {
        &self.q
    }

    /// One scale per row.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// One zero point per row.
    pub fn zero_points(&self) -> &[u8] {
        &self.zero_points
    }

    /// `(q - zero_point) * scale` for every element, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.q.len());
        for t in 0..self.rows {
            let (s, zp) = (self.scales[t], i32::from(self.zero_points[t]));
            let row = &self.q[t * self.cols..(t + 1) * self.cols];
            out.extend(row.iter().map(|&v| (i32::from(v) - zp) as f32 * s));
        }
        out
    }
}

/// Allocating form of [`quantize_activations_into`].
pub fn quantize_activations(
    x: &[f32],
    rows: usize,
    cols: usize,
) -> Result<QuantizedActivations, QuantError> {
    let len = checked_len(rows, cols)?;
    let mut out = QuantizedActivations {
        rows,
        cols,
        q: vec![0; len],
        scales: vec![1.0; rows],
        zero_points: vec![0; rows],
    };
    quantize_activations_into(
        x,
        rows,
        cols,
        &mut out.q,
        &mut out.scales,
        &mut out.zero_points,
    )?;
    Ok(out)
}

/// The golden vectors of tests/golden/quantization.json (the schema is in its `description`),
/// shared by the reference's tests here and the vectorized kernels' tests.
#[cfg(test)]
pub(crate) mod golden {
    use serde_json::Value;

    const TEXT: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/golden/quantization.json"
    ));

    /// One case: the input matrix and the expected codes, scales and (activations) zero points.
    pub struct Case {
        pub name: String,
        pub rows: usize,
        pub cols: usize,
        pub x: Vec<f32>,
        pub codes: Vec<i64>,
        pub scales: Vec<f32>,
        pub zero_points: Option<Vec<i64>>,
    }

    fn bits(v: &Value, what: &str) -> Vec<f32> {
        let list = v.as_array().unwrap_or_else(|| panic!("{what}: not a list"));
        list.iter()
            .map(|b| {
                let text = b.as_str().expect("bit patterns are strings");
                let hex = text.strip_prefix("0x").expect("bit patterns start with 0x");
                f32::from_bits(u32::from_str_radix(hex, 16).expect("hex bit pattern"))
            })
            .collect()
    }

    fn ints(v: &Value) -> Vec<i64> {
        let list = v.as_array().expect("a list of integers");
        list.iter()
            .map(|i| i.as_i64().expect("an integer"))
            .collect()
    }

    /// The cases of list `key` (`"weights"` or `"activations"`).
    pub fn cases(key: &str) -> Vec<Case> {
        let doc: Value = serde_json::from_str(TEXT).expect("the golden file is JSON");
        let list = doc[key].as_array().expect("a list of cases");
        assert!(!list.is_empty(), "{key}: no cases");
        list.iter()
            .map(|c| {
                let name = c["name"].as_str().expect("a name").to_string();
                let rows = c["rows"].as_u64().expect("rows") as usize;
                let cols = c["cols"].as_u64().expect("cols") as usize;
                let x = bits(&c["bits"], &name);
                // The readable copy must say the same as the bits.
                let values: Vec<f32> = c["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| v.as_f64().expect("a number") as f32)
                    .collect();
                assert_eq!(
                    values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{key} {name}: values and bits differ"
                );
                assert_eq!(x.len(), rows * cols, "{key} {name}");
                Case {
                    rows,
                    cols,
                    x,
                    codes: ints(&c["codes"]),
                    scales: bits(&c["scale_bits"], &name),
                    zero_points: c.get("zero_points").map(ints),
                    name,
                }
            })
            .collect()
    }

    /// Bit patterns, for comparisons that tell -0.0 from 0.0.
    pub fn to_bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;

    /// Test data whose rows have very different magnitudes, as trained weights do.
    fn random_matrix(rng: &mut SplitMix64, rows: usize, cols: usize) -> Vec<f32> {
        let mut w = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            let mag = 10f32.powf(rng.uniform(-4.0, 3.0));
            let shift = if rng.below(3) == 0 {
                rng.uniform(-2.0, 2.0) * mag
            } else {
                0.0
            };
            w.extend((0..cols).map(|_| rng.normal() * mag + shift));
        }
        w
    }

    #[test]
    fn weights_round_trip_within_half_scale() {
        let mut rng = SplitMix64::new(1);
        for &(rows, cols) in &[(1, 1), (3, 7), (17, 64), (5, 312), (2, 1200)] {
            let w = random_matrix(&mut rng, rows, cols);
            let q = quantize_weights(&w, rows, cols).unwrap();
            assert_eq!(q.rows_out(), rows);
            assert_eq!(q.cols_in(), cols);
            let back = q.dequantize();
            for o in 0..rows {
                let s = q.scales()[o];
                let row = &w[o * cols..(o + 1) * cols];
                let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert_eq!(s, amax / 127.0, "row {o}");
                for c in 0..cols {
                    let i = o * cols + c;
                    // Half a step, plus a few ulps for the division and the multiplication.
                    let tol = s * 0.5 * (1.0 + 1e-5);
                    assert!(
                        (back[i] - w[i]).abs() <= tol,
                        "row {o} col {c}: {} vs {} (scale {s})",
                        back[i],
                        w[i]
                    );
                    assert!((-127..=127).contains(&q.data()[i]));
                }
                // The largest magnitude lands on the end of the range.
                let c_max = row.iter().position(|v| v.abs() == amax).unwrap();
                assert_eq!(i32::from(q.row(o)[c_max]).abs(), 127);
            }
        }
    }

    #[test]
    fn weights_round_half_away_from_zero() {
        // Scale is exactly 1: 0.5 -> 1, -0.5 -> -1, 1.5 -> 2, -2.5 -> -3.
        let w = [127.0, 0.5, -0.5, 1.5, -2.5, 0.49, -127.0];
        let q = quantize_weights(&w, 1, w.len()).unwrap();
        assert_eq!(q.scales(), &[1.0]);
        assert_eq!(q.data(), &[127, 1, -1, 2, -3, 0, -127]);
    }

    #[test]
    fn weights_zero_and_tiny_rows() {
        let w = [0.0, -0.0, 0.0, 1e-42, -3e-43, 0.0, 127.0, -63.5, 1.0];
        let q = quantize_weights(&w, 3, 3).unwrap();
        assert_eq!(q.scales()[0], 1.0);
        assert_eq!(q.row(0), &[0, 0, 0]);
        assert_eq!(q.scales()[1], f32::MIN_POSITIVE);
        assert_eq!(q.row(1), &[0, 0, 0]);
        assert_eq!(q.row(2), &[127, -64, 1]);
        let back = q.dequantize();
        for (i, (&b, &v)) in back.iter().zip(&w).enumerate() {
            assert!((b - v).abs() <= q.scales()[i / 3] * 0.5 * 1.00001, "{i}");
        }
    }

    #[test]
    fn weights_extreme_magnitudes() {
        let w = [f32::MAX, -f32::MAX, 1.0, f32::MIN_POSITIVE];
        let q = quantize_weights(&w, 2, 2).unwrap();
        assert_eq!(q.row(0), &[127, -127]);
        assert_eq!(q.row(1), &[127, 0]);
        assert!(q.scales().iter().all(|s| s.is_finite()));
    }

    #[test]
    fn weights_non_finite_is_an_error_naming_the_row() {
        let mut w = vec![0.5f32; 4 * 6];
        w[2 * 6 + 3] = f32::NAN;
        let err = quantize_weights(&w, 4, 6).unwrap_err();
        assert!(matches!(
            err,
            QuantError::NonFinite {
                what: "weight",
                row: 2,
                col: 3,
                ..
            }
        ));
        assert!(err.to_string().contains("row 2"), "{err}");
        w[2 * 6 + 3] = 0.0;
        w[6] = f32::NEG_INFINITY;
        assert!(matches!(
            quantize_weights(&w, 4, 6),
            Err(QuantError::NonFinite { row: 1, col: 0, .. })
        ));
    }

    #[test]
    fn weights_shape_errors() {
        let err = quantize_weights(&[1.0; 5], 2, 3).unwrap_err();
        assert_eq!(
            err,
            QuantError::ShapeMismatch {
                what: "weights",
                expected: 6,
                got: 5
            }
        );
        assert!(err.to_string().contains("expected 6"), "{err}");
        assert!(matches!(
            quantize_weights(&[], usize::MAX, 2),
            Err(QuantError::SizeOverflow { .. })
        ));
        // Empty shapes are fine.
        assert_eq!(quantize_weights(&[], 0, 5).unwrap().rows_out(), 0);
        assert_eq!(quantize_weights(&[], 3, 0).unwrap().scales(), &[1.0; 3]);
    }

    #[test]
    fn from_parts_validates() {
        let ok = QuantizedMatrix::from_parts(2, 2, vec![1, -127, 127, 0], vec![0.5, 2.0]).unwrap();
        assert_eq!(ok.row(1), &[127, 0]);
        // -128 is outside the symmetric scheme: rejected, naming where it is.
        let err =
            QuantizedMatrix::from_parts(2, 3, vec![1, 2, 3, 4, -128, 0], vec![1.0; 2]).unwrap_err();
        assert_eq!(err, QuantError::WeightOutOfRange { row: 1, col: 1 });
        assert!(err.to_string().contains("row 1, column 1 is -128"), "{err}");
        assert!(matches!(
            QuantizedMatrix::from_parts(2, 2, vec![0; 3], vec![1.0; 2]),
            Err(QuantError::ShapeMismatch {
                expected: 4,
                got: 3,
                ..
            })
        ));
        assert!(matches!(
            QuantizedMatrix::from_parts(2, 2, vec![0; 4], vec![1.0]),
            Err(QuantError::ShapeMismatch {
                what: "weight scales",
                ..
            })
        ));
        for bad in [f32::NAN, f32::INFINITY, 0.0, -1.0] {
            let err = QuantizedMatrix::from_parts(2, 2, vec![0; 4], vec![1.0, bad]).unwrap_err();
            assert!(matches!(err, QuantError::InvalidScale { row: 1, .. }));
        }
    }

    fn check_activation_round_trip(x: &[f32], rows: usize, cols: usize) {
        let a = quantize_activations(x, rows, cols).unwrap();
        let back = a.dequantize();
        for t in 0..rows {
            let s = a.scales()[t];
            let zp = a.zero_points()[t];
            let row = &x[t * cols..(t + 1) * cols];
            let lo = row.iter().fold(0.0f32, |m, &v| m.min(v));
            let hi = row.iter().fold(0.0f32, |m, &v| m.max(v));
            if lo == 0.0 && hi == 0.0 {
                assert_eq!((s, zp), (1.0, 0));
            } else {
                assert_eq!(s, ((hi - lo) / 255.0).max(f32::MIN_POSITIVE), "row {t}");
                assert_eq!(f32::from(zp), (-lo / s).round().clamp(0.0, 255.0));
            }
            for c in 0..cols {
                let i = t * cols + c;
                let tol = s * 0.5 * (1.0 + 1e-5) + hi.abs().max(lo.abs()) * 1e-6;
                assert!(
                    (back[i] - x[i]).abs() <= tol,
                    "row {t} col {c}: {} vs {} (scale {s}, zp {zp})",
                    back[i],
                    x[i]
                );
            }
        }
    }

    #[test]
    fn activations_round_trip_within_half_scale() {
        let mut rng = SplitMix64::new(2);
        for &(rows, cols) in &[(1, 1), (4, 3), (37, 64), (9, 312), (3, 1200)] {
            let x = random_matrix(&mut rng, rows, cols);
            check_activation_round_trip(&x, rows, cols);
        }
        // One-signed rows: the range still includes 0.
        let pos: Vec<f32> = (0..50).map(|i| 1.0 + i as f32 * 0.37).collect();
        let neg: Vec<f32> = pos.iter().map(|v| -v).collect();
        check_activation_round_trip(&pos, 1, 50);
        check_activation_round_trip(&neg, 1, 50);
        let p = quantize_activations(&pos, 1, 50).unwrap();
        assert_eq!(p.zero_points(), &[0]);
        assert_eq!(*p.q().iter().max().unwrap(), 255);
        let n = quantize_activations(&neg, 1, 50).unwrap();
        assert_eq!(n.zero_points(), &[255]);
        assert_eq!(*n.q().iter().min().unwrap(), 0);
    }

    #[test]
    fn activations_zero_tiny_and_huge_rows() {
        let x = [
            0.0,
            -0.0,
            0.0, // zero row
            1e-42,
            -1e-44,
            0.0, // subnormal row
            f32::MAX,
            -f32::MAX,
            1.0, // range overflows f32
        ];
        let a = quantize_activations(&x, 3, 3).unwrap();
        assert_eq!(a.scales()[0], 1.0);
        assert_eq!(a.zero_points()[0], 0);
        assert_eq!(&a.q()[..3], &[0, 0, 0]);
        assert_eq!(a.scales()[1], f32::MIN_POSITIVE);
        assert!(a.scales()[2].is_finite());
        assert!(a.q()[6] >= 254 && a.q()[7] == 0, "{:?}", a.q());
        let back = a.dequantize();
        for i in 0..6 {
            assert!((back[i] - x[i]).abs() <= a.scales()[i / 3] * 0.5, "{i}");
        }
        // Near f32::MAX, (q - zp) * scale can round half a step past the range and overflow when
        // dequantized; the quantization itself stays finite and ordered.
        assert!(a.q()[8] > a.q()[7] && a.q()[8] < a.q()[6]);
    }

    #[test]
    fn activations_non_finite_is_an_error() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.25f32; 3 * 5];
            x[2 * 5 + 4] = bad;
            let err = quantize_activations(&x, 3, 5).unwrap_err();
            assert!(
                matches!(
                    err,
                    QuantError::NonFinite {
                        what: "activation",
                        row: 2,
                        col: 4,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn activations_into_checks_every_buffer() {
        let x = [1.0f32; 6];
        let (mut q, mut s, mut z) = ([0u8; 6], [0f32; 2], [0u8; 2]);
        quantize_activations_into(&x, 2, 3, &mut q, &mut s, &mut z).unwrap();
        assert_eq!(q, [255; 6]);
        assert_eq!(z, [0; 2]);
        assert!(matches!(
            quantize_activations_into(&x, 2, 3, &mut q[..5], &mut s, &mut z),
            Err(QuantError::ShapeMismatch {
                what: "quantized activations",
                expected: 6,
                got: 5
            })
        ));
        assert!(matches!(
            quantize_activations_into(&x, 2, 3, &mut q, &mut s[..1], &mut z),
            Err(QuantError::ShapeMismatch {
                what: "activation scales",
                ..
            })
        ));
        assert!(matches!(
            quantize_activations_into(&x, 2, 3, &mut q, &mut s, &mut z[..1]),
            Err(QuantError::ShapeMismatch {
                what: "activation zero points",
                ..
            })
        ));
        assert!(matches!(
            quantize_activations_into(&x[..5], 2, 3, &mut q, &mut s, &mut z),
            Err(QuantError::ShapeMismatch {
                what: "activations",
                ..
            })
        ));
    }

    #[test]
    fn golden_weights() {
        use super::golden::{cases, to_bits};
        for c in cases("weights") {
            let q = quantize_weights(&c.x, c.rows, c.cols).unwrap();
            let codes: Vec<i64> = q.data().iter().map(|&v| i64::from(v)).collect();
            assert_eq!(codes, c.codes, "{}", c.name);
            assert_eq!(to_bits(q.scales()), to_bits(&c.scales), "{}", c.name);
            assert!(c.zero_points.is_none(), "{}", c.name);
        }
    }

    #[test]
    fn golden_activations() {
        use super::golden::{cases, to_bits};
        for c in cases("activations") {
            let a = quantize_activations(&c.x, c.rows, c.cols).unwrap();
            let codes: Vec<i64> = a.q().iter().map(|&v| i64::from(v)).collect();
            assert_eq!(codes, c.codes, "{}", c.name);
            assert_eq!(to_bits(a.scales()), to_bits(&c.scales), "{}", c.name);
            let zps: Vec<i64> = a.zero_points().iter().map(|&v| i64::from(v)).collect();
            assert_eq!(Some(zps), c.zero_points, "{}", c.name);
        }
    }
}
