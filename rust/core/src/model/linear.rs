//! The encoder's linear layers: int8 (per-token activation quantization + the fused dequantizing
//! GEMM of [`crate::gemm`]) or f32 ([`F32Linear`]), behind one type.

use rayon::prelude::*;

use super::matmul::F32Linear;
use super::quantize::quantize_rows;
use super::workspace::{QuantScratch, QuantSlices};
use crate::cpu::Isa;
use crate::error::{Error, Result};
use crate::gemm::{gemm_dequant, PackedWeights};

/// An int8 `nn.Linear`: prepacked int8 weights with per-channel scales and column sums, f32 bias.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Linear {
    packed: PackedWeights,
    bias: Vec<f32>,
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
        Ok(Int8Linear { packed, bias })
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
                quantize_rows(isa, x, rows, k, q, sa, za)
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
