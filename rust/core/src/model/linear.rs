//! The encoder's linear layers: int8 (per-token activation quantization + the fused dequantizing
//! GEMM of [`crate::gemm`]) or f32 ([`F32Linear`]), behind one type.

use std::cell::RefCell;

use rayon::prelude::*;

use super::matmul::F32Linear;
use super::quantize::quantize_rows_smoothed;
use super::workspace::{fit, QuantScratch, QuantSlices};
use crate::cpu::Isa;
use crate::error::{Error, Result};
use crate::gemm::{gemm_dequant, PackedWeights};

/// An int8 `nn.Linear`: prepacked int8 weights with per-channel scales and column sums, f32 bias,
/// and optionally one smoothing factor per input feature: the input is multiplied by it before
/// it is quantized (the weights were divided by it), which moves the range of outlier features
/// from the per-token activation codes into the per-channel weight scales.
///
/// With residual weights (the int8 codes of what rounding the weights left over), the linear
/// also corrects both rounding errors: `x W^T ~= q(x) W1^T + q(x) W2^T + q(x - q(x)) W1^T`, three
/// int8 GEMMs whose error is that of about 16-bit weights and activations (docs/bundle.md,
/// "Residual layers").
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Linear {
    packed: PackedWeights,
    bias: Vec<f32>,
    smooth: Option<Vec<f32>>,
    residual: Option<PackedWeights>,
}

impl Int8Linear {
    /// Pairs packed weights with a bias of one value per output channel.
    pub fn new(packed: PackedWeights, bias: Vec<f32>) -> Result<Self, String> {
        if bias.len() != packed.n() {
            return Err(format!(
                "bias: expected {} elements, got {}",
                packed.n(),
                bias.len()
            ));
        }
        Ok(Int8Linear {
            packed,
            bias,
            smooth: None,
            residual: None,
        })
    }

    /// The same linear with residual weights (same shape as the weights), or none.
    pub fn with_residual(self, residual: Option<PackedWeights>) -> Result<Self, String> {
        if let Some(r) = &residual {
            let (want, got) = ((self.packed.n(), self.packed.k()), (r.n(), r.k()));
            if want != got {
                return Err(format!(
                    "residual weights: expected shape {want:?}, got {got:?}"
                ));
            }
        }
        Ok(Int8Linear { residual, ..self })
    }

    /// The same linear with input smoothing factors (one per input feature, each > 0), or none.
    pub fn with_smoothing(self, smooth: Option<Vec<f32>>) -> Result<Self, String> {
        if let Some(s) = &smooth {
            if s.len() != self.packed.k() {
                return Err(format!(
                    "smoothing: expected {} elements, got {}",
                    self.packed.k(),
                    s.len()
                ));
            }
            if let Some((i, v)) = s
                .iter()
                .enumerate()
                .find(|(_, v)| !(**v > 0.0 && v.is_finite()))
            {
                return Err(format!(
                    "smoothing factor [{i}] is {v}; it must be finite and > 0"
                ));
            }
        }
        Ok(Int8Linear { smooth, ..self })
    }

    /// The packed weights.
    pub fn packed(&self) -> &PackedWeights {
        &self.packed
    }

    /// The output channels `channels` alone, in that order (see [`PackedWeights::select`]).
    pub fn select(&self, channels: &[usize]) -> Int8Linear {
        Int8Linear {
            packed: self.packed.select(channels),
            bias: channels.iter().map(|&o| self.bias[o]).collect(),
            smooth: self.smooth.clone(),
            residual: self.residual.as_ref().map(|r| r.select(channels)),
        }
    }
}

/// One of the four linears of an encoder layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Linear {
    Int8(Int8Linear),
    F32(F32Linear),
}

/// Rows per parallel task for a row-split over `rows` rows.
pub(crate) fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads().max(1))
        .clamp(1, 64)
}

impl Linear {
    /// Output features.
    pub fn n(&self) -> usize {
        match self {
            Linear::Int8(l) => l.packed.n(),
            Linear::F32(l) => l.n(),
        }
    }

    /// Input features.
    pub fn k(&self) -> usize {
        match self {
            Linear::Int8(l) => l.packed.k(),
            Linear::F32(l) => l.k(),
        }
    }

    /// `out = x @ W^T + b` for `rows` rows (`x`: `[rows, k]`, `out`: `[rows, n]`), rows split over
    /// the current rayon pool, each task as [`Linear::forward_serial`]. `name` labels errors (a
    /// non-finite activation).
    pub fn forward(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        scratch: &mut QuantScratch,
        isa: Isa,
        name: &(dyn std::fmt::Display + Sync),
    ) -> Result<()> {
        match self {
            Linear::F32(l) => {
                l.forward(x, rows, out, isa);
                Ok(())
            }
            Linear::Int8(l) => {
                let (k, n) = (l.packed.k(), l.packed.n());
                if rows == 0 {
                    return Ok(());
                }
                let chunk = rows_per_task(rows);
                out[..rows * n]
                    .par_chunks_mut(chunk * n)
                    .zip(x[..rows * k].par_chunks(chunk * k))
                    .zip(scratch.par_slices(rows, k, chunk))
                    .try_for_each(|((o, xa), mut part)| {
                        let r = part.scales.len();
                        self.forward_serial(xa, r, o, &mut part, isa, name)
                    })
            }
        }
    }

    /// [`Linear::forward`] on the calling thread: the int8 form quantizes each row of `x` to u8
    /// (its own scale and zero point) into `scratch`, then runs the fused GEMM; both are per row,
    /// so a row's output never depends on the other rows. Every kernel runs at `isa`.
    pub(crate) fn forward_serial(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        scratch: &mut QuantSlices,
        isa: Isa,
        name: &(dyn std::fmt::Display + Sync),
    ) -> Result<()> {
        match self {
            Linear::F32(l) => {
                l.forward_serial(x, rows, out, isa);
                Ok(())
            }
            Linear::Int8(l) => {
                let (k, n) = (l.packed.k(), l.packed.n());
                let (x, out) = (&x[..rows * k], &mut out[..rows * n]);
                let q = &mut scratch.q[..rows * k];
                let (sa, za) = (
                    &mut scratch.scales[..rows],
                    &mut scratch.zero_points[..rows],
                );
                quantize_rows_smoothed(isa, x, l.smooth.as_deref(), rows, k, q, sa, za)
                    .map_err(|e| Error::compute(format!("input of {name}: {e}")))?;
                let gemm_err = |e| Error::compute(format!("{name}: {e}"));
                gemm_dequant(
                    q,
                    rows,
                    k,
                    &l.packed,
                    sa,
                    za,
                    Some(&l.bias),
                    out,
                    isa.kind(),
                )
                .map_err(gemm_err)?;
                let Some(residual) = &l.residual else {
                    return Ok(());
                };
                RESIDUAL_SCRATCH.with_borrow_mut(|(r, partial)| {
                    fit(r, rows * k);
                    fit(partial, rows * n);
                    let (r, partial) = (&mut r[..rows * k], &mut partial[..rows * n]);
                    // The weights' rounding error, seen through the quantized input...
                    gemm_dequant(q, rows, k, residual, sa, za, None, partial, isa.kind())
                        .map_err(gemm_err)?;
                    add_into(out, partial);
                    // ...and the input's rounding error, through the weights.
                    quantization_residual(x, l.smooth.as_deref(), q, sa, za, k, r);
                    quantize_rows_smoothed(isa, r, None, rows, k, q, sa, za)
                        .map_err(|e| Error::compute(format!("input residual of {name}: {e}")))?;
                    gemm_dequant(q, rows, k, &l.packed, sa, za, None, partial, isa.kind())
                        .map_err(gemm_err)?;
                    add_into(out, partial);
                    Ok(())
                })
            }
        }
    }
}

thread_local! {
    /// Per-thread room for a residual linear's input residual and its partial outputs: grown to
    /// the largest call seen, never shrunk, so steady-state calls allocate nothing.
    static RESIDUAL_SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `out += partial`, element by element.
fn add_into(out: &mut [f32], partial: &[f32]) {
    for (o, p) in out.iter_mut().zip(partial) {
        *o += *p;
    }
}

/// What quantizing the (smoothed) input left over: `r = x' - (q - zp) * scale` per row, with
/// `x' = x * smooth` as the quantizer formed it. `q - zp` is a small integer, exact in f32, so
/// each element is one product and one subtraction (two with smoothing), never a fused
/// multiply-add: the same bits whatever the vector width. (A pass over the input; the two extra
/// GEMMs dominate a residual linear's cost, so it is left to the compiler to vectorize.)
fn quantization_residual(
    x: &[f32],
    smooth: Option<&[f32]>,
    q: &[u8],
    scales: &[f32],
    zero_points: &[u8],
    k: usize,
    r: &mut [f32],
) {
    let rows = x
        .chunks_exact(k)
        .zip(q.chunks_exact(k))
        .zip(r.chunks_exact_mut(k));
    for (((x, q), r), (&s, &zp)) in rows.zip(scales.iter().zip(zero_points)) {
        let zp = zp as f32;
        match smooth {
            Some(m) => {
                for (((r, &x), &m), &q) in r.iter_mut().zip(x).zip(m).zip(q) {
                    *r = x * m - (q as f32 - zp) * s;
                }
            }
            None => {
                for ((r, &x), &q) in r.iter_mut().zip(x).zip(q) {
                    *r = x - (q as f32 - zp) * s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize_activations_into, quantize_weights};
    use crate::testing::{weight_residual, SplitMix64};

    const N: usize = 24;
    const K: usize = 37;

    fn linear(rng: &mut SplitMix64) -> Int8Linear {
        let w: Vec<f32> = (0..N * K).map(|_| rng.normal() * 0.2).collect();
        let packed = PackedWeights::new(&quantize_weights(&w, N, K).unwrap()).unwrap();
        Int8Linear::new(packed, (0..N).map(|_| rng.normal() * 0.1).collect()).unwrap()
    }

    fn run(l: &Int8Linear, x: &[f32], rows: usize, isa: Isa) -> Result<Vec<f32>> {
        let mut scratch = QuantScratch::default();
        scratch.reserve(rows, K);
        let mut out = vec![0f32; rows * N];
        Linear::Int8(l.clone()).forward(x, rows, &mut out, &mut scratch, isa, &"linear")?;
        Ok(out)
    }

    /// A smoothed linear is, bit for bit, the plain linear applied to the input multiplied by
    /// its factors, on every kernel and whether rows run in one task or several.
    #[test]
    fn smoothing_multiplies_the_input_before_quantizing() {
        let mut rng = SplitMix64::new(3);
        let plain = linear(&mut rng);
        let smooth: Vec<f32> = (0..K).map(|j| 0.05 + (j % 7) as f32 * 0.9).collect();
        let smoothed = plain.clone().with_smoothing(Some(smooth.clone())).unwrap();
        for rows in [1, 5, 130] {
            // Outlier features, as BERT's LayerNorm outputs have.
            let x: Vec<f32> = (0..rows * K)
                .map(|i| rng.normal() * if i % K == 4 { 20.0 } else { 1.0 })
                .collect();
            let product: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, v)| v * smooth[i % K])
                .collect();
            for isa in Isa::available() {
                let a = run(&smoothed, &x, rows, isa).unwrap();
                let b = run(&plain, &product, rows, isa).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{isa} rows {rows}");
            }
        }
    }

    #[test]
    fn factors_of_one_change_nothing() {
        let mut rng = SplitMix64::new(4);
        let plain = linear(&mut rng);
        let ones = plain.clone().with_smoothing(Some(vec![1.0; K])).unwrap();
        let x: Vec<f32> = (0..3 * K).map(|_| rng.normal()).collect();
        for isa in Isa::available() {
            assert_eq!(
                run(&plain, &x, 3, isa).unwrap(),
                run(&ones, &x, 3, isa).unwrap()
            );
        }
    }

    #[test]
    fn bad_factors_and_non_finite_inputs_are_errors() {
        let mut rng = SplitMix64::new(5);
        let plain = linear(&mut rng);
        let e = plain
            .clone()
            .with_smoothing(Some(vec![1.0; K - 1]))
            .unwrap_err();
        assert!(e.contains("expected 37 elements, got 36"), "{e}");
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let mut s = vec![1.0; K];
            s[9] = bad;
            let e = plain.clone().with_smoothing(Some(s)).unwrap_err();
            assert!(e.contains("factor [9]"), "{e}");
        }
        let smoothed = plain.with_smoothing(Some(vec![2.0; K])).unwrap();
        let mut x = vec![0.5f32; 2 * K];
        x[K + 6] = f32::NAN;
        let e = run(&smoothed, &x, 2, Isa::available()[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("column 6: NaN is not a finite number"), "{e}");
    }

    /// A linear with residual weights, from f32 weights `w` `[N, K]`, and the plain one.
    fn residual_pair(w: &[f32], bias: &[f32]) -> (Int8Linear, Int8Linear) {
        let codes = quantize_weights(w, N, K).unwrap();
        let residual = PackedWeights::new(&weight_residual(w, N, K)).unwrap();
        let plain = Int8Linear::new(PackedWeights::new(&codes).unwrap(), bias.to_vec()).unwrap();
        let with = plain.clone().with_residual(Some(residual)).unwrap();
        (plain, with)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// docs/bundle.md, "Residual layers", step by step with the reference quantizer: the plain
    /// linear, plus the residual weights on the same codes, plus the plain linear (bias 0) on the
    /// quantized input residual, summed in that order; bit for bit on every kernel and row split,
    /// with and without smoothing.
    #[test]
    fn residual_passes_follow_the_documented_steps() {
        let mut rng = SplitMix64::new(6);
        let w: Vec<f32> = (0..N * K).map(|_| rng.normal() * 0.2).collect();
        let bias: Vec<f32> = (0..N).map(|_| rng.normal() * 0.1).collect();
        let (plain, with) = residual_pair(&w, &bias);
        let smooth: Vec<f32> = (0..K).map(|j| 0.5 + (j % 5) as f32 * 0.4).collect();
        let left = with.residual.clone().unwrap();
        let weights_only = Int8Linear::new(left, vec![0.0; N]).unwrap();
        let unbiased = Int8Linear::new(plain.packed.clone(), vec![0.0; N]).unwrap();
        for rows in [1, 5, 130] {
            let x: Vec<f32> = (0..rows * K)
                .map(|i| rng.normal() * if i % K == 4 { 20.0 } else { 1.0 })
                .collect();
            for smoothing in [None, Some(smooth.clone())] {
                let xs: Vec<f32> = match &smoothing {
                    Some(m) => x.iter().enumerate().map(|(i, v)| v * m[i % K]).collect(),
                    None => x.clone(),
                };
                let (mut q, mut s, mut z) =
                    (vec![0u8; rows * K], vec![0f32; rows], vec![0u8; rows]);
                quantize_activations_into(&xs, rows, K, &mut q, &mut s, &mut z).unwrap();
                let r: Vec<f32> = (0..rows * K)
                    .map(|i| {
                        let t = i / K;
                        xs[i] - (q[i] as i32 - z[t] as i32) as f32 * s[t]
                    })
                    .collect();
                let isa = Isa::available()[0];
                let mut want = run(&plain, &xs, rows, isa).unwrap();
                for (o, p) in want
                    .iter_mut()
                    .zip(run(&weights_only, &xs, rows, isa).unwrap())
                {
                    *o += p;
                }
                for (o, p) in want.iter_mut().zip(run(&unbiased, &r, rows, isa).unwrap()) {
                    *o += p;
                }
                let lin = with.clone().with_smoothing(smoothing.clone()).unwrap();
                for isa in Isa::available() {
                    let got = run(&lin, &x, rows, isa).unwrap();
                    assert_eq!(bits(&got), bits(&want), "{isa} rows {rows}");
                }
            }
        }
    }

    /// The passes buy precision: against the f32 product, the residual linear's error is a small
    /// fraction of the plain int8 linear's.
    #[test]
    fn residual_passes_approach_the_float_product() {
        let mut rng = SplitMix64::new(7);
        let w: Vec<f32> = (0..N * K).map(|_| rng.normal() * 0.2).collect();
        let bias = vec![0.0; N];
        let (plain, with) = residual_pair(&w, &bias);
        let rows = 64;
        let x: Vec<f32> = (0..rows * K).map(|_| rng.normal()).collect();
        let exact: Vec<f64> = (0..rows * N)
            .map(|i| {
                let (t, o) = (i / N, i % N);
                (0..K)
                    .map(|j| x[t * K + j] as f64 * w[o * K + j] as f64)
                    .sum()
            })
            .collect();
        let err = |y: &[f32]| -> f64 {
            y.iter()
                .zip(&exact)
                .map(|(a, b)| (*a as f64 - b).abs())
                .sum::<f64>()
                / y.len() as f64
        };
        let isa = Isa::available()[0];
        let (e_plain, e_with) = (
            err(&run(&plain, &x, rows, isa).unwrap()),
            err(&run(&with, &x, rows, isa).unwrap()),
        );
        assert!(
            e_with < e_plain / 50.0,
            "plain {e_plain}, residual {e_with}"
        );
    }

    #[test]
    fn residual_weights_keep_their_rows_when_selected_and_must_match_the_shape() {
        let mut rng = SplitMix64::new(8);
        let w: Vec<f32> = (0..N * K).map(|_| rng.normal() * 0.2).collect();
        let bias: Vec<f32> = (0..N).map(|_| rng.normal() * 0.1).collect();
        let (_, with) = residual_pair(&w, &bias);
        let channels = [5, 0, 17];
        let x: Vec<f32> = (0..3 * K).map(|_| rng.normal()).collect();
        let isa = Isa::available()[0];
        let full = run(&with, &x, 3, isa).unwrap();
        let sel = with.select(&channels);
        let mut scratch = QuantScratch::default();
        scratch.reserve(3, K);
        let mut out = vec![0f32; 3 * channels.len()];
        Linear::Int8(sel)
            .forward(&x, 3, &mut out, &mut scratch, isa, &"selected")
            .unwrap();
        for t in 0..3 {
            for (c, &o) in channels.iter().enumerate() {
                assert_eq!(
                    out[t * channels.len() + c].to_bits(),
                    full[t * N + o].to_bits()
                );
            }
        }
        let small = quantize_weights(&w[..(N - 1) * K], N - 1, K).unwrap();
        let e = with
            .with_residual(Some(PackedWeights::new(&small).unwrap()))
            .unwrap_err();
        assert!(e.contains("expected shape (24, 37), got (23, 37)"), "{e}");
    }
}
