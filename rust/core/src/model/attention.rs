//! Multi-head self-attention over packed sequences (see [`super::workspace`]).
//!
//! For each query row: `scores[j] = (q . k_j) / sqrt(d)` over the keys of its own sequence only,
//! `p = softmax(scores)` (max subtracted), `out = sum_j p[j] v_j`, per head. Restricting the keys to
//! the sequence is the padding mask of docs/bundle.md (`-inf` on padded keys gives them weight 0).
//!
//! Keys are first transposed per sequence and head (`kt[c][j]`), so that the scores of one query
//! are vector updates `scores[j..j + 8] += q[c] * kt[c][j..j + 8]` over the channels `c` of the
//! head, with the accumulators in registers: each score is still the sequential sum
//! `q[0] k[j][0] + q[1] k[j][1] + ...`, vectorized across keys. Likewise `out = sum_j p[j] v_j` is
//! summed over keys in order, vectorized across channels. Every query's result depends only on its
//! sequence, never on the rest of the batch, and the SIMD width never changes a bit.

use rayon::prelude::*;

use super::linear::rows_per_task;
use super::ops::softmax;
use super::workspace::fit;

/// Rows of a row-major matrix, each read from column `col` for `width` values.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub col: usize,
}

impl Rows<'_> {
    #[inline]
    fn row(&self, r: usize, width: usize) -> &[f32] {
        let start = r * self.stride + self.col;
        &self.data[start..start + width]
    }
}

/// Sequences shorter than this many values are transposed on the calling thread.
const SERIAL_TRANSPOSE: usize = 1 << 14;

/// Attention of `query_seq.len()` query rows of width `width` (`heads` heads).
///
/// - `q`: query row `i` is the `i`-th query; `query_seq[i]` is its sequence.
/// - `k`, `v`: indexed by token row; sequence `s` owns rows `offsets[s]..offsets[s + 1]`.
/// - `kt`: scratch of at least `offsets[B] * width` values; `scores`: grown as needed.
/// - `out`: `[queries, width]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: Rows,
    k: Rows,
    v: Rows,
    width: usize,
    heads: usize,
    offsets: &[usize],
    query_seq: &[u32],
    kt: &mut [f32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let nseq = offsets.len().saturating_sub(1);
    let nq = query_seq.len();
    if nseq == 0 || nq == 0 {
        return;
    }
    let tokens = offsets[nseq];
    transpose_keys(&k, offsets, width, &mut kt[..tokens * width]);
    let kt = &kt[..tokens * width];

    let max_len = offsets
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
        .max(1);
    let chunk = rows_per_task(nq);
    fit(scores, nq.div_ceil(chunk) * max_len);
    let cx = Ctx {
        q,
        v,
        width,
        heads,
        offsets,
        query_seq,
        kt,
    };
    out[..nq * width]
        .par_chunks_mut(chunk * width)
        .zip(scores.par_chunks_mut(max_len))
        .enumerate()
        .for_each(|(ci, (o, sc))| attend(&cx, ci * chunk, o, sc));
}

/// What every query of an [`attention`] call shares.
struct Ctx<'a> {
    q: Rows<'a>,
    v: Rows<'a>,
    width: usize,
    heads: usize,
    offsets: &'a [usize],
    query_seq: &'a [u32],
    kt: &'a [f32],
}

/// Attention of the queries `first..first + out.len() / width`, with `sc` as score scratch.
fn attend(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, the only feature `attend_avx2` is compiled for.
        unsafe { attend_avx2(cx, first, out, sc) };
        return;
    }
    attend_generic(cx, first, out, sc);
}

/// The same code compiled for 256-bit vectors. Every vectorized loop is element-wise across keys
/// or channels (no reduction is reassociated, and Rust never fuses multiply-adds), so it gives the
/// same bits as the baseline build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn attend_avx2(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    attend_generic(cx, first, out, sc);
}

/// Lanes of one accumulator block (one 256-bit vector of f32).
const LANES: usize = 8;

#[inline(always)]
fn attend_generic(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    let (width, heads) = (cx.width, cx.heads);
    let d = width / heads;
    let sqrt_d = (d as f32).sqrt();
    for (i, orow) in out.chunks_exact_mut(width).enumerate() {
        let qi = first + i;
        let s = cx.query_seq[qi] as usize;
        let (start, n) = (cx.offsets[s], cx.offsets[s + 1] - cx.offsets[s]);
        let kts = &cx.kt[start * width..(start + n) * width];
        let qrow = cx.q.row(qi, width);
        for h in 0..heads {
            let sc = &mut sc[..n];
            let q = &qrow[h * d..(h + 1) * d];
            let kt = &kts[h * d * n..(h + 1) * d * n];
            head_scores(q, kt, n, sc);
            for acc in sc.iter_mut() {
                *acc /= sqrt_d;
            }
            softmax(sc);
            weighted_values(
                sc,
                &cx.v,
                start,
                width,
                h * d,
                &mut orow[h * d..(h + 1) * d],
            );
        }
    }
}

/// Start of the `i`-th of the `len.div_ceil(LANES)` blocks of `LANES` that cover `0..len`
/// (`len >= LANES`); the last block overlaps its neighbour when `len % LANES != 0`. Blocks are
/// taken four at a time (independent accumulators); past the last block, the last is repeated.
#[inline(always)]
fn block_starts(len: usize, first: usize) -> [usize; 4] {
    let blocks = len.div_ceil(LANES);
    std::array::from_fn(|b| (LANES * (first + b).min(blocks - 1)).min(len - LANES))
}

/// `sc[j] = sum_c q[c] kt[c][j]` for the `n` keys of one head (`kt` is `[d][n]`), summed over `c`
/// in order, vectorized across keys in blocks of 8 with four accumulators in registers (blocks
/// that overlap or repeat compute the same values again).
#[inline(always)]
fn head_scores(q: &[f32], kt: &[f32], n: usize, sc: &mut [f32]) {
    if n < LANES {
        for (j, dst) in sc.iter_mut().enumerate() {
            let mut acc = 0f32;
            for (c, &qc) in q.iter().enumerate() {
                acc += qc * kt[c * n + j];
            }
            *dst = acc;
        }
        return;
    }
    for g in (0..n.div_ceil(LANES)).step_by(4) {
        let st = block_starts(n, g);
        let mut acc = [[0f32; LANES]; 4];
        for (c, &qc) in q.iter().enumerate() {
            let row = &kt[c * n..(c + 1) * n];
            for (a, &s) in acc.iter_mut().zip(&st) {
                let k = &row[s..s + LANES];
                for l in 0..LANES {
                    a[l] += qc * k[l];
                }
            }
        }
        for (a, &s) in acc.iter().zip(&st) {
            sc[s..s + LANES].copy_from_slice(a);
        }
    }
}

/// `out[c] = sum_j p[j] v[start + j][col + c]`, summed over `j` in order, vectorized across
/// channels as [`head_scores`] is across keys.
#[inline(always)]
fn weighted_values(p: &[f32], v: &Rows, start: usize, width: usize, col: usize, out: &mut [f32]) {
    let d = out.len();
    if d < LANES {
        for (c, dst) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for (j, &pj) in p.iter().enumerate() {
                acc += pj * v.row(start + j, width)[col + c];
            }
            *dst = acc;
        }
        return;
    }
    for g in (0..d.div_ceil(LANES)).step_by(4) {
        let st = block_starts(d, g);
        let mut acc = [[0f32; LANES]; 4];
        for (j, &pj) in p.iter().enumerate() {
            let vr = &v.row(start + j, width)[col..col + d];
            for (a, &s) in acc.iter_mut().zip(&st) {
                let x = &vr[s..s + LANES];
                for l in 0..LANES {
                    a[l] += pj * x[l];
                }
            }
        }
        for (a, &s) in acc.iter().zip(&st) {
            out[s..s + LANES].copy_from_slice(a);
        }
    }
}

/// Writes, for each sequence of `offsets` (whose first token row is `offsets[0]`, the start of
/// `kt`), its keys transposed: `kt[(start - offsets[0]) * width + c * n + j] = k[start + j][c]`.
/// Sequences are split recursively across the rayon pool.
fn transpose_keys(k: &Rows, offsets: &[usize], width: usize, kt: &mut [f32]) {
    let nseq = offsets.len() - 1;
    let base = offsets[0];
    if nseq == 1 || (offsets[nseq] - base) * width <= SERIAL_TRANSPOSE {
        for s in 0..nseq {
            let (start, n) = (offsets[s], offsets[s + 1] - offsets[s]);
            let dst = &mut kt[(start - base) * width..(start - base + n) * width];
            for j in 0..n {
                for (c, &kv) in k.row(start + j, width).iter().enumerate() {
                    dst[c * n + j] = kv;
                }
            }
        }
        return;
    }
    let mid = nseq / 2;
    let (left, right) = kt.split_at_mut((offsets[mid] - base) * width);
    rayon::join(
        || transpose_keys(k, &offsets[..=mid], width, left),
        || transpose_keys(k, &offsets[mid..], width, right),
    );
}
