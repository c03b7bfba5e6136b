//! u8 x i8 -> i32 GEMM with prepacked weights, and its fused dequantizing form.
//!
//! `out[t, o] = sum_k a[t, k] * w[o, k]` for u8 activations `a` (`[rows, k]`, row-major, one row per
//! token) and int8 weights `w` (`[n, k]`, the `nn.Linear` layout) packed once into
//! [`PackedWeights`]. Three kernels compute it, chosen by [`KernelKind`]:
//!
//! - [`KernelKind::Avx512Vnni`]: `vpdpbusd` (u8 x s8, four products summed into s32, no
//!   saturation) on 16 output channels per 512-bit register.
//! - [`KernelKind::Avx2`]: a *widening* path. `vpmaddubsw` would saturate the u8 * s8 pair sums at
//!   i16 (255 * 127 * 2 = 64770 > 32767), so it is not used. Instead both operands are split into
//!   their even and odd bytes, widened to i16 with two shifts (weights, sign-extending) or an AND and
//!   a shift (activations, zero-extending), and multiplied with `vpmaddwd` (i16 x i16, pairs summed
//!   into i32, exact here). Every product is exact for *all* u8 and i8 inputs, so the AVX2 path
//!   computes the same model as the others and needs no 7-bit weights: 7-bit weights would halve the
//!   weight resolution on exactly the CPUs without VNNI, and an int8 model would then give different
//!   answers on different machines. The cost is roughly four vector instructions per 32 MACs instead
//!   of three for the saturating sequence.
//! - [`KernelKind::Portable`]: scalar Rust on the same packed layout; every SIMD kernel is tested
//!   bit-exact against it, and it against a plain triple loop.
//!
//! Weight codes are in `-127..=127` ([`QuantizedMatrix`] guarantees it; the kernels would be exact
//! for -128 as well). Sums are exact in i32 because `k <= MAX_K`:
//! `|sum| <= 255 * 127 * 65536 < 2^31`, and so is the zero-point correction
//! `sum - zp * colsum = sum_k (a - zp) * w`.
//!
//! # Packed layout
//! Output channels are grouped in blocks of [`BLOCK_N`] = 16 (the last block zero-padded), K is
//! padded with zeros to a multiple of [`GROUP_K`] = 4. Block `b` is a contiguous run of `k_pad / 4`
//! 64-byte, 64-aligned groups; group `g` of block `b` holds, for `j in 0..16`, the four weights
//! `w[16 b + j, 4 g .. 4 g + 4]` at bytes `4 j .. 4 j + 4`. That is exactly one `vpdpbusd` operand
//! against a broadcast of four activation bytes, and two 256-bit halves for the AVX2 kernel.
//!
//! # Threads and buffers
//! The kernels allocate nothing and need no scratch: accumulators live in registers or on the stack,
//! and the caller passes every output buffer. Rows are independent and every buffer is row-major, so
//! a caller parallelizes over rows by splitting `a_q`, `out`, `a_scales` and `a_zps` into matching
//! row ranges (for instance with rayon's `par_chunks_mut`); [`PackedWeights`] is immutable and
//! `Sync`, shared by all threads. Blocks of output channels are contiguous in the packed data and the
//! kernels already loop over block ranges, so a split over output channels is a small addition.
//!
//! # Dequantization
//! [`gemm_dequant`] applies, per output element and in this order (no fused multiply-add, so every
//! kernel rounds identically and the f32 results are bit-exact across kernels too):
//! `d = acc - zp[t] * colsum[o]` (i32), `s = a_scale[t] * w_scale[o]`, `y = s * (d as f32)`, then
//! `y = y + bias[o]` when a bias is given.

use std::fmt;

use crate::cpu::{Isa, KernelKind};
use crate::quant::QuantizedMatrix;

mod portable;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Output channels per packed block (one 512-bit register of i32 accumulators).
pub const BLOCK_N: usize = 16;
/// K is packed in groups of this many bytes per channel (one `vpdpbusd` lane).
pub const GROUP_K: usize = 4;
/// Largest supported K: every i32 sum and correction stays exact below it.
pub const MAX_K: usize = 1 << 16;

/// What went wrong when packing weights or calling a GEMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GemmError {
    /// A buffer's length, or K, does not match what the other arguments imply.
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// `rows * k` or `rows * n` does not fit in `usize`.
    SizeOverflow { rows: usize, cols: usize },
    /// K is larger than [`MAX_K`], where i32 accumulation could overflow.
    KTooLarge { k: usize, max: usize },
    /// The requested kernel needs instructions this CPU (or build target) lacks.
    KernelUnavailable { kernel: KernelKind },
}

impl fmt::Display for GemmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GemmError::ShapeMismatch {
                what,
                expected,
                got,
            } => write!(f, "{what}: expected {expected}, got {got}"),
            GemmError::SizeOverflow { rows, cols } => {
                write!(f, "shape {rows} x {cols} overflows the address space")
            }
            GemmError::KTooLarge { k, max } => write!(
                f,
                "inner dimension {k} is larger than the supported maximum {max}"
            ),
            GemmError::KernelUnavailable { kernel } => {
                write!(f, "the {kernel} kernel is not supported by this CPU")
            }
        }
    }
}

impl std::error::Error for GemmError {}

/// One packed group: 16 channels x 4 weights, aligned to a cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct Group(pub(crate) [i8; BLOCK_N * GROUP_K]);

/// Int8 weights in the kernels' layout (see the module docs), with per-channel column sums and
/// scales. Built once at load time; immutable afterwards.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeights {
    n: usize,
    k: usize,
    /// Groups per block: `ceil(k / 4)`.
    groups: usize,
    /// `num_blocks * groups` groups, block-major.
    data: Vec<Group>,
    /// `sum_k w[o, k]`, padded with zeros to `num_blocks * 16`.
    col_sums: Vec<i32>,
    /// Per-channel scales, padded with zeros to `num_blocks * 16`.
    scales: Vec<f32>,
}

impl PackedWeights {
    /// Packs a quantized `[n, k]` matrix. Fails only if `k > MAX_K`.
    pub fn new(m: &QuantizedMatrix) -> Result<Self, GemmError> {
        let (n, k) = (m.rows_out(), m.cols_in());
        if k > MAX_K {
            return Err(GemmError::KTooLarge { k, max: MAX_K });
        }
        let groups = k.div_ceil(GROUP_K);
        let blocks = n.div_ceil(BLOCK_N);
        let mut data = vec![Group([0; BLOCK_N * GROUP_K]); blocks * groups];
        let mut col_sums = vec![0i32; blocks * BLOCK_N];
        let mut scales = vec![0f32; blocks * BLOCK_N];
        for o in 0..n {
            let (b, j) = (o / BLOCK_N, o % BLOCK_N);
            let row = m.row(o);
            for (kk, &w) in row.iter().enumerate() {
                data[b * groups + kk / GROUP_K].0[j * GROUP_K + kk % GROUP_K] = w;
            }
            col_sums[o] = row.iter().map(|&w| i32::from(w)).sum();
            scales[o] = m.scales()[o];
        }
        Ok(PackedWeights {
            n,
            k,
            groups,
            data,
            col_sums,
            scales,
        })
    }

    /// Number of output channels.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The inner dimension (input features).
    pub fn k(&self) -> usize {
        self.k
    }

    /// K rounded up to a multiple of [`GROUP_K`].
    pub fn k_padded(&self) -> usize {
        self.groups * GROUP_K
    }

    /// Number of blocks of [`BLOCK_N`] output channels.
    pub fn num_blocks(&self) -> usize {
        self.col_sums.len() / BLOCK_N
    }

    /// `sum_k w[o, k]` for each output channel (length `n`).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums[..self.n]
    }

    /// The weight scale of each output channel (length `n`).
    pub fn scales(&self) -> &[f32] {
        &self.scales[..self.n]
    }

    /// Bytes held by the packed weights and their per-channel data.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(self.data.as_slice())
            + std::mem::size_of_val(self.col_sums.as_slice())
            + std::mem::size_of_val(self.scales.as_slice())
    }

    /// The output channels `channels` alone, in that order, as packed weights of their own:
    /// channel `i` of the result is channel `channels[i]` of `self` bit for bit (weights, column
    /// sum and scale), so its GEMM outputs are the selected columns of this one's.
    ///
    /// # Panics
    /// If a channel is `n()` or more.
    pub fn select(&self, channels: &[usize]) -> PackedWeights {
        let groups = self.groups;
        let blocks = channels.len().div_ceil(BLOCK_N);
        let mut data = vec![Group([0; BLOCK_N * GROUP_K]); blocks * groups];
        let mut col_sums = vec![0i32; blocks * BLOCK_N];
        let mut scales = vec![0f32; blocks * BLOCK_N];
        for (i, &o) in channels.iter().enumerate() {
            assert!(o < self.n, "channel {o} of {}", self.n);
            let (b, j) = (i / BLOCK_N, i % BLOCK_N);
            let (from_b, from_j) = (o / BLOCK_N, o % BLOCK_N);
            for g in 0..groups {
                let from = &self.data[from_b * groups + g].0[from_j * GROUP_K..][..GROUP_K];
                data[b * groups + g].0[j * GROUP_K..][..GROUP_K].copy_from_slice(from);
            }
            col_sums[i] = self.col_sums[o];
            scales[i] = self.scales[o];
        }
        PackedWeights {
            n: channels.len(),
            k: self.k,
            groups,
            data,
            col_sums,
            scales,
        }
    }

    /// Recovers the quantized matrix (for tests and debugging).
    pub fn unpack(&self) -> QuantizedMatrix {
        let mut data = vec![0i8; self.n * self.k];
        for o in 0..self.n {
            let (b, j) = (o / BLOCK_N, o % BLOCK_N);
            for kk in 0..self.k {
                data[o * self.k + kk] =
                    self.data[b * self.groups + kk / GROUP_K].0[j * GROUP_K + kk % GROUP_K];
            }
        }
        QuantizedMatrix::from_parts(self.n, self.k, data, self.scales().to_vec())
            .expect("packed weights hold valid parts")
    }

    /// Groups per block.
    pub(crate) fn groups(&self) -> usize {
        self.groups
    }

    /// The `groups()` groups of block `b`.
    pub(crate) fn block(&self, b: usize) -> &[Group] {
        &self.data[b * self.groups..(b + 1) * self.groups]
    }

    /// Start of the packed data as bytes; block `b`, group `g` starts at `(b * groups() + g) * 64`.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn data_ptr(&self) -> *const i8 {
        self.data.as_ptr().cast()
    }

    /// Column sums padded to whole blocks.
    pub(crate) fn padded_col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// Scales padded (with zeros) to whole blocks.
    pub(crate) fn padded_scales(&self) -> &[f32] {
        &self.scales
    }
}

/// A validated GEMM problem: `a` is `[rows, k]` and `k == w.k()`.
pub(crate) struct Problem<'a> {
    pub a: &'a [u8],
    pub rows: usize,
    pub k: usize,
    pub w: &'a PackedWeights,
}

/// Where the kernels write, with the per-row dequantization inputs; all lengths validated.
pub(crate) enum Output<'a> {
    /// Raw sums, `[rows, n]`.
    I32(&'a mut [i32]),
    /// Dequantized values, `[rows, n]`.
    F32 {
        out: &'a mut [f32],
        a_scales: &'a [f32],
        a_zps: &'a [u8],
        bias: Option<&'a [f32]>,
    },
}

/// Raw pointers to an [`Output`], for the SIMD kernels; valid while the `Output` is borrowed.
#[cfg(target_arch = "x86_64")]
pub(crate) enum RawOut {
    I32(*mut i32),
    F32 {
        out: *mut f32,
        a_scales: *const f32,
        a_zps: *const u8,
        /// Null when there is no bias.
        bias: *const f32,
    },
}

#[cfg(target_arch = "x86_64")]
impl RawOut {
    pub(crate) fn new(out: &mut Output) -> Self {
        match out {
            Output::I32(o) => RawOut::I32(o.as_mut_ptr()),
            Output::F32 {
                out,
                a_scales,
                a_zps,
                bias,
            } => RawOut::F32 {
                out: out.as_mut_ptr(),
                a_scales: a_scales.as_ptr(),
                a_zps: a_zps.as_ptr(),
                bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            },
        }
    }
}

/// The activation bytes of a ragged last K group (1 to 3 of them) as one little-endian word,
/// zero-padded; the packed weights are zero there, so the padding never contributes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn tail_word(bytes: &[u8]) -> i32 {
    let mut w = [0u8; GROUP_K];
    w[..bytes.len()].copy_from_slice(bytes);
    i32::from_le_bytes(w)
}

/// The scalar dequantization every kernel reproduces exactly (see the module docs).
#[inline]
pub(crate) fn dequant_one(
    acc: i32,
    zp: u8,
    col_sum: i32,
    a_scale: f32,
    w_scale: f32,
    bias: Option<f32>,
) -> f32 {
    let d = acc.wrapping_sub(i32::from(zp).wrapping_mul(col_sum));
    let y = (a_scale * w_scale) * d as f32;
    match bias {
        Some(b) => y + b,
        None => y,
    }
}

/// Whether `kernel` can run on this CPU (the feature sets of
/// [`KernelKind::required_features`]).
pub fn kernel_available(kernel: KernelKind) -> bool {
    kernel.is_available()
}

fn expect(what: &'static str, expected: usize, got: usize) -> Result<(), GemmError> {
    if expected == got {
        Ok(())
    } else {
        Err(GemmError::ShapeMismatch {
            what,
            expected,
            got,
        })
    }
}

fn area(rows: usize, cols: usize) -> Result<usize, GemmError> {
    rows.checked_mul(cols)
        .ok_or(GemmError::SizeOverflow { rows, cols })
}

fn problem<'a>(
    a_q: &'a [u8],
    rows: usize,
    k: usize,
    packed: &'a PackedWeights,
) -> Result<Problem<'a>, GemmError> {
    expect("k (the weights' input features)", packed.k(), k)?;
    expect("activation length (rows * k)", area(rows, k)?, a_q.len())?;
    Ok(Problem {
        a: a_q,
        rows,
        k,
        w: packed,
    })
}

fn run(p: &Problem, out: &mut Output, kernel: KernelKind) -> Result<(), GemmError> {
    let isa = Isa::new(kernel).ok_or(GemmError::KernelUnavailable { kernel })?;
    match isa.kind() {
        KernelKind::Portable => portable::run(p, out),
        // SAFETY: `isa` proves the CPU has the level's features, which include the ones these
        // kernels are compiled for; `problem` plus the callers validated every buffer length the
        // kernels rely on.
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 => unsafe { avx2::run(p, out) },
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => unsafe { avx512::run(p, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the portable level exists off x86_64"),
    }
    Ok(())
}

/// Raw sums: `out_i32[t * n + o] = sum_k a_q[t * k + kk] * w[o, kk]`, with `a_q` `[rows, k]` and
/// `out_i32` `[rows, n]`, both row-major. Allocates nothing.
pub fn gemm_u8i8(
    a_q: &[u8],
    rows: usize,
    k: usize,
    packed: &PackedWeights,
    out_i32: &mut [i32],
    kernel: KernelKind,
) -> Result<(), GemmError> {
    let p = problem(a_q, rows, k, packed)?;
    expect(
        "output length (rows * n)",
        area(rows, packed.n())?,
        out_i32.len(),
    )?;
    run(&p, &mut Output::I32(out_i32), kernel)
}

/// The GEMM with dequantization fused into its epilogue:
/// `out[t, o] = a_scales[t] * w_scale[o] * (sum_k a_q[t, k] * w[o, k] - a_zps[t] * colsum[o]) + bias[o]`
/// (exact operation order in the module docs). `a_scales` and `a_zps` have one entry per row, `bias`
/// one per output channel. Allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn gemm_dequant(
    a_q: &[u8],
    rows: usize,
    k: usize,
    packed: &PackedWeights,
    a_scales: &[f32],
    a_zps: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    kernel: KernelKind,
) -> Result<(), GemmError> {
    let p = problem(a_q, rows, k, packed)?;
    expect("activation scales (one per row)", rows, a_scales.len())?;
    expect("activation zero points (one per row)", rows, a_zps.len())?;
    if let Some(b) = bias {
        expect("bias (one per output channel)", packed.n(), b.len())?;
    }
    expect(
        "output length (rows * n)",
        area(rows, packed.n())?,
        out.len(),
    )?;
    let mut output = Output::F32 {
        out,
        a_scales,
        a_zps,
        bias,
    };
    run(&p, &mut output, kernel)
}

/// Helpers shared by the kernel tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::testing::SplitMix64;

    /// Random activations and a random packed weight matrix of the given shape.
    pub fn random_problem(
        rng: &mut SplitMix64,
        rows: usize,
        k: usize,
        n: usize,
    ) -> (Vec<u8>, QuantizedMatrix, PackedWeights) {
        let a: Vec<u8> = (0..rows * k).map(|_| rng.u8()).collect();
        // Codes span the scheme's whole range, -127..=127.
        let w: Vec<i8> = (0..n * k)
            .map(|_| (rng.below(255) as i32 - 127) as i8)
            .collect();
        let scales = (0..n).map(|_| rng.uniform(0.001, 0.1)).collect();
        let m = QuantizedMatrix::from_parts(n, k, w, scales).unwrap();
        let packed = PackedWeights::new(&m).unwrap();
        (a, m, packed)
    }

    /// Shapes with ragged edges in every dimension: rows 1..=37 against every K and N listed. In
    /// debug builds (`cargo test`) the larger K x N pairs run a few row counts only, always
    /// including 1 and 5 (a ragged row tile), to keep the suite quick; `cargo test --release` runs
    /// every row count for every pair.
    pub fn shapes() -> Vec<(usize, usize, usize)> {
        const KS: [usize; 8] = [1, 3, 4, 31, 64, 65, 312, 1200];
        const NS: [usize; 7] = [1, 5, 16, 17, 33, 312, 1200];
        let mut out = Vec::new();
        for &k in &KS {
            for &n in &NS {
                for rows in 1..=37 {
                    let cheap = k * n <= 65 * 33
                        || rows == 1
                        || rows == 5
                        || ([2, 3, 4, 8, 13, 37].contains(&rows) && rows * k * n <= 200_000);
                    if cheap || !cfg!(debug_assertions) {
                        out.push((rows, k, n));
                    }
                }
            }
        }
        out
    }

    /// Whether a shape also checks the f32 (dequantizing) output: always in release builds, and in
    /// debug builds for shapes small enough that the extra passes stay cheap.
    pub fn check_f32(rows: usize, k: usize, n: usize) -> bool {
        !cfg!(debug_assertions) || rows * k * n <= 200_000
    }

    /// Checks `kernel` against the portable kernel, bit for bit, on i32 and f32 outputs.
    pub fn check_bit_exact(kernel: KernelKind, seed: u64) {
        if !kernel_available(kernel) {
            eprintln!("skipping: {kernel} is not available on this CPU");
            return;
        }
        let mut rng = SplitMix64::new(seed);
        for (rows, k, n) in shapes() {
            let (a, _, packed) = random_problem(&mut rng, rows, k, n);
            let mut want = vec![0i32; rows * n];
            let mut got = vec![i32::MIN; rows * n];
            gemm_u8i8(&a, rows, k, &packed, &mut want, KernelKind::Portable).unwrap();
            gemm_u8i8(&a, rows, k, &packed, &mut got, kernel).unwrap();
            assert!(
                want == got,
                "{kernel} i32 differs at rows={rows} k={k} n={n}"
            );
            if !check_f32(rows, k, n) {
                continue;
            }

            let a_scales: Vec<f32> = (0..rows).map(|_| rng.uniform(1e-3, 1.0)).collect();
            let a_zps: Vec<u8> = (0..rows).map(|_| rng.u8()).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect();
            for bias in [None, Some(bias.as_slice())] {
                let run = |kernel, out: &mut [f32]| {
                    gemm_dequant(&a, rows, k, &packed, &a_scales, &a_zps, bias, out, kernel)
                };
                let mut want = vec![0f32; rows * n];
                let mut got = vec![f32::NAN; rows * n];
                run(KernelKind::Portable, &mut want).unwrap();
                run(kernel, &mut got).unwrap();
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{kernel} f32 differs at rows={rows} k={k} n={n} bias={}",
                    bias.is_some()
                );
            }
        }
    }

    /// Extreme inputs that would saturate a `vpmaddubsw` pair sum (255 * 127 * 2 > i16::MAX):
    /// every kernel must match the closed form.
    pub fn check_extremes(kernel: KernelKind) {
        if !kernel_available(kernel) {
            eprintln!("skipping: {kernel} is not available on this CPU");
            return;
        }
        let mut rng = SplitMix64::new(99);
        for &(rows, k, n) in &[(1, 1, 1), (5, 7, 17), (37, 1200, 33), (4, MAX_K, 17)] {
            for &wv in &[127i8, -127] {
                let a = vec![255u8; rows * k];
                let m = QuantizedMatrix::from_parts(n, k, vec![wv; n * k], vec![1.0; n]).unwrap();
                let packed = PackedWeights::new(&m).unwrap();
                let mut out = vec![0i32; rows * n];
                gemm_u8i8(&a, rows, k, &packed, &mut out, kernel).unwrap();
                let expect = 255 * i64::from(wv) * k as i64;
                assert!(
                    out.iter().all(|&v| i64::from(v) == expect),
                    "{kernel} w={wv} rows={rows} k={k} n={n}: {} != {expect}",
                    out[0]
                );
                // Zero-point correction at its extreme: zp = 255 cancels the sum exactly.
                let mut y = vec![f32::NAN; rows * n];
                let (s, z) = (vec![1.0f32; rows], vec![255u8; rows]);
                gemm_dequant(&a, rows, k, &packed, &s, &z, None, &mut y, kernel).unwrap();
                assert!(y.iter().all(|&v| v == 0.0), "{kernel} zp correction");
            }
            // Random mixes of the extremes against the portable kernel.
            let a: Vec<u8> = (0..rows * k)
                .map(|_| if rng.below(2) == 0 { 0 } else { 255 })
                .collect();
            let w: Vec<i8> = (0..n * k)
                .map(|_| [-127i8, 0, 127][rng.below(3) as usize])
                .collect();
            let m = QuantizedMatrix::from_parts(n, k, w, vec![1.0; n]).unwrap();
            let packed = PackedWeights::new(&m).unwrap();
            let mut want = vec![0i32; rows * n];
            let mut got = vec![0i32; rows * n];
            gemm_u8i8(&a, rows, k, &packed, &mut want, KernelKind::Portable).unwrap();
            gemm_u8i8(&a, rows, k, &packed, &mut got, kernel).unwrap();
            assert!(
                want == got,
                "{kernel} mixed extremes rows={rows} k={k} n={n}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::quant::{quantize_activations, quantize_weights};
    use crate::testing::SplitMix64;

    /// The obviously correct reference: a triple loop in i64 over the unpacked matrix.
    fn reference_i64(a: &[u8], rows: usize, k: usize, m: &QuantizedMatrix) -> Vec<i64> {
        let n = m.rows_out();
        let mut out = vec![0i64; rows * n];
        for t in 0..rows {
            for o in 0..n {
                let mut s = 0i64;
                for kk in 0..k {
                    s += i64::from(a[t * k + kk]) * i64::from(m.data()[o * k + kk]);
                }
                out[t * n + o] = s;
            }
        }
        out
    }

    #[test]
    fn pack_layout_and_unpack() {
        let (n, k) = (19, 6);
        let data: Vec<i8> = (0..n * k).map(|i| (i % 251) as i8).collect();
        let m =
            QuantizedMatrix::from_parts(n, k, data, (1..=n).map(|i| i as f32).collect()).unwrap();
        let p = PackedWeights::new(&m).unwrap();
        assert_eq!((p.n(), p.k(), p.k_padded(), p.num_blocks()), (19, 6, 8, 2));
        assert_eq!(p.groups(), 2);
        // Channel 17 = block 1, lane 1; k = 5 = group 1, byte 1.
        assert_eq!(p.block(1)[1].0[GROUP_K + 1], m.row(17)[5]);
        // Padding is zero: k = 6, 7 of every channel and every lane past channel 18.
        assert_eq!(p.block(0)[1].0[2..4], [0, 0]);
        assert!(p.block(1)[0].0[3 * GROUP_K..].iter().all(|&w| w == 0));
        assert_eq!(p.unpack(), m);
        for o in 0..n {
            let s: i32 = m.row(o).iter().map(|&w| i32::from(w)).sum();
            assert_eq!(p.col_sums()[o], s);
        }
        assert_eq!(p.padded_col_sums()[19..], [0; 13]);
        assert_eq!(p.scales(), m.scales());
        assert_eq!(p.memory_bytes(), 4 * 64 + 32 * 4 + 32 * 4);
        assert_eq!(p.data_ptr() as usize % 64, 0);
    }

    #[test]
    fn pack_rejects_huge_k() {
        let m = QuantizedMatrix::from_parts(1, MAX_K + 1, vec![0; MAX_K + 1], vec![1.0]).unwrap();
        assert_eq!(
            PackedWeights::new(&m).unwrap_err(),
            GemmError::KTooLarge {
                k: MAX_K + 1,
                max: MAX_K
            }
        );
    }

    #[test]
    fn portable_matches_triple_loop() {
        let mut rng = SplitMix64::new(7);
        for &(rows, k, n) in &[
            (1, 1, 1),
            (2, 3, 5),
            (3, 4, 16),
            (7, 31, 17),
            (37, 65, 33),
            (5, 312, 40),
            (2, 1200, 17),
        ] {
            let (a, m, packed) = random_problem(&mut rng, rows, k, n);
            let want = reference_i64(&a, rows, k, &m);
            let mut got = vec![0i32; rows * n];
            gemm_u8i8(&a, rows, k, &packed, &mut got, KernelKind::Portable).unwrap();
            let got: Vec<i64> = got.into_iter().map(i64::from).collect();
            assert_eq!(got, want, "rows={rows} k={k} n={n}");
        }
        // The largest K, with the largest magnitudes: no overflow anywhere.
        let (rows, k, n) = (2, MAX_K, 3);
        let a = vec![255u8; rows * k];
        let m = QuantizedMatrix::from_parts(n, k, vec![-127; n * k], vec![1.0; n]).unwrap();
        let packed = PackedWeights::new(&m).unwrap();
        let mut got = vec![0i32; rows * n];
        gemm_u8i8(&a, rows, k, &packed, &mut got, KernelKind::Portable).unwrap();
        assert!(got
            .iter()
            .all(|&v| i64::from(v) == -255 * 127 * MAX_K as i64));
    }

    #[test]
    fn portable_extremes() {
        check_extremes(KernelKind::Portable);
    }

    #[test]
    fn fused_dequant_matches_the_formula() {
        let mut rng = SplitMix64::new(11);
        for kernel in [
            KernelKind::Portable,
            KernelKind::Avx2,
            KernelKind::Avx512Vnni,
        ] {
            if !kernel_available(kernel) {
                continue;
            }
            let (rows, k, n) = (9, 70, 37);
            let (a, _, packed) = random_problem(&mut rng, rows, k, n);
            let a_scales: Vec<f32> = (0..rows).map(|_| rng.uniform(0.01, 1.0)).collect();
            let a_zps: Vec<u8> = (0..rows).map(|_| rng.u8()).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let mut acc = vec![0i32; rows * n];
            gemm_u8i8(&a, rows, k, &packed, &mut acc, kernel).unwrap();
            let mut y = vec![0f32; rows * n];
            gemm_dequant(
                &a,
                rows,
                k,
                &packed,
                &a_scales,
                &a_zps,
                Some(&bias),
                &mut y,
                kernel,
            )
            .unwrap();
            for t in 0..rows {
                for o in 0..n {
                    let d = acc[t * n + o] - i32::from(a_zps[t]) * packed.col_sums()[o];
                    let want = a_scales[t] * packed.scales()[o] * d as f32 + bias[o];
                    assert_eq!(y[t * n + o].to_bits(), want.to_bits(), "{kernel} {t} {o}");
                }
            }
        }
    }

    /// End to end against f32: quantize random weights and activations, run the fused GEMM and
    /// compare with an f64 matmul of the original values.
    ///
    /// Per element, with `x^ = x + ex`, `|ex| <= sa / 2` and `w^ = w + ew`, `|ew| <= sw / 2`, the
    /// quantized dot product differs from the exact one by
    /// `sum_k (x ew + w ex + ex ew)`, so `|err| <= sw/2 sum|x| + sa/2 sum|w| + k sa sw / 4`.
    /// That bound is asserted for every element (plus 1e-5 relative slack for the f32 epilogue).
    /// It is a worst case; on this Gaussian-like data the errors mostly cancel, so the relative
    /// Frobenius error is also asserted below 2% (expected ~0.5-1% for 8-bit ranges of ~6 sigma).
    #[test]
    fn gemm_dequant_close_to_f32_matmul() {
        let mut rng = SplitMix64::new(13);
        for &(rows, k, n) in &[(1, 1, 1), (8, 64, 17), (37, 312, 33), (3, 1200, 20)] {
            let x: Vec<f32> = (0..rows * k).map(|_| rng.normal() * 2.0 + 0.3).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.05).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.uniform(-0.5, 0.5)).collect();
            let qa = quantize_activations(&x, rows, k).unwrap();
            let qw = quantize_weights(&w, n, k).unwrap();
            let packed = PackedWeights::new(&qw).unwrap();
            for kernel in [
                KernelKind::Portable,
                KernelKind::Avx2,
                KernelKind::Avx512Vnni,
            ] {
                if !kernel_available(kernel) {
                    continue;
                }
                let mut y = vec![0f32; rows * n];
                gemm_dequant(
                    qa.q(),
                    rows,
                    k,
                    &packed,
                    qa.scales(),
                    qa.zero_points(),
                    Some(&bias),
                    &mut y,
                    kernel,
                )
                .unwrap();
                let (mut err2, mut ref2) = (0f64, 0f64);
                for t in 0..rows {
                    let xr = &x[t * k..(t + 1) * k];
                    let sa = f64::from(qa.scales()[t]);
                    for o in 0..n {
                        let wr = &w[o * k..(o + 1) * k];
                        let sw = f64::from(qw.scales()[o]);
                        let exact: f64 = xr
                            .iter()
                            .zip(wr)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>()
                            + f64::from(bias[o]);
                        let sx: f64 = xr.iter().map(|v| f64::from(v.abs())).sum();
                        let sw_abs: f64 = wr.iter().map(|v| f64::from(v.abs())).sum();
                        let bound = sw / 2.0 * sx + sa / 2.0 * sw_abs + k as f64 * sa * sw / 4.0;
                        let slack = 1e-5 * (exact.abs() + sx * sw_abs / k as f64 + 1e-3);
                        let got = f64::from(y[t * n + o]);
                        assert!(
                            (got - exact).abs() <= bound * 1.0001 + slack,
                            "{kernel} rows={rows} k={k} n={n} t={t} o={o}: {got} vs {exact}, bound {bound}"
                        );
                        err2 += (got - exact).powi(2);
                        ref2 += (exact - f64::from(bias[o])).powi(2);
                    }
                }
                let rel = (err2 / ref2).sqrt();
                assert!(rel < 0.02, "{kernel} rows={rows} k={k} n={n}: rel {rel}");
            }
        }
    }

    #[test]
    fn size_errors_say_expected_and_got() {
        let mut rng = SplitMix64::new(3);
        let (a, _, packed) = random_problem(&mut rng, 2, 10, 5);
        let mut out = vec![0i32; 10];
        let e = gemm_u8i8(&a, 2, 9, &packed, &mut out, KernelKind::Portable).unwrap_err();
        assert!(matches!(
            e,
            GemmError::ShapeMismatch {
                expected: 10,
                got: 9,
                ..
            }
        ));
        let e = gemm_u8i8(&a[..19], 2, 10, &packed, &mut out, KernelKind::Portable).unwrap_err();
        assert!(e.to_string().contains("expected 20, got 19"), "{e}");
        let e = gemm_u8i8(&a, 2, 10, &packed, &mut out[..9], KernelKind::Portable).unwrap_err();
        assert!(e.to_string().contains("output length"), "{e}");
        let e = gemm_u8i8(&a, usize::MAX, 10, &packed, &mut out, KernelKind::Portable);
        assert!(matches!(e, Err(GemmError::SizeOverflow { .. })));

        let mut y = vec![0f32; 10];
        let (s, z, b) = ([1.0f32; 2], [0u8; 2], [0f32; 5]);
        let call = |s: &[f32], z: &[u8], b: Option<&[f32]>, y: &mut [f32]| {
            gemm_dequant(&a, 2, 10, &packed, s, z, b, y, KernelKind::Portable)
        };
        assert!(call(&s, &z, Some(&b), &mut y).is_ok());
        for (e, what) in [
            (call(&s[..1], &z, None, &mut y), "activation scales"),
            (call(&s, &z[..1], None, &mut y), "activation zero points"),
            (call(&s, &z, Some(&b[..4]), &mut y), "bias"),
            (call(&s, &z, None, &mut y[..9]), "output length"),
        ] {
            assert!(e.unwrap_err().to_string().contains(what), "{what}");
        }
    }

    #[test]
    fn unavailable_kernels_are_errors() {
        let caps = crate::cpu::CpuCapabilities::detect();
        let mut rng = SplitMix64::new(5);
        let (a, _, packed) = random_problem(&mut rng, 3, 8, 4);
        for kernel in [
            KernelKind::Avx512Vnni,
            KernelKind::Avx2,
            KernelKind::Portable,
        ] {
            assert_eq!(kernel_available(kernel), caps.kernels.contains(&kernel));
            let mut out = vec![0i32; 12];
            let r = gemm_u8i8(&a, 3, 8, &packed, &mut out, kernel);
            if kernel_available(kernel) {
                r.unwrap();
            } else {
                assert_eq!(r.unwrap_err(), GemmError::KernelUnavailable { kernel });
            }
        }
    }

    #[test]
    fn empty_shapes() {
        for kernel in [
            KernelKind::Portable,
            KernelKind::Avx2,
            KernelKind::Avx512Vnni,
        ] {
            if !kernel_available(kernel) {
                continue;
            }
            // k = 0: sums are 0 and the dequantized output is the bias.
            let m = QuantizedMatrix::from_parts(17, 0, vec![], vec![1.0; 17]).unwrap();
            let p = PackedWeights::new(&m).unwrap();
            let mut out = vec![7i32; 2 * 17];
            gemm_u8i8(&[], 2, 0, &p, &mut out, kernel).unwrap();
            assert!(out.iter().all(|&v| v == 0));
            let bias: Vec<f32> = (0..17).map(|i| i as f32).collect();
            let mut y = vec![f32::NAN; 2 * 17];
            gemm_dequant(
                &[],
                2,
                0,
                &p,
                &[0.5; 2],
                &[3; 2],
                Some(&bias),
                &mut y,
                kernel,
            )
            .unwrap();
            assert_eq!(&y[17..], &bias[..]);
            // rows = 0 and n = 0.
            let (a, _, p) = random_problem(&mut SplitMix64::new(1), 0, 5, 3);
            gemm_u8i8(&a, 0, 5, &p, &mut [], kernel).unwrap();
            let (a, _, p) = random_problem(&mut SplitMix64::new(1), 4, 5, 0);
            gemm_u8i8(&a, 4, 5, &p, &mut [], kernel).unwrap();
        }
    }

    #[test]
    fn packed_weights_are_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<PackedWeights>();
    }

    /// Row ranges computed separately equal the whole: the split a threaded caller will use.
    #[test]
    fn row_splits_match_whole() {
        let mut rng = SplitMix64::new(17);
        let (rows, k, n) = (23, 65, 40);
        let (a, _, packed) = random_problem(&mut rng, rows, k, n);
        for kernel in [
            KernelKind::Portable,
            KernelKind::Avx2,
            KernelKind::Avx512Vnni,
        ] {
            if !kernel_available(kernel) {
                continue;
            }
            let mut whole = vec![0i32; rows * n];
            gemm_u8i8(&a, rows, k, &packed, &mut whole, kernel).unwrap();
            let mut parts = vec![0i32; rows * n];
            for (i, chunk) in parts.chunks_mut(6 * n).enumerate() {
                let r = chunk.len() / n;
                let a_part = &a[i * 6 * k..(i * 6 + r) * k];
                gemm_u8i8(a_part, r, k, &packed, chunk, kernel).unwrap();
            }
            assert_eq!(whole, parts, "{kernel}");
        }
    }

    #[test]
    fn selected_channels_are_the_same_columns() {
        let mut rng = SplitMix64::new(29);
        let (rows, k, n) = (9, 37, 53);
        let (a, m, packed) = random_problem(&mut rng, rows, k, n);
        // Out of order, repeated, across blocks, ending inside a block.
        let channels = [
            52, 0, 17, 16, 17, 31, 5, 48, 33, 1, 2, 3, 4, 6, 7, 8, 9, 40, 41,
        ];
        let picked = packed.select(&channels);
        assert_eq!((picked.n(), picked.k(), picked.num_blocks()), (19, k, 2));
        assert_eq!(picked, PackedWeights::new(&rows_of(&m, &channels)).unwrap());
        assert_eq!(packed.select(&[]).n(), 0);
        let scales: Vec<f32> = (0..rows).map(|i| 0.01 + i as f32 * 1e-3).collect();
        let zps: Vec<u8> = (0..rows).map(|i| (i * 29) as u8).collect();
        let bias: Vec<f32> = (0..n).map(|o| o as f32 * 0.1).collect();
        let picked_bias: Vec<f32> = channels.iter().map(|&o| bias[o]).collect();
        for kernel in KernelKind::ALL.into_iter().filter(|&k| kernel_available(k)) {
            let mut whole = vec![0f32; rows * n];
            gemm_dequant(
                &a,
                rows,
                k,
                &packed,
                &scales,
                &zps,
                Some(&bias),
                &mut whole,
                kernel,
            )
            .unwrap();
            let mut part = vec![0f32; rows * channels.len()];
            gemm_dequant(
                &a,
                rows,
                k,
                &picked,
                &scales,
                &zps,
                Some(&picked_bias),
                &mut part,
                kernel,
            )
            .unwrap();
            for t in 0..rows {
                for (i, &o) in channels.iter().enumerate() {
                    assert_eq!(
                        part[t * channels.len() + i].to_bits(),
                        whole[t * n + o].to_bits(),
                        "{kernel} row {t} channel {o}"
                    );
                }
            }
        }
    }

    /// The rows `channels` of `m`, as a matrix of their own.
    fn rows_of(m: &QuantizedMatrix, channels: &[usize]) -> QuantizedMatrix {
        let data = channels.iter().flat_map(|&o| m.row(o).to_vec()).collect();
        let scales = channels.iter().map(|&o| m.scales()[o]).collect();
        QuantizedMatrix::from_parts(channels.len(), m.cols_in(), data, scales).unwrap()
    }
}
