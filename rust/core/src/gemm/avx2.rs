//! AVX2 kernel: an exact widening path on the same packed layout as VNNI.
//!
//! `vpmaddubsw` (u8 x s8, adjacent pairs summed with *signed saturation* to i16) overflows for
//! `255 * 127 + 255 * 127 = 64770`, so it is not used. Each 32-byte half of a packed group holds 8
//! channels x 4 weights `[w0 w1 w2 w3]` per 32-bit lane, and the broadcast activations are
//! `[a0 a1 a2 a3]` per lane. Splitting the bytes of each 16-bit half:
//!
//! - weights, sign-extended: `even = (v << 8) >>a 8` gives `(w0, w2)`, `odd = v >>a 8` gives `(w1, w3)`;
//! - activations, zero-extended: `even = v & 0x00ff` gives `(a0, a2)`, `odd = v >> 8` gives `(a1, a3)`;
//!
//! and `vpmaddwd(even_a, even_w) + vpmaddwd(odd_a, odd_w) = a0 w0 + a1 w1 + a2 w2 + a3 w3` per lane,
//! each `vpmaddwd` exact (|products| <= 255 * 128). The result is the VNNI lane, for every input.
//!
//! A tile is up to `MR` = 4 rows x one block (16 channels, two ymm accumulators per row): 8
//! accumulators, 4 split weight registers and the row's two activation registers fit the 16 ymm.
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(clippy::needless_range_loop)] // tile loops index accumulators by (row, half)

use std::arch::x86_64::*;
use std::ptr;

use super::{tail_word, Output, Problem, RawOut, BLOCK_N, GROUP_K};

/// Rows per tile.
const MR: usize = 4;
/// Rows per cache chunk.
const MC: usize = 64;
/// Channels per ymm of i32 accumulators.
const HALF: usize = BLOCK_N / 2;

/// Computes the whole problem into `out`.
///
/// # Safety
/// The CPU must support AVX2, and every length in `p` and `out` must have been validated by
/// `gemm_u8i8` / `gemm_dequant`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn run(p: &Problem, out: &mut Output) {
    let sink = RawOut::new(out);
    let blocks = p.w.num_blocks();
    let mut r_start = 0;
    while r_start < p.rows {
        let r_end = p.rows.min(r_start + MC);
        for b in 0..blocks {
            let mut r0 = r_start;
            while r0 < r_end {
                let r = MR.min(r_end - r0);
                // SAFETY: rows r0..r0 + r and block b exist; the caller's contract covers the CPU
                // features and buffer lengths.
                unsafe {
                    match r {
                        1 => tile::<1>(p, &sink, r0, b),
                        2 => tile::<2>(p, &sink, r0, b),
                        3 => tile::<3>(p, &sink, r0, b),
                        _ => tile::<MR>(p, &sink, r0, b),
                    }
                }
                r0 += r;
            }
        }
        r_start = r_end;
    }
}

/// Group `g` of one block, as `[even, odd]` sign-extended i16 weights for each 8-channel half.
///
/// # Safety
/// AVX2; `w` points to a block of at least `g + 1` groups.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_weights(w: *const i8, g: usize) -> [[__m256i; 2]; 2] {
    let mut out = [[_mm256_setzero_si256(); 2]; 2];
    for h in 0..2 {
        // SAFETY: a 32-byte half of a whole 64-byte group (caller's contract).
        let v = unsafe { _mm256_loadu_si256(w.add(g * BLOCK_N * GROUP_K + h * 32).cast()) };
        out[h] = [
            _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(v)),
            _mm256_srai_epi16::<8>(v),
        ];
    }
    out
}

/// Adds one group of one row (its four activation bytes in `x`) to the row's two accumulators.
#[inline]
#[target_feature(enable = "avx2")]
fn step(acc: &mut [__m256i; 2], x: i32, wv: &[[__m256i; 2]; 2]) {
    let v = _mm256_set1_epi32(x);
    let even = _mm256_and_si256(v, _mm256_set1_epi16(0x00ff));
    let odd = _mm256_srli_epi16::<8>(v);
    for h in 0..2 {
        let sum = _mm256_add_epi32(
            _mm256_madd_epi16(even, wv[h][0]),
            _mm256_madd_epi16(odd, wv[h][1]),
        );
        acc[h] = _mm256_add_epi32(acc[h], sum);
    }
}

/// One tile: rows `r0..r0 + R` against block `b`, written through `sink`.
///
/// # Safety
/// AVX2; `r0 + R <= p.rows`; `b < p.w.num_blocks()`; `sink` points to buffers validated for `p`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize>(p: &Problem, sink: &RawOut, r0: usize, b: usize) {
    let (k, n) = (p.k, p.w.n());
    let groups = p.w.groups();
    let full = k / GROUP_K;
    // SAFETY: row r0 and block b exist, so both offsets stay inside their buffers (or equal their
    // length when k == 0).
    let a = unsafe { p.a.as_ptr().add(r0 * k) };
    let w = unsafe { p.w.data_ptr().add(b * groups * BLOCK_N * GROUP_K) };

    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for g in 0..full {
        // SAFETY: g < groups.
        let wv = unsafe { load_weights(w, g) };
        for r in 0..R {
            // SAFETY: 4 g + 4 <= k, inside row r0 + r.
            let x = unsafe { ptr::read_unaligned(a.add(r * k + g * GROUP_K).cast::<i32>()) };
            step(&mut acc[r], x, &wv);
        }
    }
    if full < groups {
        // Ragged K: the last group has 1 to 3 activations; its padded weights are zero.
        // SAFETY: full < groups.
        let wv = unsafe { load_weights(w, full) };
        let start = full * GROUP_K;
        for r in 0..R {
            let row = &p.a[(r0 + r) * k..(r0 + r + 1) * k];
            step(&mut acc[r], tail_word(&row[start..]), &wv);
        }
    }

    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for h in 0..2 {
        let o0 = b * BLOCK_N + h * HALF;
        if o0 >= n {
            break;
        }
        let valid = HALF.min(n - o0);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lanes);
        match *sink {
            RawOut::I32(out) => {
                for r in 0..R {
                    // SAFETY: element (r0 + r, o0) is in the [rows, n] output; a full store only
                    // when 8 channels remain, otherwise lanes past `valid` are masked off.
                    unsafe {
                        let dst = out.add((r0 + r) * n + o0);
                        if valid == HALF {
                            _mm256_storeu_si256(dst.cast(), acc[r][h]);
                        } else {
                            _mm256_maskstore_epi32(dst, mask, acc[r][h]);
                        }
                    }
                }
            }
            RawOut::F32 {
                out,
                a_scales,
                a_zps,
                bias,
            } => {
                // SAFETY: column sums and scales are padded to whole blocks; the bias has n entries
                // and is read under the mask.
                let (col_sums, w_scales, bias) = unsafe {
                    (
                        _mm256_loadu_si256(p.w.padded_col_sums().as_ptr().add(o0).cast()),
                        _mm256_loadu_ps(p.w.padded_scales().as_ptr().add(o0)),
                        if bias.is_null() {
                            None
                        } else {
                            Some(_mm256_maskload_ps(bias.add(o0), mask))
                        },
                    )
                };
                for r in 0..R {
                    let t = r0 + r;
                    // SAFETY: t < rows, the length of a_scales and a_zps.
                    let (a_scale, zp) = unsafe { (*a_scales.add(t), *a_zps.add(t)) };
                    let zp_cs = _mm256_mullo_epi32(_mm256_set1_epi32(i32::from(zp)), col_sums);
                    let d = _mm256_sub_epi32(acc[r][h], zp_cs);
                    let s = _mm256_mul_ps(_mm256_set1_ps(a_scale), w_scales);
                    let mut y = _mm256_mul_ps(s, _mm256_cvtepi32_ps(d));
                    if let Some(bv) = bias {
                        y = _mm256_add_ps(y, bv);
                    }
                    // SAFETY: as for the i32 store.
                    unsafe {
                        let dst = out.add(t * n + o0);
                        if valid == HALF {
                            _mm256_storeu_ps(dst, y);
                        } else {
                            _mm256_maskstore_ps(dst, mask, y);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_bit_exact, check_extremes};
    use crate::cpu::KernelKind;

    #[test]
    fn avx2_bit_exact_vs_portable() {
        check_bit_exact(KernelKind::Avx2, 0xA2);
    }

    #[test]
    fn avx2_extremes() {
        check_extremes(KernelKind::Avx2);
    }

    /// Why the widening path exists: `vpmaddubsw` clamps 255 * 127 + 255 * 127 to 32767.
    #[test]
    fn naive_maddubs_saturates() {
        if !super::super::kernel_available(KernelKind::Avx2) {
            return;
        }
        // SAFETY: AVX2 is available (checked above).
        let lane = unsafe { saturated_pair() };
        assert_eq!(lane, i16::MAX);
        assert_ne!(i32::from(lane), 255 * 127 * 2);
    }

    #[target_feature(enable = "avx2")]
    fn saturated_pair() -> i16 {
        use std::arch::x86_64::*;
        let v = _mm256_maddubs_epi16(_mm256_set1_epi8(-1), _mm256_set1_epi8(127));
        _mm256_extract_epi16::<0>(v) as i16
    }
}
