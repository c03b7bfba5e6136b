//! A plain f32 linear layer, `y = x @ W^T + b`, for f32 bundles, exit branches and heads.
//!
//! # Determinism
//! Every output element is computed the same way whatever the number of rows, the row tiling or the
//! thread split: `acc = 0; for k in 0..K { acc = fma(x[t, k], w[o, k], acc) }; y = acc + b[o]`,
//! one fused multiply-add per step (`f32::mul_add`). So a row's result does not depend on which
//! other rows share the call, which is what makes batched results equal batch-size-1 results bit
//! for bit. The AVX2 and AVX-512 builds of the kernel are the same source compiled with wider
//! vectors and hardware FMA; they vectorize across output channels only, never across K, and the
//! portable build computes the same fused operation in software (slower, see `vmath`), so every
//! level rounds identically. Fused rather than separate multiply and add: one instruction instead
//! of two per step, which is what the exit branches (f32, reading every token) spend their time
//! on.
//!
//! # Layout and blocking
//! The weights are packed at load into panels of [`NR`] output channels: panel `p` holds, for each
//! `k`, the 16 weights `w[16 p .. 16 p + 16, k]` contiguously (zero-padded past `n`). The kernels
//! walk panels in the outer loop and tiles of rows inside (8 with AVX-512, 4 with AVX2), so one
//! panel (`16 K` floats, at most 4 MiB for the largest K, 77 KiB at K = 1200) stays in cache while
//! the rows stream past it, and a tile of accumulators stays in registers.

use rayon::prelude::*;

use crate::cpu::{Isa, KernelKind};

/// Output channels per packed panel.
pub const NR: usize = 16;
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
            // SAFETY: `isa` proves the CPU has AVX-512F and FMA (the AVX-512 level includes them),
            // the features `kernel_avx512` is compiled for.
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512Vnni => unsafe { kernel_avx512(self, x, rows, out) },
            // SAFETY: `isa` proves the CPU has AVX2 and FMA, the features `kernel_avx2` needs.
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => unsafe { kernel_avx2(self, x, rows, out) },
            _ => kernel(self, x, rows, out),
        }
    }
}

/// The AVX2 kernel: each panel row of 16 weights is two 256-bit vectors, and a tile of 4 rows
/// keeps 8 accumulators in registers; one `vfmadd` per 8 multiply-adds.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(w: &F32Linear, x: &[f32], rows: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const TILE: usize = 4;
    let (n, k) = (w.n, w.k);
    for (p, panel) in w.panels.chunks_exact(k * NR).enumerate() {
        let o0 = p * NR;
        let mut t = 0;
        while t < rows {
            let tile = TILE.min(rows - t);
            let mut lo = [_mm256_setzero_ps(); TILE];
            let mut hi = [_mm256_setzero_ps(); TILE];
            for kk in 0..k {
                // SAFETY: `kk < k`, and a panel holds `k * NR` floats.
                let wp = panel.as_ptr().add(kk * NR);
                let (wlo, whi) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
                for r in 0..tile {
                    let v = _mm256_set1_ps(x[(t + r) * k + kk]);
                    lo[r] = _mm256_fmadd_ps(v, wlo, lo[r]);
                    hi[r] = _mm256_fmadd_ps(v, whi, hi[r]);
                }
            }
            for r in 0..tile {
                let mut acc = [0f32; NR];
                // SAFETY: `acc` holds 16 floats.
                _mm256_storeu_ps(acc.as_mut_ptr(), lo[r]);
                _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi[r]);
                store_row(w, &acc, o0, &mut out[(t + r) * n..(t + r + 1) * n]);
            }
            t += tile;
        }
    }
}

/// The AVX-512 kernel: a panel row of 16 weights is one 512-bit vector, and a tile of 8 rows keeps
/// 8 independent accumulators in flight; one `vfmadd` per 16 multiply-adds.
///
/// # Safety
/// The CPU must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn kernel_avx512(w: &F32Linear, x: &[f32], rows: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const TILE: usize = 8;
    let (n, k) = (w.n, w.k);
    for (p, panel) in w.panels.chunks_exact(k * NR).enumerate() {
        let o0 = p * NR;
        let mut t = 0;
        while t < rows {
            let tile = TILE.min(rows - t);
            let mut acc = [_mm512_setzero_ps(); TILE];
            for kk in 0..k {
                // SAFETY: `kk < k`, and a panel holds `k * NR` floats.
                let wv = _mm512_loadu_ps(panel.as_ptr().add(kk * NR));
                for r in 0..tile {
                    let v = _mm512_set1_ps(x[(t + r) * k + kk]);
                    acc[r] = _mm512_fmadd_ps(v, wv, acc[r]);
                }
            }
            for (r, &a) in acc.iter().enumerate().take(tile) {
                let mut lanes = [0f32; NR];
                // SAFETY: `lanes` holds 16 floats.
                _mm512_storeu_ps(lanes.as_mut_ptr(), a);
                store_row(w, &lanes, o0, &mut out[(t + r) * n..(t + r + 1) * n]);
            }
            t += tile;
        }
    }
}

/// `out[o0 + j] = acc[j] + b[o0 + j]` for the panel's valid output channels.
#[inline(always)]
fn store_row(w: &F32Linear, acc: &[f32; NR], o0: usize, out_row: &mut [f32]) {
    let valid = NR.min(w.n - o0);
    let dst = &mut out_row[o0..o0 + valid];
    for ((d, &a), &b) in dst.iter_mut().zip(acc).zip(&w.bias[o0..o0 + valid]) {
        *d = a + b;
    }
}

/// The portable kernel: the same fused multiply-add per step in scalar code (a software `fma` on
/// targets without one in their baseline: slow, but the same bits as the vector kernels).
fn kernel(w: &F32Linear, x: &[f32], rows: usize, out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    for (p, panel) in w.panels.chunks_exact(k * NR).enumerate() {
        let o0 = p * NR;
        for t in 0..rows {
            let mut acc = [0f32; NR];
            for (wk, &v) in panel.chunks_exact(NR).zip(&x[t * k..(t + 1) * k]) {
                for j in 0..NR {
                    acc[j] = v.mul_add(wk[j], acc[j]);
                }
            }
            store_row(w, &acc, o0, &mut out[t * n..(t + 1) * n]);
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
                    acc = x[t * k + kk].mul_add(w[o * k + kk], acc);
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
