//! A plain f32 linear layer, `y = x @ W^T + b`, for f32 bundles, exit branches and heads.
//!
//! # Determinism
//! Every output element is computed the same way whatever the number of rows, the row tiling or the
//! thread split: `acc = 0; for k in 0..K { acc = acc + x[t, k] * w[o, k] }; y = acc + b[o]`, with
//! separate multiply and add (Rust never contracts them into an FMA). So a row's result does not
//! depend on which other rows share the call, which is what makes batched results equal
//! batch-size-1 results bit for bit. The AVX2 build of the kernel (used at the AVX2 and AVX-512
//! levels of [`Isa`]) is the same source compiled with wider vectors; it vectorizes across output
//! channels only, never across K, so every level rounds identically.
//!
//! # Layout and blocking
//! The weights are packed at load into panels of [`NR`] output channels: panel `p` holds, for each
//! `k`, the 16 weights `w[16 p .. 16 p + 16, k]` contiguously (zero-padded past `n`). The kernel
//! walks panels in the outer loop and tiles of `MR` = 4 rows inside, so one panel (`16 K` floats, at
//! most 4 MiB for the largest K, 77 KiB at K = 1200) stays in cache while the rows stream past it,
//! and a 4 x 16 tile of accumulators stays in registers.

use rayon::prelude::*;

use crate::cpu::{Isa, KernelKind};

/// Output channels per packed panel.
pub const NR: usize = 16;
/// Rows per register tile.
const MR: usize = 4;
/// Below this many multiply-adds a call runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// An f32 `nn.Linear`: weights `[n, k]` packed into panels, and a bias `[n]`.
#[derive(Clone, Debug, PartialEq)]
pub struct F32Linear {
    n: usize,
    k: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
}

impl F32Linear {
    /// Packs row-major `weight` (`[n, k]`, the torch layout) with `bias` (`[n]`). Returns a message
    /// naming the mismatch when the lengths do not fit the shape.
    pub fn new(weight: &[f32], n: usize, k: usize, bias: Vec<f32>) -> Result<Self, String> {
        let len = n
            .checked_mul(k)
            .ok_or_else(|| format!("shape [{n}, {k}] overflows"))?;
        if weight.len() != len {
            return Err(format!(
                "weight: expected {len} elements ([{n}, {k}]), got {}",
                weight.len()
            ));
        }
        if bias.len() != n {
            return Err(format!("bias: expected {n} elements, got {}", bias.len()));
        }
        let np = n.div_ceil(NR);
        let mut panels = vec![0f32; np * k * NR];
        for o in 0..n {
            let (p, j) = (o / NR, o % NR);
            for kk in 0..k {
                panels[(p * k + kk) * NR + j] = weight[o * k + kk];
            }
        }
        Ok(F32Linear { n, k, panels, bias })
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The bias.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// `out[t, o] = sum_k x[t, k] w[o, k] + b[o]` for `rows` rows of `x` (`[rows, k]`), writing
    /// `out` (`[rows, n]`) with the kernel of `isa`; rows are split across the current rayon pool
    /// when it pays.
    ///
    /// Panics if a buffer is shorter than the shape implies (an internal invariant: the runtime
    /// sizes every buffer from the validated bundle).
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], isa: Isa) {
        let (x, out) = (&x[..rows * self.k], &mut out[..rows * self.n]);
        let macs = rows * self.k * self.n;
        let threads = rayon::current_num_threads();
        if macs < PARALLEL_MIN_MACS || threads <= 1 || rows < 2 || self.k == 0 {
            self.forward_serial(x, rows, out, isa);
            return;
        }
        let chunk = rows.div_ceil(threads).clamp(1, 64);
        out.par_chunks_mut(chunk * self.n)
            .zip(x.par_chunks(chunk * self.k))
            .for_each(|(o, xa)| self.forward_serial(xa, xa.len() / self.k, o, isa));
    }

    /// The single-threaded form of [`F32Linear::forward`].
    pub fn forward_serial(&self, x: &[f32], rows: usize, out: &mut [f32], isa: Isa) {
        if self.k == 0 {
            for row in out[..rows * self.n].chunks_exact_mut(self.n) {
                row.copy_from_slice(&self.bias);
            }
            return;
        }
        match isa.kind() {
            // SAFETY: `isa` proves the CPU has AVX2 (both levels include it), the only feature
            // `kernel_avx2` is compiled for.
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 | KernelKind::Avx512Vnni => unsafe { kernel_avx2(self, x, rows, out) },
            _ => kernel(self, x, rows, out),
        }
    }
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernel_avx2(w: &F32Linear, x: &[f32], rows: usize, out: &mut [f32]) {
    kernel(w, x, rows, out);
}

#[inline(always)]
fn kernel(w: &F32Linear, x: &[f32], rows: usize, out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    for (p, panel) in w.panels.chunks_exact(k * NR).enumerate() {
        let o0 = p * NR;
        let valid = NR.min(n - o0);
        let bias = &w.bias[o0..o0 + valid];
        let mut t = 0;
        while t + MR <= rows {
            let a0 = &x[t * k..(t + 1) * k];
            let a1 = &x[(t + 1) * k..(t + 2) * k];
            let a2 = &x[(t + 2) * k..(t + 3) * k];
            let a3 = &x[(t + 3) * k..(t + 4) * k];
            let mut acc = [[0f32; NR]; MR];
            for ((((wk, &v0), &v1), &v2), &v3) in
                panel.chunks_exact(NR).zip(a0).zip(a1).zip(a2).zip(a3)
            {
                for j in 0..NR {
                    acc[0][j] += v0 * wk[j];
                    acc[1][j] += v1 * wk[j];
                    acc[2][j] += v2 * wk[j];
                    acc[3][j] += v3 * wk[j];
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let dst = &mut out[(t + r) * n + o0..(t + r) * n + o0 + valid];
                for ((d, &a), &b) in dst.iter_mut().zip(acc_r).zip(bias) {
                    *d = a + b;
                }
            }
            t += MR;
        }
        while t < rows {
            let a = &x[t * k..(t + 1) * k];
            let mut acc = [0f32; NR];
            for (wk, &v) in panel.chunks_exact(NR).zip(a) {
                for j in 0..NR {
                    acc[j] += v * wk[j];
                }
            }
            let dst = &mut out[t * n + o0..t * n + o0 + valid];
            for ((d, &a), &b) in dst.iter_mut().zip(&acc).zip(bias) {
                *d = a + b;
            }
            t += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;

    fn naive(w: &[f32], b: &[f32], x: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for t in 0..rows {
            for o in 0..n {
                let mut acc = 0f32;
                for kk in 0..k {
                    acc += x[t * k + kk] * w[o * k + kk];
                }
                out[t * n + o] = acc + b[o];
            }
        }
        out
    }

    #[test]
    fn matches_the_sequential_formula_bit_for_bit() {
        let mut rng = SplitMix64::new(3);
        for &(rows, k, n) in &[
            (1, 1, 1),
            (3, 5, 17),
            (4, 16, 16),
            (9, 33, 40),
            (70, 64, 35),
        ] {
            let w: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let x: Vec<f32> = (0..rows * k).map(|_| rng.normal()).collect();
            let lin = F32Linear::new(&w, n, k, b.clone()).unwrap();
            let want = naive(&w, &b, &x, rows, n, k);
            let mut got = vec![f32::NAN; rows * n];
            lin.forward(&x, rows, &mut got, Isa::best());
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "rows={rows} k={k} n={n}"
            );
            // Any single row alone gives the same bits (row independence).
            let t = rows - 1;
            let mut one = vec![0f32; n];
            lin.forward(&x[t * k..], 1, &mut one, Isa::best());
            assert_eq!(one, want[t * n..]);
            // Every level gives the same bits, threaded or not.
            for isa in Isa::available() {
                let mut at = vec![f32::NAN; rows * n];
                lin.forward(&x, rows, &mut at, isa);
                assert_eq!(
                    at.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{isa}, rows={rows} k={k} n={n}"
                );
                lin.forward_serial(&x, rows, &mut at, isa);
                assert_eq!(at, want, "{isa} serial");
            }
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        assert!(F32Linear::new(&[0.0; 5], 2, 3, vec![0.0; 2])
            .unwrap_err()
            .contains("expected 6"));
        assert!(F32Linear::new(&[0.0; 6], 2, 3, vec![0.0; 3])
            .unwrap_err()
            .contains("bias"));
    }
}
