//! Multi-head self-attention over packed sequences (see [`super::workspace`]).
//!
//! For each query row and head, with `d` the head width and `c = log2(e) / sqrt(d)`:
//! `s[j] = sum_p q[p] k_j[p]` over the keys `j` of the query's own sequence (the padding mask of
//! docs/bundle.md: `-inf` on padded keys gives them weight 0), `m = max_j s[j]`,
//! `e[j] = 2^(s[j] c - m c)` (= `exp((s[j] - m) / sqrt(d))`, by [`vmath::exp2`]),
//! `z = sum_j e[j]`, `out[c] = (sum_j e[j] v_j[c]) * (1 / z)`. Every sum runs in index order;
//! [`attend_query`] computes exactly this, one query at a time.
//!
//! The level of [`Isa`] picks the kernel once per call, and every level gives the bits of
//! [`attend_query`] with fused multiply-adds: the portable level runs it one query at a time; the
//! AVX2 and AVX-512 levels run the vector kernel ([`attend_lanes`]), which puts queries in lanes: a
//! tile is up to `LANES` queries of one sequence (16 with AVX-512, 8 with AVX2), one per lane, and
//! every lane runs the scalar definition of its query, so a query's result never depends on the
//! level, nor on the rest of its tile or batch. Per sequence its keys are
//! packed once so that [`KEYS`] keys' values of one column are adjacent ([`pack_keys`]). Per tile
//! the query rows are transposed once, for every head (`qt[c]` holds column `c` of every lane's
//! query). Per head: a score is `d` multiply-adds of a broadcast key value with `qt[p]`, [`KEYS`]
//! keys at a time; max, exp2 and sum are lane-wise; the output is `n` multiply-adds per column with
//! broadcast value entries, a block of columns held in registers, stored by column (`ot[c]`), and
//! the tile's output columns are transposed back into the query rows at the end. Every
//! multiply-add is a full vector, whatever the head width; the transposes are 8 x 8 shuffles
//! ([`rows_to_columns`], [`columns_to_rows`]), which cost a fraction of the gathers and scatters
//! they replace.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2, Avx512, F32Lanes};
use super::vmath::{self, madd};
use super::workspace::fit;
use crate::cpu::{Isa, KernelKind};
use crate::error::{Error, Result};

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

/// The most lanes of any kernel (AVX-512's 16): the tile scratch is sized for it.
const MAX_LANES: usize = 16;

/// Keys scored at once by [`attend_lanes`]: one accumulator each.
const KEYS: usize = 8;

/// Scratch one parallel task needs for sequences of up to `max_len` tokens and rows of `width`
/// values: the packed keys of one sequence ([`pack_keys`]), a tile's transposed queries and
/// outputs, then its scores.
fn task_scratch(max_len: usize, width: usize) -> usize {
    max_len.div_ceil(KEYS) * KEYS * width + MAX_LANES * (2 * width + max_len)
}

/// Attention of `query_seq.len()` query rows of width `width` (`heads` heads).
///
/// - `q`: query row `i` is the `i`-th query; `query_seq[i]` is its sequence; the queries of a
///   sequence are consecutive.
/// - `k`, `v`: indexed by token row; sequence `s` owns rows `offsets[s]..offsets[s + 1]`.
/// - `scores`: scratch, grown as needed; `out`: `[queries, width]`.
/// - `isa`: the kernel's level (module docs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    isa: Isa,
    q: Rows,
    k: Rows,
    v: Rows,
    width: usize,
    heads: usize,
    offsets: &[usize],
    query_seq: &[u32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let nseq = offsets.len().saturating_sub(1);
    let nq = query_seq.len();
    if nseq == 0 || nq == 0 {
        return;
    }
    let max_len = offsets
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
        .max(1);
    // Whole tiles per task, one task per thread: each task packs the keys of its sequences.
    let chunk = nq
        .div_ceil(rayon::current_num_threads().max(1))
        .next_multiple_of(MAX_LANES);
    let per_task = task_scratch(max_len, width);
    fit(scores, nq.div_ceil(chunk) * per_task);
    let cx = Ctx {
        q,
        k,
        v,
        width,
        heads,
        offsets,
        query_seq,
    };
    out[..nq * width]
        .par_chunks_mut(chunk * width)
        .zip(scores.par_chunks_mut(per_task))
        .enumerate()
        .for_each(|(ci, (o, sc))| attend(isa, &cx, ci * chunk, o, sc));
}

/// The encoder's self-attention of one layer over whole packed sequences, checked, for callers
/// outside the crate (the benchmark bindings): the same [`attention`] call the encoder makes.
///
/// - `qkv`: `[tokens, 3 * width]`, each row a token's query, key and value side by side (the
///   fused qkv linear's output layout);
/// - `offsets`: sequence `s` owns token rows `offsets[s]..offsets[s + 1]` (`offsets[0] == 0`,
///   non-decreasing, the last entry is `tokens`);
/// - `token_seq`: the sequence of each token row (`tokens` entries, consistent with `offsets`);
/// - `scores`: scratch, grown as needed; `out`: `[tokens, width]`.
///
/// Runs on the current rayon pool. Every shape mismatch is an [`Error::InvalidInput`].
#[allow(clippy::too_many_arguments)]
pub fn self_attention(
    isa: Isa,
    qkv: &[f32],
    width: usize,
    heads: usize,
    offsets: &[usize],
    token_seq: &[u32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<()> {
    if heads == 0 || width == 0 || !width.is_multiple_of(heads) {
        return Err(Error::input(format!(
            "width {width} must be a positive multiple of heads {heads}"
        )));
    }
    if offsets.first() != Some(&0) || offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::input("offsets must start at 0 and never decrease"));
    }
    let tokens = offsets[offsets.len() - 1];
    let expect = |what: &str, want: Option<usize>, got: usize| match want {
        Some(want) if want == got => Ok(()),
        _ => Err(Error::input(format!(
            "{what}: expected {} values, got {got}",
            want.map_or_else(|| "more than usize::MAX".to_owned(), |w| w.to_string())
        ))),
    };
    let row_width = width.checked_mul(3);
    expect(
        "qkv",
        row_width.and_then(|w| w.checked_mul(tokens)),
        qkv.len(),
    )?;
    expect("out", width.checked_mul(tokens), out.len())?;
    expect("token_seq", Some(tokens), token_seq.len())?;
    for (s, w) in offsets.windows(2).enumerate() {
        if token_seq[w[0]..w[1]].iter().any(|&t| t as usize != s) {
            return Err(Error::input(format!(
                "token_seq disagrees with offsets in sequence {s}"
            )));
        }
    }
    self_attention_qkv(isa, qkv, width, heads, offsets, token_seq, scores, out);
    Ok(())
}

/// [`attention`] over a fused projection buffer: each token's row holds its query, key and
/// value side by side (`[T, 3 * width]`), as the encoder's qkv linear writes them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn self_attention_qkv(
    isa: Isa,
    qkv: &[f32],
    width: usize,
    heads: usize,
    offsets: &[usize],
    token_seq: &[u32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let rows = |col| Rows {
        data: qkv,
        stride: 3 * width,
        col,
    };
    attention(
        isa,
        rows(0),
        rows(width),
        rows(2 * width),
        width,
        heads,
        offsets,
        token_seq,
        scores,
        out,
    );
}

/// What every query of an [`attention`] call shares.
struct Ctx<'a> {
    q: Rows<'a>,
    k: Rows<'a>,
    v: Rows<'a>,
    width: usize,
    heads: usize,
    offsets: &'a [usize],
    query_seq: &'a [u32],
}

impl Ctx<'_> {
    /// Head width.
    fn d(&self) -> usize {
        self.width / self.heads
    }

    /// First token row and length of sequence `s`.
    fn seq(&self, s: usize) -> (usize, usize) {
        (self.offsets[s], self.offsets[s + 1] - self.offsets[s])
    }
}

/// Attention of the queries `first..first + out.len() / width`, with `sc` as scratch, by the
/// kernel of `isa`.
fn attend(isa: Isa, cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    match isa.kind() {
        // SAFETY: `isa` proves the CPU has AVX-512F, AVX2 and FMA (the level includes AVX2's).
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => unsafe { attend_avx512(cx, first, out, sc) },
        // SAFETY: `isa` proves the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 => unsafe { attend_avx2(cx, first, out, sc) },
        _ => attend_portable(cx, first, out, sc),
    }
}

/// One query at a time (with fused multiply-adds, as the vector kernels).
fn attend_portable(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    let nrows = out.len() / cx.width;
    for (i, row) in out.chunks_exact_mut(cx.width).take(nrows).enumerate() {
        attend_query::<true>(cx, first + i, row, sc);
    }
}

/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA ([`pack_keys`] is AVX2 code).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_avx512(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    // SAFETY: AVX-512F is enabled, as `Avx512` requires, and AVX2 for `pack_keys`.
    unsafe { attend_lanes::<Avx512>(cx, first, out, sc) }
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    // SAFETY: AVX2 and FMA are enabled, as `Avx2` requires.
    unsafe { attend_lanes::<Avx2>(cx, first, out, sc) }
}

/// `c` with `e^((s - m) / sqrt(d)) = 2^(s c - m c)`.
fn exp2_scale(d: usize) -> f32 {
    std::f32::consts::LOG2_E / (d as f32).sqrt()
}

/// The definition (module docs) for query `qi`, into `out` (`[width]`); `sc` holds at least the
/// sequence's length.
fn attend_query<const FMA: bool>(cx: &Ctx, qi: usize, out: &mut [f32], sc: &mut [f32]) {
    let (width, d) = (cx.width, cx.d());
    let c = exp2_scale(d);
    let (start, n) = cx.seq(cx.query_seq[qi] as usize);
    let e = &mut sc[..n];
    for h in 0..cx.heads {
        let cols = h * d..(h + 1) * d;
        let q = &cx.q.row(qi, width)[cols.clone()];
        for (j, s) in e.iter_mut().enumerate() {
            let k = &cx.k.row(start + j, width)[cols.clone()];
            *s = q
                .iter()
                .zip(k)
                .fold(0.0, |acc, (&a, &b)| madd::<FMA>(a, b, acc));
        }
        let m = e.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mc = m * -c;
        let mut z = 0f32;
        for x in e.iter_mut() {
            *x = vmath::exp2::<FMA>(madd::<FMA>(*x, c, mc));
            z += *x;
        }
        let inv = 1.0 / z;
        for (c, o) in cols.zip(&mut out[h * d..(h + 1) * d]) {
            let acc = e.iter().enumerate().fold(0.0, |acc, (j, &w)| {
                madd::<FMA>(w, cx.v.row(start + j, width)[c], acc)
            });
            *o = acc * inv;
        }
    }
}

/// The queries `first..first + out.len() / width` in tiles of `L::LANES` (module docs).
///
/// # Safety
/// The CPU must have `L`'s features, and this must be inlined into a function compiled with them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn attend_lanes<L: F32Lanes>(cx: &Ctx, first: usize, out: &mut [f32], sc: &mut [f32]) {
    let (width, d, lanes) = (cx.width, cx.d(), L::LANES);
    let c = exp2_scale(d);
    let nrows = out.len() / width;
    // Every pointer below stays in its slice: these bounds hold for all rows and columns used.
    assert!(cx.q.data.len() >= (first + nrows - 1) * cx.q.stride + cx.q.col + width);
    for r in [&cx.k, &cx.v] {
        assert!(r.data.len() >= (cx.offsets[cx.offsets.len() - 1] - 1) * r.stride + r.col + width);
    }
    assert!(lanes <= MAX_LANES && lanes.is_multiple_of(8));
    // The sequence whose keys `sc` holds.
    let mut packed = None;
    let mut i = 0;
    while i < nrows {
        let s = cx.query_seq[first + i] as usize;
        let mut rows = 1;
        while rows < lanes && i + rows < nrows && cx.query_seq[first + i + rows] as usize == s {
            rows += 1;
        }
        let (start, n) = cx.seq(s);
        let groups = n.div_ceil(KEYS);
        let (kp, rest) = sc.split_at_mut(groups * KEYS * width);
        let (qt, rest) = rest.split_at_mut(MAX_LANES * width);
        let (ot, e) = rest.split_at_mut(MAX_LANES * width);
        let e = &mut e[..lanes * n];
        if packed != Some(s) {
            // SAFETY: both callers' levels include AVX2 (`attend_avx512`'s enables it); the rows
            // are as asserted above.
            unsafe { pack_keys(cx, s, kp) };
            packed = Some(s);
        }
        // SAFETY: `L`'s features, AVX2 among them, are enabled (caller); the query rows
        // `first + i + l` for `l < rows` lie within `q` and the out rows `i + l` within `out`
        // (asserted above); `qt` and `ot` hold `lanes * width` values, `e` `lanes * n`.
        unsafe {
            for g in 0..lanes / 8 {
                let valid = rows.saturating_sub(8 * g).min(8);
                let src = std::array::from_fn(|u| {
                    let l = (8 * g + u).min(rows - 1);
                    cx.q.data
                        .as_ptr()
                        .add((first + i + l) * cx.q.stride + cx.q.col)
                });
                rows_to_columns(&src, valid, width, qt.as_mut_ptr().add(8 * g), lanes);
            }
            for h in 0..cx.heads {
                let qh = &qt[h * d * lanes..(h + 1) * d * lanes];
                let head_keys = &kp[h * groups * d * KEYS..(h + 1) * groups * d * KEYS];
                let m = scores::<L>(qh, head_keys, d, n, e);
                let (mut z, cv) = (L::zero(), L::splat(c));
                let mc = L::mul(m, L::splat(-c));
                for j in 0..n {
                    let x = L::exp2(L::fmadd(L::load(e.as_ptr().add(j * lanes)), cv, mc));
                    L::store(e.as_mut_ptr().add(j * lanes), x);
                    z = L::add(z, x);
                }
                let inv = L::div(L::splat(1.0), z);
                let v0 =
                    cx.v.data
                        .as_ptr()
                        .add(start * cx.v.stride + cx.v.col + h * d);
                let oh = ot.as_mut_ptr().add(h * d * lanes);
                weighted_values::<L>(e, v0, cx.v.stride, d, n, inv, oh);
            }
            for g in 0..rows.div_ceil(8) {
                let valid = (rows - 8 * g).min(8);
                let dst = std::array::from_fn(|u| {
                    let l = (8 * g + u).min(rows - 1);
                    out.as_mut_ptr().add((i + l) * width)
                });
                columns_to_rows(ot.as_ptr().add(8 * g), lanes, width, &dst, valid);
            }
        }
        i += rows;
    }
}

/// `t[c] = (r[0][c], ..., r[7][c])`: the 8 x 8 transpose of eight rows of eight values.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 (caller); register shuffles only.
    unsafe {
        let a: [__m256; 8] = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let b: [__m256; 8] = [
            _mm256_shuffle_ps::<0x44>(a[0], a[2]),
            _mm256_shuffle_ps::<0xEE>(a[0], a[2]),
            _mm256_shuffle_ps::<0x44>(a[1], a[3]),
            _mm256_shuffle_ps::<0xEE>(a[1], a[3]),
            _mm256_shuffle_ps::<0x44>(a[4], a[6]),
            _mm256_shuffle_ps::<0xEE>(a[4], a[6]),
            _mm256_shuffle_ps::<0x44>(a[5], a[7]),
            _mm256_shuffle_ps::<0xEE>(a[5], a[7]),
        ];
        [
            _mm256_permute2f128_ps::<0x20>(b[0], b[4]),
            _mm256_permute2f128_ps::<0x20>(b[1], b[5]),
            _mm256_permute2f128_ps::<0x20>(b[2], b[6]),
            _mm256_permute2f128_ps::<0x20>(b[3], b[7]),
            _mm256_permute2f128_ps::<0x31>(b[0], b[4]),
            _mm256_permute2f128_ps::<0x31>(b[1], b[5]),
            _mm256_permute2f128_ps::<0x31>(b[2], b[6]),
            _mm256_permute2f128_ps::<0x31>(b[3], b[7]),
        ]
    }
}

/// `dst[c * ld + u] = src[u][c]` for `u < valid` and 0 for `valid <= u < 8`, for the columns
/// `c < cols`: eight rows into eight adjacent lanes of each column.
///
/// # Safety
/// The CPU must support AVX2; `src[u]` for `u < valid` is readable for `cols` values; `dst` is
/// writable at `c * ld + u` for `c < cols`, `u < 8`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_to_columns(
    src: &[*const f32; 8],
    valid: usize,
    cols: usize,
    dst: *mut f32,
    ld: usize,
) {
    use std::arch::x86_64::*;
    let body = cols / 8 * 8;
    // SAFETY (both blocks): the reads and writes the contract allows.
    unsafe {
        for c0 in (0..body).step_by(8) {
            let r = std::array::from_fn(|u| {
                if u < valid {
                    _mm256_loadu_ps(src[u].add(c0))
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (j, t) in transpose8(r).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((c0 + j) * ld), t);
            }
        }
        for c in body..cols {
            for (u, row) in src.iter().enumerate() {
                *dst.add(c * ld + u) = if u < valid { *row.add(c) } else { 0.0 };
            }
        }
    }
}

/// `dst[u][c] = src[c * ld + u]` for `u < valid` and the columns `c < cols`: the inverse of
/// [`rows_to_columns`] for the first `valid` rows.
///
/// # Safety
/// The CPU must support AVX2; `src` is readable at `c * ld + u` for `c < cols`, `u < 8`; `dst[u]`
/// for `u < valid` is writable for `cols` values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn columns_to_rows(
    src: *const f32,
    ld: usize,
    cols: usize,
    dst: &[*mut f32; 8],
    valid: usize,
) {
    use std::arch::x86_64::*;
    let body = cols / 8 * 8;
    // SAFETY (both blocks): the reads and writes the contract allows.
    unsafe {
        for c0 in (0..body).step_by(8) {
            let t = transpose8(std::array::from_fn(|j| {
                _mm256_loadu_ps(src.add((c0 + j) * ld))
            }));
            for (u, row) in t.iter().enumerate().take(valid) {
                _mm256_storeu_ps(dst[u].add(c0), *row);
            }
        }
        for c in body..cols {
            for (u, row) in dst.iter().enumerate().take(valid) {
                *row.add(c) = *src.add(c * ld + u);
            }
        }
    }
}

/// Writes the keys of sequence `s` in groups of [`KEYS`], so that a group's values for one
/// column are adjacent: `kp[((h * groups + g) * d + p) * KEYS + u] = k[g * KEYS + u][h * d + p]`
/// (key rows counted from the sequence's first), zeros past its last key: per group and head, a
/// [`rows_to_columns`] transpose.
///
/// # Safety
/// The CPU must support AVX2; the sequence's key rows lie within `cx.k` (as [`attend_lanes`]
/// asserts).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_keys(cx: &Ctx, s: usize, kp: &mut [f32]) {
    const _: () = assert!(KEYS == 8, "one 8 x 8 transpose per group and 8 columns");
    let (start, n) = cx.seq(s);
    let d = cx.d();
    let groups = n.div_ceil(KEYS);
    let kp = &mut kp[..cx.heads * groups * d * KEYS];
    for g in 0..groups {
        let valid = (n - g * KEYS).min(KEYS);
        for h in 0..cx.heads {
            let block = &mut kp[(h * groups + g) * d * KEYS..][..d * KEYS];
            // SAFETY: AVX2 is enabled; the rows `u < valid` are key rows of the sequence, read
            // for the head's `d` columns (`col + h * d + d <= col + width`); the others are
            // never read. `block` holds `d * KEYS` values, the writes' extent.
            unsafe {
                let src = std::array::from_fn(|u| {
                    let row = start + g * KEYS + u.min(valid - 1);
                    cx.k.data.as_ptr().add(row * cx.k.stride + cx.k.col + h * d)
                });
                rows_to_columns(&src, valid, d, block.as_mut_ptr(), KEYS);
            }
        }
    }
}

/// Scores of the `n` keys of `kp` (one head of [`pack_keys`]' layout) against the tile `qt`
/// (`[d][LANES]`) into `e` (`[n][LANES]`); returns their lane-wise max.
///
/// # Safety
/// As [`attend_lanes`]; `kp` holds `n.div_ceil(KEYS) * d * KEYS` values, `qt` `d * LANES`, `e`
/// `n * LANES`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores<L: F32Lanes>(qt: &[f32], kp: &[f32], d: usize, n: usize, e: &mut [f32]) -> L::V {
    let lanes = L::LANES;
    // SAFETY (both blocks): reads of `qt` stay below `d * lanes`, of `kp` below
    // `groups * d * KEYS`, writes of `e` below `n * lanes`.
    let mut m = unsafe { L::splat(f32::NEG_INFINITY) };
    for g in 0..n.div_ceil(KEYS) {
        unsafe {
            let group = kp.as_ptr().add(g * d * KEYS);
            let mut acc = [L::zero(); KEYS];
            for p in 0..d {
                let qv = L::load(qt.as_ptr().add(p * lanes));
                let keys = group.add(p * KEYS);
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = L::fmadd(L::splat(*keys.add(u)), qv, *a);
                }
            }
            // A short last group's padding keys are computed and dropped.
            for (u, &a) in acc.iter().enumerate().take(n - g * KEYS) {
                L::store(e.as_mut_ptr().add((g * KEYS + u) * lanes), a);
                m = L::max(m, a);
            }
        }
    }
    m
}

/// `o[c * LANES + l] = (sum_j e[j] v_j[c]) * inv` (lane `l`'s query) for the `d` columns of a
/// head (value row `j` at `v0 + j * stride`), in blocks of columns: the block width is picked so the blocks cover `d`
/// with the fewest accumulators of at most `L::MAX_ACCUMULATORS` (the last block may overlap the one
/// before it and writes equal values again).
///
/// # Safety
/// As [`attend_lanes`]; the value rows are readable and `o` is writable for `d * LANES` values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_values<L: F32Lanes>(
    e: &[f32],
    v0: *const f32,
    stride: usize,
    d: usize,
    n: usize,
    inv: L::V,
    o: *mut f32,
) {
    let blocks = d.div_ceil(L::MAX_ACCUMULATORS);
    let width = d.div_ceil(blocks);
    macro_rules! dispatch {
        ($($w:literal)*) => {
            match width {
                // SAFETY: as this function; `$w == width <= d`.
                $($w => unsafe { value_blocks::<L, $w>(e, v0, stride, d, n, inv, o) },)*
                _ => unreachable!("block width {width} outside 1..=16"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
}

/// [`weighted_values`] with blocks of `W` columns.
///
/// # Safety
/// As [`weighted_values`], with `1 <= W <= d`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn value_blocks<L: F32Lanes, const W: usize>(
    e: &[f32],
    v0: *const f32,
    stride: usize,
    d: usize,
    n: usize,
    inv: L::V,
    o: *mut f32,
) {
    let lanes = L::LANES;
    let mut c0 = 0;
    while c0 < d {
        let c = c0.min(d - W);
        // SAFETY: columns `c..c + W <= d`; rows below `n`; `e` holds `n * lanes` values.
        unsafe {
            let mut acc = [L::zero(); W];
            for j in 0..n {
                let w = L::load(e.as_ptr().add(j * lanes));
                let row = v0.add(j * stride + c);
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = L::fmadd(L::splat(*row.add(u)), w, *a);
                }
            }
            for (u, &a) in acc.iter().enumerate() {
                L::store(o.add((c + u) * lanes), L::mul(a, inv));
            }
        }
        c0 += W;
    }
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

    /// Packed sequences of `lens` with `[T, width]` queries, keys and values, each at column
    /// `pad` of rows of `width + 2 * pad` (as the fused qkv buffer holds them).
    struct Case {
        lens: Vec<usize>,
        offsets: Vec<usize>,
        width: usize,
        heads: usize,
        stride: usize,
        pad: usize,
        qkv: [Vec<f32>; 3],
    }

    impl Case {
        fn new(lens: &[usize], width: usize, heads: usize, seed: &mut u64) -> Case {
            let mut offsets = vec![0];
            for &n in lens {
                offsets.push(offsets.last().unwrap() + n);
            }
            let (pad, t) = (3, offsets[lens.len()]);
            let stride = width + 2 * pad;
            let qkv = std::array::from_fn(|_| random(t * stride, seed));
            Case {
                lens: lens.to_vec(),
                offsets,
                width,
                heads,
                stride,
                pad,
                qkv,
            }
        }

        fn rows(&self, m: usize) -> Rows<'_> {
            Rows {
                data: &self.qkv[m],
                stride: self.stride,
                col: self.pad,
            }
        }

        /// Every token's query, sequence by sequence.
        fn all_queries(&self) -> Vec<u32> {
            let lens = self.lens.iter().enumerate();
            lens.flat_map(|(s, &n)| std::iter::repeat_n(s as u32, n))
                .collect()
        }

        fn ctx<'a>(&'a self, query_seq: &'a [u32]) -> Ctx<'a> {
            Ctx {
                q: self.rows(0),
                k: self.rows(1),
                v: self.rows(2),
                width: self.width,
                heads: self.heads,
                offsets: &self.offsets,
                query_seq,
            }
        }

        fn run(&self, isa: Isa) -> Vec<f32> {
            let query_seq = self.all_queries();
            let mut out = vec![f32::NAN; query_seq.len() * self.width];
            attention(
                isa,
                self.rows(0),
                self.rows(1),
                self.rows(2),
                self.width,
                self.heads,
                &self.offsets,
                &query_seq,
                &mut vec![],
                &mut out,
            );
            out
        }

        /// [`attend_query`] for every query.
        fn one_by_one<const FMA: bool>(&self) -> Vec<f32> {
            let query_seq = self.all_queries();
            let cx = self.ctx(&query_seq);
            let mut sc = vec![0f32; self.offsets[self.lens.len()]];
            let mut out = vec![f32::NAN; query_seq.len() * self.width];
            for (i, row) in out.chunks_exact_mut(self.width).enumerate() {
                attend_query::<FMA>(&cx, i, row, &mut sc);
            }
            out
        }

        /// The definition in f64.
        fn reference(&self) -> Vec<f64> {
            let f64s = |m: &[f32]| m.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
            let [q, k, v] = [0, 1, 2].map(|m| f64s(&self.qkv[m]));
            let d = self.width / self.heads;
            let at = |m: &[f64], r: usize, c: usize| m[r * self.stride + self.pad + c];
            let mut out = vec![];
            for (s, &n) in self.lens.iter().enumerate() {
                let start = self.offsets[s];
                for i in start..start + n {
                    for h in 0..self.heads {
                        let cols = h * d..(h + 1) * d;
                        let sc: Vec<f64> = (start..start + n)
                            .map(|j| {
                                let dot: f64 =
                                    cols.clone().map(|c| at(&q, i, c) * at(&k, j, c)).sum();
                                dot / (d as f64).sqrt()
                            })
                            .collect();
                        let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for c in cols {
                            out.push((0..n).map(|j| e[j] / z * at(&v, start + j, c)).sum());
                        }
                    }
                }
            }
            out
        }
    }

    /// Head widths below, at and above one vector and one column block; sequences of 1 token,
    /// shorter than a tile, ragged, and longer than the key groups.
    const SHAPES: [(usize, usize); 6] = [(12, 3), (16, 2), (52, 2), (78, 3), (64, 1), (130, 2)];
    const LENS: [usize; 7] = [1, 3, 8, 9, 17, 40, 16];

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() < 2e-5,
                "{what}, value {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn matches_the_definition_and_ignores_the_batch() {
        for isa in Isa::available() {
            matches_the_definition_and_ignores_the_batch_at(isa);
        }
    }

    fn matches_the_definition_and_ignores_the_batch_at(isa: Isa) {
        let mut seed = 3;
        for (width, heads) in SHAPES {
            let case = Case::new(&LENS, width, heads, &mut seed);
            let got = case.run(isa);
            close(&got, &case.reference(), &format!("width {width}"));
            close(
                &case.one_by_one::<false>(),
                &case.reference(),
                &format!("portable, width {width}"),
            );
            // Each sequence alone gives the same bits as inside the batch.
            for (s, &n) in case.lens.iter().enumerate() {
                let start = case.offsets[s];
                let alone = Case {
                    lens: vec![n],
                    offsets: vec![0, n],
                    qkv: case
                        .qkv
                        .clone()
                        .map(|m| m[start * case.stride..(start + n) * case.stride].to_vec()),
                    ..case
                };
                assert_eq!(
                    alone.run(isa),
                    got[start * width..(start + n) * width],
                    "{isa}, width {width}, len {n}"
                );
            }
        }
    }

    /// Each kernel of `L` lanes gives [`attend_query`]'s bits (with fused multiply-adds), on
    /// every query and on the `[CLS]` queries alone (one per tile, as the last layer and the
    /// branches ask), split into tasks at odd places.
    #[cfg(target_arch = "x86_64")]
    fn lanes_match_one_by_one(kernel: unsafe fn(&Ctx, usize, &mut [f32], &mut [f32])) {
        let mut seed = 5;
        for (width, heads) in SHAPES {
            let case = Case::new(&LENS, width, heads, &mut seed);
            let want = case.one_by_one::<true>();
            let query_seq = case.all_queries();
            let cx = case.ctx(&query_seq);
            let mut sc = vec![0f32; task_scratch(40, width)];
            let mut got = vec![f32::NAN; want.len()];
            for (first, end) in [(0, 5), (5, 37), (37, query_seq.len())] {
                // SAFETY: the caller checked the kernel's CPU features.
                unsafe { kernel(&cx, first, &mut got[first * width..end * width], &mut sc) };
            }
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "width {width}, heads {heads}"
            );
            // One [CLS] query per sequence.
            let cls: Vec<f32> = case
                .offsets
                .iter()
                .take(LENS.len())
                .flat_map(|&t| want[t * width..(t + 1) * width].to_vec())
                .collect();
            let q = case.rows(0);
            let q_cls: Vec<f32> = case
                .offsets
                .iter()
                .take(LENS.len())
                .flat_map(|&t| q.row(t, width).to_vec())
                .collect();
            let seqs: Vec<u32> = (0..LENS.len() as u32).collect();
            let cx = Ctx {
                q: Rows {
                    data: &q_cls,
                    stride: width,
                    col: 0,
                },
                query_seq: &seqs,
                ..case.ctx(&query_seq)
            };
            let mut got = vec![f32::NAN; cls.len()];
            // SAFETY: as above.
            unsafe { kernel(&cx, 0, &mut got, &mut sc) };
            assert_eq!(got, cls, "[CLS] queries, width {width}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernel_gives_the_scalar_bits() {
        if Isa::new(KernelKind::Avx2).is_some() {
            lanes_match_one_by_one(attend_avx2);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_kernel_gives_the_scalar_bits() {
        if Isa::new(KernelKind::Avx512Vnni).is_some() {
            lanes_match_one_by_one(attend_avx512);
        }
    }

    /// The checked entry on a fused `[tokens, 3 * width]` buffer gives the bits of the same
    /// attention read from separate matrices, and rejects inconsistent shapes.
    #[test]
    fn self_attention_reads_the_fused_layout() {
        let mut seed = 11;
        let (width, heads) = (52, 2);
        let case = Case::new(&LENS, width, heads, &mut seed);
        let tokens = case.offsets[LENS.len()];
        let mut qkv = Vec::with_capacity(tokens * 3 * width);
        for t in 0..tokens {
            for m in 0..3 {
                qkv.extend_from_slice(case.rows(m).row(t, width));
            }
        }
        let token_seq = case.all_queries();
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; tokens * width];
            let run = |qkv: &[f32], seqs: &[u32], offsets: &[usize], heads, out: &mut [f32]| {
                self_attention(isa, qkv, width, heads, offsets, seqs, &mut vec![], out)
            };
            run(&qkv, &token_seq, &case.offsets, heads, &mut out).unwrap();
            assert_eq!(out, case.run(isa), "{isa}");
            let short = &qkv[..qkv.len() - 1];
            for (err, what) in [
                (
                    run(short, &token_seq, &case.offsets, heads, &mut out),
                    "qkv",
                ),
                (
                    run(&qkv, &token_seq, &case.offsets, 5, &mut out),
                    "multiple of heads",
                ),
                (
                    run(&qkv, &token_seq, &case.offsets, 0, &mut out),
                    "multiple of heads",
                ),
                (
                    run(&qkv, &token_seq[1..], &case.offsets, heads, &mut out),
                    "token_seq",
                ),
                (
                    run(&qkv, &token_seq, &case.offsets[1..], heads, &mut out),
                    "start at 0",
                ),
                (run(&qkv, &token_seq, &[], heads, &mut out), "start at 0"),
                (
                    run(&qkv, &token_seq, &case.offsets, heads, &mut out[1..]),
                    "out",
                ),
            ] {
                let message = err.unwrap_err().to_string();
                assert!(message.contains(what), "{what}: {message}");
            }
            let mut shuffled = token_seq.clone();
            shuffled.swap(0, tokens - 1);
            let err = run(&qkv, &shuffled, &case.offsets, heads, &mut out).unwrap_err();
            assert!(err.to_string().contains("disagrees"), "{err}");
        }
    }

    /// Through [`attention`] (tasks, scratch and dispatch included): every level gives
    /// `attend_query::<true>`'s bits, so the levels agree bit for bit.
    #[test]
    fn levels_give_their_scalar_definitions_bits() {
        let mut seed = 9;
        for (width, heads) in SHAPES {
            let case = Case::new(&LENS, width, heads, &mut seed);
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let want = bits(case.one_by_one::<true>());
            for isa in Isa::available() {
                assert_eq!(bits(case.run(isa)), want, "{isa}, width {width}");
            }
        }
    }
}
