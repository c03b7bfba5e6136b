//! Multi-head self-attention over packed sequences (see [`super::workspace`]).
//!
//! For each query row: `scores[j] = (q . k_j) / sqrt(d)` over the keys of its own sequence only,
//! `p = softmax(scores)` (max subtracted), `out = sum_j p[j] v_j`, per head. Restricting the keys to
//! the sequence is the padding mask of docs/bundle.md (`-inf` on padded keys gives them weight 0).
//!
//! Queries of one sequence go in tiles of [`TILE`] rows. Per head, a tile's scores are one small
//! matrix product `Q[TILE][d] x Kt[d][n]` (keys transposed per sequence and head first) and its
//! output another, `P[TILE][n] x V[n][d]`, both by [`tile_product`]: register accumulators of
//! `TILE` rows (four at a time with AVX2) x 16 (AVX2) or 32 (AVX-512) columns, one multiply-add
//! per step. The softmax stays unnormalized until the output, where `d` values are divided by
//! its sum instead of `n` probabilities. Every output value is the sequential sum over the
//! reduced dimension, whatever tile, column block or SIMD width computes it, so a query's result
//! depends only on its sequence: never on the rest of the batch or on its place in a tile.
//! On x86-64 with AVX2 and FMA the sums use fused multiply-adds (a different rounding from the
//! portable build, identical for every batch on one machine).

use rayon::prelude::*;

use super::linear::rows_per_task;
use super::ops::exp_shifted;
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

/// Query rows per tile: the rows of [`tile_product`]'s accumulator block.
const TILE: usize = 8;

/// Lanes of one accumulator vector (one 256-bit vector of f32).
const LANES: usize = 8;

/// Score scratch one parallel task needs for sequences of up to `max_len` tokens and heads of
/// width `d`: the tile's score rows, then its output rows.
fn task_scratch(max_len: usize, d: usize) -> usize {
    TILE * (max_len + d)
}

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
    let per_task = task_scratch(max_len, width / heads);
    fit(scores, nq.div_ceil(chunk) * per_task);
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
        .zip(scores.par_chunks_mut(per_task))
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

/// Attention of the queries `first..first + out.len() / width`, with `sc` as scratch.
fn attend(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, the features `attend_fma` is compiled for.
        unsafe { attend_fma(cx, first, out, sc) };
        return;
    }
    attend_generic::<false>(cx, first, out, sc);
}

/// The same code compiled for 256-bit vectors with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_fma(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    attend_generic::<true>(cx, first, out, sc);
}

/// [`exp_shifted`] of a score row (returns its sum), vectorized when `FMA` (implies AVX2).
#[inline(always)]
fn exp_row<const FMA: bool>(x: &mut [f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { super::ops::exp_shifted_avx512(x, scale) };
        }
        // SAFETY: `FMA` is only set inside `attend_fma`, which runs only on CPUs with AVX2.
        return unsafe { super::ops::exp_shifted_avx2(x, scale) };
    }
    exp_shifted(x, scale)
}

/// `a * b + c`, fused into one rounding when `FMA` (only ever inlined into code compiled with the
/// `fma` feature: elsewhere `mul_add` would be a slow library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn attend_generic<const FMA: bool>(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    let (width, heads) = (cx.width, cx.heads);
    let d = width / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let nrows = out.len() / width;
    let mut i = 0;
    while i < nrows {
        let s = cx.query_seq[first + i] as usize;
        // The tile: up to TILE consecutive queries of sequence `s` (a short tile repeats its
        // last row, computed again and not written).
        let mut rows = 1;
        while rows < TILE && i + rows < nrows && cx.query_seq[first + i + rows] as usize == s {
            rows += 1;
        }
        let tile: [usize; TILE] = std::array::from_fn(|r| first + i + r.min(rows - 1));
        let (start, n) = (cx.offsets[s], cx.offsets[s + 1] - cx.offsets[s]);
        let kts = &cx.kt[start * width..(start + n) * width];
        let (p, o) = sc.split_at_mut(TILE * n);
        let o = &mut o[..TILE * d];
        for h in 0..heads {
            let qs = tile.map(|qi| &cx.q.row(qi, width)[h * d..(h + 1) * d]);
            tile_product::<FMA>(qs, &kts[h * d * n..(h + 1) * d * n], n, n, p);
            // softmax(p) v = (exp(p - max) v) / sum: the division goes to the d outputs.
            let mut sums = [0f32; TILE];
            for (pr, sum) in p.chunks_exact_mut(n).zip(&mut sums).take(rows) {
                *sum = exp_row::<FMA>(pr, scale);
            }
            let ps: [&[f32]; TILE] = std::array::from_fn(|r| &p[r.min(rows - 1) * n..][..n]);
            let vs = &cx.v.data[start * cx.v.stride + cx.v.col + h * d..];
            tile_product::<FMA>(ps, vs, cx.v.stride, d, o);
            for (r, orow) in out[i * width..(i + rows) * width]
                .chunks_exact_mut(width)
                .enumerate()
            {
                let inv = 1.0 / sums[r];
                for (dst, &v) in orow[h * d..(h + 1) * d].iter_mut().zip(&o[r * d..]) {
                    *dst = v * inv;
                }
            }
        }
        i += rows;
    }
}

/// `c[r * w + j] = sum_p a[r][p] * b[p * ldb + j]` for `r < TILE`, `j < w`, with the sum over
/// `p` (`0..a[0].len()`; every `a[r]` at least that long) taken in order, by
/// [`tile_product_fma`] when `FMA`, else one value at a time.
#[inline(always)]
fn tile_product<const FMA: bool>(
    a: [&[f32]; TILE],
    b: &[f32],
    ldb: usize,
    w: usize,
    c: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is only set inside `attend_fma`, which runs only when the CPU has AVX2
        // and FMA.
        unsafe { tile_product_fma(a, b, ldb, w, c) };
        return;
    }
    let k = a[0].len();
    for (r, crow) in c[..TILE * w].chunks_exact_mut(w).enumerate() {
        for (j, dst) in crow.iter_mut().enumerate() {
            let mut acc = 0f32;
            for (p, &ap) in a[r][..k].iter().enumerate() {
                acc = madd::<FMA>(ap, b[p * ldb + j], acc);
            }
            *dst = acc;
        }
    }
}

/// [`tile_product`] with AVX2 + FMA: columns in blocks of [`LANES`] (the last block overlaps its
/// neighbour when `w % LANES != 0` and recomputes equal values), two blocks at a time, so that
/// `TILE x 2` accumulators stay in registers. Narrow products (`w < LANES`) go one value at a time
/// with the same fused multiply-adds, so every path rounds every value alike.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_product_fma(a: [&[f32]; TILE], b: &[f32], ldb: usize, w: usize, c: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = a[0].len();
    let c = &mut c[..TILE * w];
    if k == 0 {
        c.fill(0.0);
        return;
    }
    // Every read below is within these bounds.
    assert!(a.iter().all(|ar| ar.len() >= k) && (k - 1) * ldb + w <= b.len());
    if w < LANES {
        for (r, crow) in c.chunks_exact_mut(w).enumerate() {
            for (j, dst) in crow.iter_mut().enumerate() {
                let mut acc = 0f32;
                for p in 0..k {
                    acc = a[r][p].mul_add(b[p * ldb + j], acc);
                }
                *dst = acc;
            }
        }
        return;
    }
    if w >= WIDE_LANES && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (and FMA, checked by the caller); the bounds are
        // checked above.
        unsafe { tile_product_avx512(a, b, ldb, w, c) };
        return;
    }
    let blocks = w.div_ceil(LANES);
    let block_start = |i: usize| (LANES * i.min(blocks - 1)).min(w - LANES);
    for pair in (0..blocks).step_by(2) {
        let (s0, s1) = (block_start(pair), block_start(pair + 1));
        // Sixteen ymm registers hold the accumulators of four rows at a time.
        for (quad, rows) in a.chunks_exact(4).enumerate() {
            // SAFETY: AVX2 and FMA are enabled; `p * ldb + s + LANES <= (k - 1) * ldb + w <=
            // b.len()` for `p < k` and both block starts `s <= w - LANES`; `p < k <= a[r].len()`;
            // stores reach at most `(TILE - 1) * w + w = c.len()`.
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                for p in 0..k {
                    let row = b.as_ptr().add(p * ldb);
                    let b0 = _mm256_loadu_ps(row.add(s0));
                    let b1 = _mm256_loadu_ps(row.add(s1));
                    for (ar, acc_r) in rows.iter().zip(acc.iter_mut()) {
                        let x = _mm256_set1_ps(*ar.get_unchecked(p));
                        acc_r[0] = _mm256_fmadd_ps(x, b0, acc_r[0]);
                        acc_r[1] = _mm256_fmadd_ps(x, b1, acc_r[1]);
                    }
                }
                for (r, acc_r) in acc.iter().enumerate() {
                    let out = c.as_mut_ptr().add((quad * 4 + r) * w);
                    _mm256_storeu_ps(out.add(s0), acc_r[0]);
                    _mm256_storeu_ps(out.add(s1), acc_r[1]);
                }
            }
        }
    }
}

/// Lanes of one AVX-512 accumulator.
const WIDE_LANES: usize = 16;

/// [`tile_product_fma`] with 512-bit vectors for `w >= 16`: the same fused multiply-add chain for
/// every value, twice the columns per instruction.
///
/// # Safety
/// The CPU must support AVX-512F and FMA; `a`, `b`, `c` as checked in [`tile_product_fma`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tile_product_avx512(a: [&[f32]; TILE], b: &[f32], ldb: usize, w: usize, c: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = a[0].len();
    let blocks = w.div_ceil(WIDE_LANES);
    let block_start = |i: usize| (WIDE_LANES * i.min(blocks - 1)).min(w - WIDE_LANES);
    for pair in (0..blocks).step_by(2) {
        let (s0, s1) = (block_start(pair), block_start(pair + 1));
        // SAFETY: as in `tile_product_fma`, with blocks of 16 and `s <= w - 16`.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; TILE];
            for p in 0..k {
                let row = b.as_ptr().add(p * ldb);
                let b0 = _mm512_loadu_ps(row.add(s0));
                let b1 = _mm512_loadu_ps(row.add(s1));
                for (ar, acc_r) in a.iter().zip(acc.iter_mut()) {
                    let x = _mm512_set1_ps(*ar.get_unchecked(p));
                    acc_r[0] = _mm512_fmadd_ps(x, b0, acc_r[0]);
                    acc_r[1] = _mm512_fmadd_ps(x, b1, acc_r[1]);
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let out = c.as_mut_ptr().add(r * w);
                _mm512_storeu_ps(out.add(s0), acc_r[0]);
                _mm512_storeu_ps(out.add(s1), acc_r[1]);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// Attention of every token of `lens` (packed) with `q`, `k`, `v` of `[T, width]`.
    fn run(qkv: [&[f32]; 3], lens: &[usize], width: usize, heads: usize) -> Vec<f32> {
        let mut offsets = vec![0];
        let mut query_seq = vec![];
        for (s, &n) in lens.iter().enumerate() {
            offsets.push(offsets[s] + n);
            query_seq.extend(std::iter::repeat_n(s as u32, n));
        }
        let t = offsets[lens.len()];
        let rows = |data| Rows {
            data,
            stride: width,
            col: 0,
        };
        let (mut kt, mut scores, mut out) = (vec![0.0; t * width], vec![], vec![0.0; t * width]);
        let [q, k, v] = qkv;
        attention(
            rows(q),
            rows(k),
            rows(v),
            width,
            heads,
            &offsets,
            &query_seq,
            &mut kt,
            &mut scores,
            &mut out,
        );
        out
    }

    /// The definition, in f64, one query at a time.
    fn reference(qkv: [&[f32]; 3], lens: &[usize], width: usize, heads: usize) -> Vec<f64> {
        let [q, k, v] = qkv.map(|m| m.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
        let d = width / heads;
        let mut out = vec![0f64; q.len()];
        let mut start = 0;
        for &n in lens {
            for i in start..start + n {
                for h in 0..heads {
                    let cols = h * d..(h + 1) * d;
                    let s: Vec<f64> = (start..start + n)
                        .map(|j| {
                            let dot: f64 = cols
                                .clone()
                                .map(|c| q[i * width + c] * k[j * width + c])
                                .sum();
                            dot / (d as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in cols {
                        out[i * width + c] =
                            (0..n).map(|j| e[j] / z * v[(start + j) * width + c]).sum();
                    }
                }
            }
            start += n;
        }
        out
    }

    #[test]
    fn matches_the_definition_and_ignores_the_batch() {
        let mut seed = 3;
        // Head widths below, at and above one vector; sequences of 1 token, shorter than a
        // vector, ragged, and longer than a tile of columns.
        for (width, heads) in [(12, 3), (16, 2), (52, 2), (78, 3)] {
            let lens = [1, 3, 8, 9, 17, 40];
            let t: usize = lens.iter().sum();
            let (q, k, v) = (
                random(t * width, &mut seed),
                random(t * width, &mut seed),
                random(t * width, &mut seed),
            );
            let got = run([&q, &k, &v], &lens, width, heads);
            let want = reference([&q, &k, &v], &lens, width, heads);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w).abs() < 2e-5,
                    "width {width}, value {i}: {g} vs {w}"
                );
            }
            // Each sequence alone gives the same bits as inside the batch.
            let mut start = 0;
            for &n in &lens {
                let part = |m: &[f32]| m[start * width..(start + n) * width].to_vec();
                let alone = run([&part(&q), &part(&k), &part(&v)], &[n], width, heads);
                assert_eq!(
                    alone,
                    got[start * width..(start + n) * width],
                    "width {width}, len {n}"
                );
                start += n;
            }
        }
    }

    #[test]
    fn fused_and_portable_tiles_agree() {
        let mut seed = 11;
        for (k, w) in [
            (1, 1),
            (5, 7),
            (26, 8),
            (26, 9),
            (26, 26),
            (40, 33),
            (128, 26),
        ] {
            let a_rows: Vec<Vec<f32>> = (0..TILE).map(|_| random(k, &mut seed)).collect();
            let a: [&[f32]; TILE] = std::array::from_fn(|r| a_rows[r].as_slice());
            let ldb = w + 3;
            let b = random(k * ldb, &mut seed);
            let mut portable = vec![0f32; TILE * w];
            tile_product::<false>(a, &b, ldb, w, &mut portable);
            for r in 0..TILE {
                for j in 0..w {
                    let want: f64 = (0..k)
                        .map(|p| f64::from(a[r][p]) * f64::from(b[p * ldb + j]))
                        .sum();
                    assert!(
                        (f64::from(portable[r * w + j]) - want).abs() < 1e-4,
                        "{k}x{w}"
                    );
                }
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut fused = vec![0f32; TILE * w];
                // SAFETY: the CPU supports AVX2 and FMA.
                unsafe { tile_product_fma(a, &b, ldb, w, &mut fused) };
                for (x, y) in portable.iter().zip(&fused) {
                    assert!((x - y).abs() < 1e-4, "{k}x{w}: {x} vs {y}");
                }
                // Each value is the same chain of fused multiply-adds on every path.
                for r in 0..TILE {
                    for j in 0..w {
                        let chain =
                            (0..k).fold(0f32, |acc, p| a[r][p].mul_add(b[p * ldb + j], acc));
                        assert_eq!(
                            fused[r * w + j].to_bits(),
                            chain.to_bits(),
                            "{k}x{w} at {r},{j}"
                        );
                    }
                }
            }
        }
    }
}
