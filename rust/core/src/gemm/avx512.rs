//! AVX-512 VNNI kernel: `vpdpbusd` adds four u8 x s8 products into each of 16 i32 lanes, without
//! saturation, which matches the packed layout one group (64 bytes) per instruction.
//!
//! A tile is up to `MR` rows x `NR` blocks (4 x 64 channels): 16 zmm accumulators, `NR` weight
//! loads and `MR` broadcasts of four activation bytes per K group. Rows are walked in chunks of `MC`
//! so that a chunk of activations stays in cache while every block of weights passes over it.
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(clippy::needless_range_loop)] // tile loops index accumulators by (row, block)

use std::arch::x86_64::*;
use std::ptr;

use super::{tail_word, Output, Problem, RawOut, BLOCK_N, GROUP_K};

/// Rows per tile.
const MR: usize = 4;
/// Blocks of 16 channels per tile.
const NR: usize = 4;
/// Rows per cache chunk.
const MC: usize = 64;

/// Computes the whole problem into `out`.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni, and every length in `p` and `out` must
/// have been validated by `gemm_u8i8` / `gemm_dequant`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn run(p: &Problem, out: &mut Output) {
    let sink = RawOut::new(out);
    let blocks = p.w.num_blocks();
    let mut r_start = 0;
    while r_start < p.rows {
        let r_end = p.rows.min(r_start + MC);
        let mut b0 = 0;
        while b0 < blocks {
            let c = NR.min(blocks - b0);
            let mut r0 = r_start;
            while r0 < r_end {
                let r = MR.min(r_end - r0);
                // SAFETY: rows r0..r0 + r and blocks b0..b0 + c exist; the caller's contract
                // covers the CPU features and buffer lengths.
                unsafe {
                    match r {
                        1 => tile_rows::<1>(p, &sink, r0, b0, c),
                        2 => tile_rows::<2>(p, &sink, r0, b0, c),
                        3 => tile_rows::<3>(p, &sink, r0, b0, c),
                        _ => tile_rows::<MR>(p, &sink, r0, b0, c),
                    }
                }
                r0 += r;
            }
            b0 += c;
        }
        r_start = r_end;
    }
}

/// Picks the tile width for `c` blocks.
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_rows<const R: usize>(p: &Problem, sink: &RawOut, r0: usize, b0: usize, c: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match c {
            1 => tile::<R, 1>(p, sink, r0, b0),
            2 => tile::<R, 2>(p, sink, r0, b0),
            3 => tile::<R, 3>(p, sink, r0, b0),
            _ => tile::<R, NR>(p, sink, r0, b0),
        }
    }
}

/// Group `g` of `C` consecutive blocks starting at `w`.
///
/// # Safety
/// avx512f; `w` points to a block with at least `C` blocks of `groups` groups from it; `g < groups`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn load_weights<const C: usize>(w: *const i8, groups: usize, g: usize) -> [__m512i; C] {
    let mut wv = [_mm512_setzero_si512(); C];
    for c in 0..C {
        // SAFETY: a whole 64-byte group inside block c (caller's contract).
        wv[c] = unsafe { _mm512_loadu_si512(w.add((c * groups + g) * BLOCK_N * GROUP_K).cast()) };
    }
    wv
}

/// One tile: rows `r0..r0 + R` against blocks `b0..b0 + C`, written through `sink`.
///
/// # Safety
/// The CPU features of [`run`]; `r0 + R <= p.rows`; `b0 + C <= p.w.num_blocks()`; `sink` points to
/// buffers validated for `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize, const C: usize>(p: &Problem, sink: &RawOut, r0: usize, b0: usize) {
    let (k, n) = (p.k, p.w.n());
    let groups = p.w.groups();
    let full = k / GROUP_K;
    // SAFETY: row r0 and block b0 exist, so both offsets stay inside their buffers (or equal
    // their length when k == 0).
    let a = unsafe { p.a.as_ptr().add(r0 * k) };
    let w = unsafe { p.w.data_ptr().add(b0 * groups * BLOCK_N * GROUP_K) };
    let mut acc = [[_mm512_setzero_si512(); C]; R];
    for g in 0..full {
        // SAFETY: g < groups and blocks b0..b0 + C exist.
        let wv = unsafe { load_weights::<C>(w, groups, g) };
        for r in 0..R {
            // SAFETY: 4 g + 4 <= k, inside row r0 + r.
            let x = unsafe { ptr::read_unaligned(a.add(r * k + g * GROUP_K).cast::<i32>()) };
            let av = _mm512_set1_epi32(x);
            for c in 0..C {
                acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], av, wv[c]);
            }
        }
    }
    if full < groups {
        // Ragged K: the last group has 1 to 3 activations; its padded weights are zero.
        // SAFETY: as above, for the last group.
        let wv = unsafe { load_weights::<C>(w, groups, full) };
        let start = full * GROUP_K;
        for r in 0..R {
            let row = &p.a[(r0 + r) * k..(r0 + r + 1) * k];
            let av = _mm512_set1_epi32(tail_word(&row[start..]));
            for c in 0..C {
                acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], av, wv[c]);
            }
        }
    }

    for c in 0..C {
        let o0 = (b0 + c) * BLOCK_N;
        let valid = BLOCK_N.min(n - o0);
        let mask: __mmask16 = if valid == BLOCK_N {
            0xFFFF
        } else {
            (1u16 << valid) - 1
        };
        match *sink {
            RawOut::I32(out) => {
                for r in 0..R {
                    // SAFETY: element (r0 + r, o0) is in the [rows, n] output; lanes past `valid`
                    // are masked off and never touched.
                    unsafe {
                        _mm512_mask_storeu_epi32(out.add((r0 + r) * n + o0), mask, acc[r][c]);
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
                        _mm512_loadu_si512(p.w.padded_col_sums().as_ptr().add(o0).cast()),
                        _mm512_loadu_ps(p.w.padded_scales().as_ptr().add(o0)),
                        if bias.is_null() {
                            None
                        } else {
                            Some(_mm512_maskz_loadu_ps(mask, bias.add(o0)))
                        },
                    )
                };
                for r in 0..R {
                    let t = r0 + r;
                    // SAFETY: t < rows, the length of a_scales and a_zps.
                    let (a_scale, zp) = unsafe { (*a_scales.add(t), *a_zps.add(t)) };
                    let zp_cs = _mm512_mullo_epi32(_mm512_set1_epi32(i32::from(zp)), col_sums);
                    let d = _mm512_sub_epi32(acc[r][c], zp_cs);
                    let s = _mm512_mul_ps(_mm512_set1_ps(a_scale), w_scales);
                    let mut y = _mm512_mul_ps(s, _mm512_cvtepi32_ps(d));
                    if let Some(b) = bias {
                        y = _mm512_add_ps(y, b);
                    }
                    // SAFETY: as for the i32 store.
                    unsafe { _mm512_mask_storeu_ps(out.add(t * n + o0), mask, y) };
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
    fn avx512_bit_exact_vs_portable() {
        check_bit_exact(KernelKind::Avx512Vnni, 0x512);
    }

    #[test]
    fn avx512_extremes() {
        check_extremes(KernelKind::Avx512Vnni);
    }
}
