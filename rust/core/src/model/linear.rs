//! The encoder's linear layers: int8 (per-token activation quantization + the fused dequantizing
//! GEMM of [`crate::gemm`]) or f32 ([`F32Linear`]), behind one type.

use rayon::prelude::*;

use super::matmul::F32Linear;
use super::quantize::quantize_rows_smoothed;
use super::workspace::{QuantScratch, QuantSlices};
use crate::cpu::Isa;
use crate::error::{Error, Result};
use crate::gemm::{gemm_dequant, PackedWeights};

/// An int8 `nn.Linear`: prepacked int8 weights with per-channel scales and column sums, f32 bias,
/// and optionally one smoothing factor per input feature: the input is multiplied by it before
/// it is quantized (the weights were divided by it), which moves the range of outlier features
/// from the per-token activation codes into the per-channel weight scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Linear {
    packed: PackedWeights,
    bias: Vec<f32>,
    smooth: Option<Vec<f32>>,
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
        })
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
                .map_err(|e| Error::compute(format!("{name}: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_weights;
    use crate::testing::SplitMix64;

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
}
