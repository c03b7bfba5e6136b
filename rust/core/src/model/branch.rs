//! The attention of a FastBERT branch, with its key and value projections folded into the
//! `[CLS]` query.
//!
//! The branch reads only the `[CLS]` row of its attention, so only the `[CLS]` query is ever
//! scored. Per sequence and head, with `q` the head's slice of that query, `K`, `bk`, `V`, `bv`
//! the head's rows of the key and value weights (`[d, W]`) and biases, `h_t` the branch's hidden
//! state of token `t` and `a_t` the softmax weights over the sequence's own tokens:
//!
//! ```text
//! score_t = q . (K h_t + bk) / sqrt(d) = h_t . u / sqrt(d) + q . bk     with u = K^T q  [W]
//! context = sum_t a_t (V h_t + bv)     = V (sum_t a_t h_t) + bv         (sum_t a_t = 1)
//! ```
//!
//! `q . bk` is the same for every token of the sequence, and softmax is invariant to adding a
//! constant, so the key bias is dropped. A sequence of `n` tokens then costs
//! `heads (2 n + 2 d) W = 2 (heads n + W) W` multiply-adds instead of the `2 n W^2` of projecting
//! every token's key and value.
//!
//! # Determinism
//! With `c = log2(e) / sqrt(d)`, per sequence and head, every step in a fixed order:
//! - `u[p] = sum_i q[i] K[i, p]`, `i` ascending ([`Kernel::weighted_rows`]);
//! - `s_t = dot(h_t, u)` ([`Kernel::dot`]: [`PARTIALS`] interleaved partial sums, `p` ascending
//!   in each, then halved pairwise);
//! - `m = max_t s_t`, `e_t = 2^(s_t c - m c)` (= `exp((s_t - m) / sqrt(d))`), `z = sum_t e_t`;
//! - `g[p] = (sum_t e_t h_t[p]) * (1 / z)`, `t` ascending;
//! - `out[i] = (sum_p g[p] V[i, p]) + bv[i]`, `p` ascending.
//!
//! All multiply-adds are fused. The vector kernels put columns (or a dot's partial sums) in lanes
//! and run the scalar definition in each, so every level gives the same bits, and a sequence's
//! result never depends on the other sequences of the call.

use std::ops::Range;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2, Avx512, F32Lanes};
use super::vmath;
use super::workspace::fit;
use crate::cpu::{Isa, KernelKind};

/// Partial sums of a dot product: one AVX-512 vector, two AVX2 vectors.
const PARTIALS: usize = 16;
/// Below this many multiply-adds a call runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// A FastBERT branch's key and value projections, in the layouts the folded attention reads.
#[derive(Clone, Debug, PartialEq)]
pub struct BranchAttention {
    width: usize,
    heads: usize,
    /// `[W, W]` row-major (torch's layout): row `o` holds key output `o`'s weights.
    key: Vec<f32>,
    /// `[W, W]` transposed: row `p` holds input `p`'s weight in every value output.
    value_t: Vec<f32>,
    value_bias: Vec<f32>,
}

impl BranchAttention {
    /// From the torch-layout (`[W, W]`, output-major) key and value weights and the value bias
    /// (`[W]`), for `heads` heads. The key bias is not needed (module docs). Returns a message
    /// naming the mismatch when the lengths do not fit the shape.
    pub fn new(
        key: Vec<f32>,
        value: &[f32],
        value_bias: Vec<f32>,
        width: usize,
        heads: usize,
    ) -> Result<Self, String> {
        if heads == 0 || width == 0 || !width.is_multiple_of(heads) {
            return Err(format!(
                "width {width} must be a positive multiple of heads {heads}"
            ));
        }
        let len = width
            .checked_mul(width)
            .ok_or_else(|| format!("shape [{width}, {width}] overflows"))?;
        for (what, got) in [("key weight", key.len()), ("value weight", value.len())] {
            if got != len {
                return Err(format!(
                    "{what}: expected {len} elements ([{width}, {width}]), got {got}"
                ));
            }
        }
        if value_bias.len() != width {
            return Err(format!(
                "value bias: expected {width} elements, got {}",
                value_bias.len()
            ));
        }
        let mut value_t = vec![0f32; len];
        for (o, row) in value.chunks_exact(width).enumerate() {
            for (p, &v) in row.iter().enumerate() {
                value_t[p * width + o] = v;
            }
        }
        Ok(BranchAttention {
            width,
            heads,
            key,
            value_t,
            value_bias,
        })
    }

    /// Width `W`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The attention output (before `attn_out`) of the `[CLS]` query of each sequence.
    ///
    /// - `q`: `[B, W]`, the `[CLS]` queries, one per sequence;
    /// - `h`: `[T, W]`, the branch's hidden states; sequence `s` owns rows
    ///   `offsets[s]..offsets[s + 1]` (at least one);
    /// - `scratch`: grown as needed; `out`: `[B, W]`.
    ///
    /// Sequences are split across the current rayon pool when it pays.
    pub(crate) fn forward(
        &self,
        isa: Isa,
        q: &[f32],
        h: &[f32],
        offsets: &[usize],
        scratch: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let (w, b) = (self.width, offsets.len().saturating_sub(1));
        if b == 0 {
            return;
        }
        let tokens = offsets[b];
        let max_len = offsets.windows(2).map(|o| o[1] - o[0]).max().unwrap_or(0);
        // u and g, then the scores of one head.
        let per_task = 2 * w + max_len;
        let macs = 2 * w * (self.heads * tokens + w * b);
        let threads = rayon::current_num_threads();
        let chunk = if macs < PARALLEL_MIN_MACS || threads <= 1 {
            b
        } else {
            b.div_ceil(threads)
        };
        fit(scratch, b.div_ceil(chunk) * per_task);
        let cx = Seqs { q, h, offsets };
        let out = &mut out[..b * w];
        if chunk == b {
            self.task(isa, &cx, 0, out, &mut scratch[..per_task]);
            return;
        }
        out.par_chunks_mut(chunk * w)
            .zip(scratch.par_chunks_mut(per_task))
            .enumerate()
            .for_each(|(ci, (o, sc))| self.task(isa, &cx, ci * chunk, o, sc));
    }

    /// The sequences `first..first + out.len() / W` by the kernels of `isa`.
    fn task(&self, isa: Isa, cx: &Seqs, first: usize, out: &mut [f32], sc: &mut [f32]) {
        match isa.kind() {
            // SAFETY: `isa` proves the CPU has AVX-512F and FMA (the level includes them).
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512Vnni => unsafe { task_avx512(self, cx, first, out, sc) },
            // SAFETY: `isa` proves the CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => unsafe { task_avx2(self, cx, first, out, sc) },
            // SAFETY: the scalar kernel needs no CPU feature.
            _ => unsafe { sequences::<Scalar>(self, cx, first, out, sc) },
        }
    }
}

/// The packed sequences of a call.
struct Seqs<'a> {
    q: &'a [f32],
    h: &'a [f32],
    offsets: &'a [usize],
}

/// # Safety
/// The CPU must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn task_avx512(
    a: &BranchAttention,
    cx: &Seqs,
    first: usize,
    out: &mut [f32],
    sc: &mut [f32],
) {
    // SAFETY: AVX-512F is enabled, as `Avx512` requires.
    unsafe { sequences::<Avx512>(a, cx, first, out, sc) }
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2(a: &BranchAttention, cx: &Seqs, first: usize, out: &mut [f32], sc: &mut [f32]) {
    // SAFETY: AVX2 and FMA are enabled, as `Avx2` requires.
    unsafe { sequences::<Avx2>(a, cx, first, out, sc) }
}

/// The definition of the module docs for the sequences `first..first + out.len() / W`; `sc`
/// holds `2 W` values and the longest sequence's length.
///
/// # Safety
/// The CPU must have `K`'s features, and this must be inlined into a function compiled with them.
#[inline(always)]
unsafe fn sequences<K: Kernel>(
    a: &BranchAttention,
    cx: &Seqs,
    first: usize,
    out: &mut [f32],
    sc: &mut [f32],
) {
    let (w, heads) = (a.width, a.heads);
    let d = w / heads;
    let c = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let (u, rest) = sc.split_at_mut(w);
    let (g, e) = rest.split_at_mut(w);
    for (i, ctx) in out.chunks_exact_mut(w).enumerate() {
        let s = first + i;
        let (start, end) = (cx.offsets[s], cx.offsets[s + 1]);
        let hs = &cx.h[start * w..end * w];
        let q = &cx.q[s * w..(s + 1) * w];
        let e = &mut e[..end - start];
        for head in 0..heads {
            let cols = head * d..(head + 1) * d;
            // SAFETY (every kernel call): `K`'s features are enabled (caller); each slice holds
            // the rows and columns the call names.
            unsafe {
                K::weighted_rows(&a.key[head * d * w..], w, w, &q[cols.clone()], 1.0, u);
                for (x, ht) in e.iter_mut().zip(hs.chunks_exact(w)) {
                    *x = K::dot(ht, u);
                }
            }
            let inv = softmax_weights(e, c);
            let ctx = &mut ctx[cols.clone()];
            // SAFETY: as above.
            unsafe {
                K::weighted_rows(hs, w, w, e, inv, g);
                K::weighted_rows(&a.value_t[head * d..], w, d, g, 1.0, ctx);
            }
            for (o, &bias) in ctx.iter_mut().zip(&a.value_bias[cols]) {
                *o += bias;
            }
        }
    }
}

/// `e_t = 2^(s_t c - m c)` in place with `m = max_t s_t`; returns `1 / sum_t e_t`.
#[inline(always)]
fn softmax_weights(e: &mut [f32], c: f32) -> f32 {
    let m = e.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mc = m * -c;
    let mut z = 0f32;
    for x in e.iter_mut() {
        *x = vmath::exp2::<true>(x.mul_add(c, mc));
        z += *x;
    }
    1.0 / z
}

/// The two reductions of the folded attention, each a fixed sequence of fused multiply-adds per
/// result (module docs).
trait Kernel {
    /// `sum_p a[p] b[p]` over [`PARTIALS`] interleaved partial sums ([`dot_scalar`]).
    ///
    /// # Safety
    /// The CPU must have the kernel's features; `a` and `b` have the same length.
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;

    /// `out[c] = (sum_j w[j] rows[j * stride + c]) * scale` for `c < width`, `j` ascending.
    ///
    /// # Safety
    /// The CPU must have the kernel's features; `rows` holds `w.len()` rows of `width` values
    /// at `stride`, `out` holds `width` values.
    unsafe fn weighted_rows(
        rows: &[f32],
        stride: usize,
        width: usize,
        w: &[f32],
        scale: f32,
        out: &mut [f32],
    );
}

/// The portable level: the definitions one value at a time.
struct Scalar;

impl Kernel for Scalar {
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot_scalar(a, b)
    }

    #[inline(always)]
    unsafe fn weighted_rows(
        rows: &[f32],
        stride: usize,
        width: usize,
        w: &[f32],
        scale: f32,
        out: &mut [f32],
    ) {
        weighted_cols(rows, stride, w, scale, out, 0..width);
    }
}

/// Partial sum `j` takes the products of the indices `p` with `p % PARTIALS == j`, in order;
/// then the upper half of the partial sums is added onto the lower half until one is left.
#[inline(always)]
fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; PARTIALS];
    dot_tail(a, b, 0, &mut acc);
    halve(acc)
}

/// Continues the partial sums `acc` of [`dot_scalar`] from index `from` to the end.
#[inline(always)]
fn dot_tail(a: &[f32], b: &[f32], from: usize, acc: &mut [f32; PARTIALS]) {
    for (p, (&x, &y)) in a.iter().zip(b).enumerate().skip(from) {
        acc[p % PARTIALS] = x.mul_add(y, acc[p % PARTIALS]);
    }
}

#[inline(always)]
fn halve(mut acc: [f32; PARTIALS]) -> f32 {
    let mut n = PARTIALS;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            acc[j] += acc[j + n];
        }
    }
    acc[0]
}

/// [`Kernel::weighted_rows`] for the columns `cols`, row by row.
#[inline(always)]
fn weighted_cols(
    rows: &[f32],
    stride: usize,
    w: &[f32],
    scale: f32,
    out: &mut [f32],
    cols: Range<usize>,
) {
    let out = &mut out[cols.clone()];
    out.fill(0.0);
    for (j, &wj) in w.iter().enumerate() {
        let row = &rows[j * stride + cols.start..j * stride + cols.end];
        for (o, &x) in out.iter_mut().zip(row) {
            *o = wj.mul_add(x, *o);
        }
    }
    for o in out {
        *o *= scale;
    }
}

/// Column vectors a [`weighted_rows`](Kernel::weighted_rows) block keeps in registers.
#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 8;

#[cfg(target_arch = "x86_64")]
impl<L: F32Lanes> Kernel for L {
    /// Lane `l` of vector `v` holds partial sum `v * LANES + l`: a whole vector of products per
    /// [`PARTIALS`] indices, then [`dot_scalar`] on the rest.
    #[inline(always)]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        const { assert!(PARTIALS.is_multiple_of(L::LANES) && PARTIALS / L::LANES <= 2) };
        let per = PARTIALS / L::LANES;
        let full = a.len() / PARTIALS * PARTIALS;
        let mut acc = [0f32; PARTIALS];
        // SAFETY: `L`'s features are enabled (caller); loads stay below `full <= a.len()`
        // (= `b.len()`), stores within `acc`.
        unsafe {
            let mut v = [L::zero(); 2];
            for (ac, bc) in a[..full]
                .chunks_exact(PARTIALS)
                .zip(b[..full].chunks_exact(PARTIALS))
            {
                for (k, v) in v.iter_mut().enumerate().take(per) {
                    let (x, y) = (ac.as_ptr().add(k * L::LANES), bc.as_ptr().add(k * L::LANES));
                    *v = L::fmadd(L::load(x), L::load(y), *v);
                }
            }
            for (k, &v) in v.iter().enumerate().take(per) {
                L::store(acc.as_mut_ptr().add(k * L::LANES), v);
            }
        }
        dot_tail(a, b, full, &mut acc);
        halve(acc)
    }

    /// Blocks of [`BLOCK`] column vectors, then one block of the whole vectors left, then
    /// [`weighted_cols`] on the rest.
    #[inline(always)]
    unsafe fn weighted_rows(
        rows: &[f32],
        stride: usize,
        width: usize,
        w: &[f32],
        scale: f32,
        out: &mut [f32],
    ) {
        let lanes = L::LANES;
        let mut c = 0;
        // SAFETY: `L`'s features are enabled (caller); each block's columns lie below `width`.
        unsafe {
            while c + BLOCK * lanes <= width {
                column_block::<L, BLOCK>(rows, stride, w, scale, out, c);
                c += BLOCK * lanes;
            }
            let vectors = (width - c) / lanes;
            macro_rules! dispatch {
                ($($v:literal)*) => {
                    match vectors {
                        $($v => column_block::<L, $v>(rows, stride, w, scale, out, c),)*
                        _ => {}
                    }
                };
            }
            const { assert!(BLOCK == 8, "the dispatch covers 1..BLOCK vectors") };
            dispatch!(1 2 3 4 5 6 7);
            c += vectors * lanes;
        }
        weighted_cols(rows, stride, w, scale, out, c..width);
    }
}

/// The columns `c..c + V * LANES` of [`Kernel::weighted_rows`], held in `V` accumulators.
///
/// # Safety
/// The CPU must have `L`'s features; the columns lie within every row and within `out`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn column_block<L: F32Lanes, const V: usize>(
    rows: &[f32],
    stride: usize,
    w: &[f32],
    scale: f32,
    out: &mut [f32],
    c: usize,
) {
    let lanes = L::LANES;
    // SAFETY: `L`'s features are enabled (caller); every load reads within the bounds-checked
    // `row`, every store within the bounds-checked `out`.
    unsafe {
        let mut acc = [L::zero(); V];
        for (j, &wj) in w.iter().enumerate() {
            let row = &rows[j * stride + c..][..V * lanes];
            let x = L::splat(wj);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = L::fmadd(x, L::load(row.as_ptr().add(k * lanes)), *a);
            }
        }
        let (s, out) = (L::splat(scale), &mut out[c..c + V * lanes]);
        for (k, &a) in acc.iter().enumerate() {
            L::store(out.as_mut_ptr().add(k * lanes), L::mul(a, s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;

    fn values(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.normal() * scale).collect()
    }

    /// Random key / value weights, `[CLS]` queries and hidden states of ragged sequences.
    struct Case {
        width: usize,
        heads: usize,
        key: Vec<f32>,
        key_bias: Vec<f32>,
        value: Vec<f32>,
        value_bias: Vec<f32>,
        q: Vec<f32>,
        h: Vec<f32>,
        offsets: Vec<usize>,
    }

    impl Case {
        fn new(width: usize, heads: usize, lens: &[usize], seed: u64) -> Case {
            let mut rng = SplitMix64::new(seed);
            let scale = 1.0 / (width as f32).sqrt();
            let mut offsets = vec![0];
            for &n in lens {
                offsets.push(offsets[offsets.len() - 1] + n);
            }
            let tokens = offsets[lens.len()];
            Case {
                width,
                heads,
                key: values(&mut rng, width * width, scale),
                key_bias: values(&mut rng, width, 1.0),
                value: values(&mut rng, width * width, scale),
                value_bias: values(&mut rng, width, 0.1),
                // Queries of order 2, as after the branch's query projection of tanh outputs:
                // softmax weights far from uniform.
                q: values(&mut rng, lens.len() * width, 2.0),
                h: (0..tokens * width)
                    .map(|_| rng.uniform(-1.0, 1.0))
                    .collect(),
                offsets,
            }
        }

        fn folded(&self) -> BranchAttention {
            BranchAttention::new(
                self.key.clone(),
                &self.value,
                self.value_bias.clone(),
                self.width,
                self.heads,
            )
            .unwrap()
        }

        fn run(&self, isa: Isa) -> Vec<f32> {
            let b = self.offsets.len() - 1;
            let mut out = vec![f32::NAN; b * self.width];
            self.folded().forward(
                isa,
                &self.q,
                &self.h,
                &self.offsets,
                &mut Vec::new(),
                &mut out,
            );
            out
        }

        /// The unfolded formula in f64: keys and values of every token (biases included),
        /// softmax over the sequence's tokens, context.
        fn reference(&self) -> Vec<f64> {
            let (w, d) = (self.width, self.width / self.heads);
            let linear = |wt: &[f32], bias: &[f32], x: &[f32]| -> Vec<f64> {
                (0..w)
                    .map(|o| {
                        let dot: f64 = (0..w)
                            .map(|p| f64::from(wt[o * w + p]) * f64::from(x[p]))
                            .sum();
                        dot + f64::from(bias[o])
                    })
                    .collect()
            };
            let mut out = vec![];
            for (s, span) in self.offsets.windows(2).enumerate() {
                let rows = || self.h[span[0] * w..span[1] * w].chunks_exact(w);
                let keys: Vec<Vec<f64>> = rows()
                    .map(|x| linear(&self.key, &self.key_bias, x))
                    .collect();
                let vals: Vec<Vec<f64>> = rows()
                    .map(|x| linear(&self.value, &self.value_bias, x))
                    .collect();
                let q = &self.q[s * w..(s + 1) * w];
                for head in 0..self.heads {
                    let cols = head * d..(head + 1) * d;
                    let scores: Vec<f64> = keys
                        .iter()
                        .map(|k| {
                            let dot: f64 = cols.clone().map(|c| f64::from(q[c]) * k[c]).sum();
                            dot / (d as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in cols {
                        out.push(vals.iter().zip(&e).map(|(v, e)| e / z * v[c]).sum());
                    }
                }
            }
            out
        }
    }

    /// Widths below, at and past one vector and one column block, heads of widths 1 to 96;
    /// sequences of 1 token, ragged, and longer than the width.
    const SHAPES: [(usize, usize); 6] = [(16, 2), (12, 3), (40, 4), (128, 2), (136, 8), (192, 2)];
    const LENS: [usize; 7] = [1, 10, 3, 17, 64, 9, 200];

    #[test]
    fn matches_the_unfolded_formula() {
        for (i, (width, heads)) in SHAPES.into_iter().enumerate() {
            let case = Case::new(width, heads, &LENS, 11 + i as u64);
            let want = case.reference();
            for isa in Isa::available() {
                let got = case.run(isa);
                for (row, (g, w)) in got.chunks(width).zip(want.chunks(width)).enumerate() {
                    let norm = w.iter().fold(0f64, |m, x| m.max(x.abs()));
                    for (c, (&g, &w)) in g.iter().zip(w).enumerate() {
                        assert!(
                            (f64::from(g) - w).abs() <= 1e-5 * norm,
                            "{isa}, width {width}, heads {heads}, row {row}, column {c}: \
                             {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// Every level, and each sequence alone, give the bits of the portable level; so do one
    /// thread and two (split across tasks).
    #[test]
    fn every_level_gives_the_same_bits() {
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        for (i, (width, heads)) in SHAPES.into_iter().enumerate() {
            let case = Case::new(width, heads, &LENS, 31 + i as u64);
            let want = bits(pool(1).install(|| case.run(Isa::PORTABLE)));
            for isa in Isa::available() {
                for threads in [1, 2] {
                    let got = bits(pool(threads).install(|| case.run(isa)));
                    assert_eq!(got, want, "{isa}, {threads} threads, width {width}");
                }
                for (s, span) in case.offsets.windows(2).enumerate() {
                    let w = width;
                    let alone = Case {
                        q: case.q[s * w..(s + 1) * w].to_vec(),
                        h: case.h[span[0] * w..span[1] * w].to_vec(),
                        offsets: vec![0, span[1] - span[0]],
                        key: case.key.clone(),
                        key_bias: case.key_bias.clone(),
                        value: case.value.clone(),
                        value_bias: case.value_bias.clone(),
                        ..case
                    };
                    assert_eq!(
                        bits(alone.run(isa)),
                        want[s * w..(s + 1) * w],
                        "{isa}, width {width}, sequence {s} alone"
                    );
                }
            }
        }
    }

    /// The vector dot and weighted sums give their scalar definitions' bits on every length
    /// (tails of every size).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_reductions_match_the_scalar_ones() {
        fn check<L: F32Lanes>() {
            let mut rng = SplitMix64::new(5);
            for n in 0..70 {
                let a = values(&mut rng, n, 1.0);
                let b = values(&mut rng, n, 1.0);
                // SAFETY: the caller checked `L`'s features; the test is not inlined into a
                // function compiled with them, which costs speed, not correctness.
                let got = unsafe { <L as Kernel>::dot(&a, &b) };
                assert_eq!(got.to_bits(), dot_scalar(&a, &b).to_bits(), "dot, n {n}");
                let (stride, rows) = (n + 3, 5);
                let m = values(&mut rng, rows * stride, 1.0);
                let w = values(&mut rng, rows, 1.0);
                let mut want = vec![f32::NAN; n];
                weighted_cols(&m[1..], stride, &w, 0.7, &mut want, 0..n);
                let mut got = vec![f32::NAN; n];
                // SAFETY: as above; `m[1..]` holds 5 rows of `n` values at `stride`.
                unsafe { <L as Kernel>::weighted_rows(&m[1..], stride, n, &w, 0.7, &mut got) };
                assert_eq!(bits(&got), bits(&want), "weighted rows, width {n}");
            }
        }
        fn bits(v: &[f32]) -> Vec<u32> {
            v.iter().map(|x| x.to_bits()).collect()
        }
        if Isa::new(KernelKind::Avx2).is_some() {
            check::<Avx2>();
        }
        if Isa::new(KernelKind::Avx512Vnni).is_some() {
            check::<Avx512>();
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let ok = |w: usize| vec![0f32; w];
        assert!(BranchAttention::new(ok(16), &ok(16), ok(4), 4, 3)
            .unwrap_err()
            .contains("multiple of heads"));
        assert!(BranchAttention::new(ok(15), &ok(16), ok(4), 4, 2)
            .unwrap_err()
            .contains("key weight"));
        assert!(BranchAttention::new(ok(16), &ok(17), ok(4), 4, 2)
            .unwrap_err()
            .contains("value weight"));
        assert!(BranchAttention::new(ok(16), &ok(16), ok(3), 4, 2)
            .unwrap_err()
            .contains("value bias"));
    }
}
