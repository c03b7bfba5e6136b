//! The f32 element-wise pieces of the forward pass: LayerNorm, GELU, softmax and the normalized
//! entropy used for early exit. Each works on one row and depends on nothing else, so results never
//! depend on the batch around a row.

#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2, Avx512, F32Lanes};
use super::vmath;
use crate::config::Activation;
use crate::cpu::{Isa, KernelKind};

/// `x[r] = LayerNorm(x[r] + y[r]) * weight + bias` for every row `r` of `x` (rows of
/// `weight.len()` values; `y` is the residual branch's output, same shape).
pub fn add_layer_norm(isa: Isa, x: &mut [f32], y: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    norm_rows_at(isa, x, Some(y), weight, bias, eps);
}

/// LayerNorm of every row of `x` (rows of `weight.len()` values) in place:
/// `(x - mean) / sqrt(var + eps) * weight + bias` with the biased variance (two passes), as
/// `torch.nn.LayerNorm`. Sums are taken over eight interleaved partial sums, so the loops
/// vectorize; every level gives the same bits (the AVX2 build is the same source, and nothing is
/// fused).
pub fn layer_norm(isa: Isa, x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    norm_rows_at(isa, x, None, weight, bias, eps);
}

fn norm_rows_at(
    isa: Isa,
    x: &mut [f32],
    y: Option<&[f32]>,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) {
    match isa.kind() {
        // SAFETY: `isa` proves the CPU has AVX2 (both levels include it).
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 | KernelKind::Avx512Vnni => unsafe {
            norm_rows_avx2(x, y, weight, bias, eps)
        },
        _ => norm_rows(x, y, weight, bias, eps),
    }
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn norm_rows_avx2(x: &mut [f32], y: Option<&[f32]>, weight: &[f32], bias: &[f32], eps: f32) {
    norm_rows(x, y, weight, bias, eps);
}

#[inline(always)]
fn norm_rows(x: &mut [f32], y: Option<&[f32]>, weight: &[f32], bias: &[f32], eps: f32) {
    let width = weight.len();
    if width == 0 {
        return;
    }
    match y {
        Some(y) => {
            for (xr, yr) in x.chunks_exact_mut(width).zip(y.chunks_exact(width)) {
                for (a, &b) in xr.iter_mut().zip(yr) {
                    *a += b;
                }
                norm_row(xr, weight, bias, eps);
            }
        }
        None => {
            for xr in x.chunks_exact_mut(width) {
                norm_row(xr, weight, bias, eps);
            }
        }
    }
}

#[inline(always)]
fn norm_row(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, &w), &b) in x.iter_mut().zip(weight).zip(bias) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// `sum f(x[i])`: eight partial sums over `x[l], x[l + 8], ...`, added in order, then the tail.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const L: usize = 8;
    let mut lanes = [0f32; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for l in 0..L {
            lanes[l] += f(c[l]);
        }
    }
    chunks
        .remainder()
        .iter()
        .fold(lanes.iter().sum(), |s, &v| s + f(v))
}

/// The feed-forward activation, in place. Every level gives the same bits: `gelu` is
/// [`vmath::gelu::<true>`] (with fused multiply-adds) at each (see [`vmath`] for the portable
/// level's cost), `gelu_new` the same scalar code.
pub fn activation(isa: Isa, x: &mut [f32], act: Activation) {
    match act {
        Activation::Gelu => match isa.kind() {
            // SAFETY: `isa` proves the CPU has AVX-512F, which `gelu_in_place_avx512` needs.
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512Vnni => unsafe { gelu_in_place_avx512(x) },
            // SAFETY: `isa` proves the CPU has AVX2 and FMA, which `gelu_in_place_avx2` needs.
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => unsafe { gelu_in_place_avx2(x) },
            _ => {
                for v in x {
                    *v = vmath::gelu::<true>(*v);
                }
            }
        },
        Activation::GeluNew => {
            for v in x {
                *v = gelu_tanh(*v);
            }
        }
    }
}

/// [`vmath::gelu`] (with fused multiply-adds) in place, eight values at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_in_place_avx2(x: &mut [f32]) {
    // SAFETY: AVX2 and FMA are enabled, as `Avx2` requires.
    unsafe { gelu_in_place_lanes::<Avx2>(x) }
}

/// [`vmath::gelu`] (with fused multiply-adds) in place, sixteen values at a time.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_in_place_avx512(x: &mut [f32]) {
    // SAFETY: AVX-512F is enabled, as `Avx512` requires.
    unsafe { gelu_in_place_lanes::<Avx512>(x) }
}

/// Whole vectors of `L::LANES` values, then the scalar twin (the same bits) for the rest.
///
/// # Safety
/// The CPU must have `L`'s features, and this must be inlined into a function compiled with them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gelu_in_place_lanes<L: F32Lanes>(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(L::LANES);
    for c in &mut chunks {
        // SAFETY: `L`'s features are enabled (caller); `c` holds one vector.
        unsafe { L::store(c.as_mut_ptr(), L::gelu(L::load(c.as_ptr()))) };
    }
    for v in chunks.into_remainder() {
        *v = vmath::gelu::<true>(*v);
    }
}

/// `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))`, the `gelu_new` form.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * (x * x * x))).tanh())
}

/// [`vmath::tanh`] in place; every level gives the same bits.
pub fn tanh_in_place(isa: Isa, x: &mut [f32]) {
    match isa.kind() {
        // SAFETY: `isa` proves the CPU has AVX-512F, which `tanh_in_place_avx512` needs.
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => unsafe { tanh_in_place_avx512(x) },
        // SAFETY: `isa` proves the CPU has AVX2 and FMA, which `tanh_in_place_avx2` needs.
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 => unsafe { tanh_in_place_avx2(x) },
        _ => {
            for v in x {
                *v = vmath::tanh(*v);
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_in_place_avx2(x: &mut [f32]) {
    // SAFETY: AVX2 and FMA are enabled, as `Avx2` requires.
    unsafe { tanh_in_place_lanes::<Avx2>(x) }
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tanh_in_place_avx512(x: &mut [f32]) {
    // SAFETY: AVX-512F is enabled, as `Avx512` requires.
    unsafe { tanh_in_place_lanes::<Avx512>(x) }
}

/// Whole vectors of `L::LANES` values, then the scalar twin (the same bits) for the rest.
///
/// # Safety
/// The CPU must have `L`'s features, and this must be inlined into a function compiled with them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tanh_in_place_lanes<L: F32Lanes>(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(L::LANES);
    for c in &mut chunks {
        // SAFETY: `L`'s features are enabled (caller); `c` holds one vector.
        unsafe { L::store(c.as_mut_ptr(), L::tanh(L::load(c.as_ptr()))) };
    }
    for v in chunks.into_remainder() {
        *v = vmath::tanh(*v);
    }
}

/// Softmax in place with max subtraction: `e = exp(x - max)`, `x = e / sum(e)`.
#[inline]
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `entropy(softmax(logits)) / ln(C)`, in `[0, 1]`, computed in f64 from the log-softmax (so
/// probabilities that underflow contribute exactly 0). Non-finite logits give NaN, which never
/// exits.
pub fn uncertainty(logits: &[f32]) -> f64 {
    let c = logits.len();
    if c < 2 {
        return 0.0;
    }
    if logits.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let sum: f64 = logits.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    let lse = sum.ln();
    let mut h = 0f64;
    for &v in logits {
        let logp = f64::from(v) - max - lse;
        let p = logp.exp();
        if p > 0.0 {
            h -= p * logp;
        }
    }
    (h / (c as f64).ln()).clamp(0.0, 1.0)
}

/// Index of the largest value (the first on ties; NaN never wins).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || (x[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::SplitMix64;

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn layer_norm_matches_definition() {
        for isa in Isa::available() {
            layer_norm_matches_definition_at(isa);
        }
    }

    fn layer_norm_matches_definition_at(isa: Isa) {
        let mut x = [1.0f32, 2.0, 3.0, 6.0];
        layer_norm(isa, &mut x, &[1.0; 4], &[0.5; 4], 1e-12);
        let mean = 3.0f64;
        let var: f64 = (4.0 + 1.0 + 0.0 + 9.0) / 4.0;
        for (i, v) in [1.0f64, 2.0, 3.0, 6.0].iter().enumerate() {
            let want = (v - mean) / var.sqrt() + 0.5;
            assert!((f64::from(x[i]) - want).abs() < 1e-6, "{i}");
        }
        // A constant row normalizes to the bias (eps keeps it finite).
        let mut c = [7.0f32; 3];
        layer_norm(isa, &mut c, &[2.0; 3], &[0.25; 3], 1e-12);
        assert_eq!(c, [0.25; 3]);
    }

    /// LayerNorm (with and without the residual add) gives the portable bits at every level this
    /// CPU runs, on widths below, at and above the eight partial sums, row by row.
    #[test]
    fn layer_norm_is_bit_identical_across_levels() {
        let mut rng = SplitMix64::new(31);
        for width in [1, 7, 8, 9, 64, 312, 1200] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * width)
                .map(|_| rng.normal() * 3.0 + 1.0)
                .collect();
            let y: Vec<f32> = (0..rows * width).map(|_| rng.normal()).collect();
            let w: Vec<f32> = (0..width).map(|_| rng.uniform(0.5, 1.5)).collect();
            let b: Vec<f32> = (0..width).map(|_| rng.uniform(-0.2, 0.2)).collect();
            let run = |isa, residual: bool| {
                let mut out = x.clone();
                if residual {
                    add_layer_norm(isa, &mut out, &y, &w, &b, 1e-12);
                } else {
                    layer_norm(isa, &mut out, &w, &b, 1e-12);
                }
                out
            };
            for residual in [false, true] {
                let want = run(Isa::PORTABLE, residual);
                for isa in Isa::available() {
                    assert_eq!(
                        bits(&run(isa, residual)),
                        bits(&want),
                        "{isa}, width {width}, residual {residual}"
                    );
                }
                // Rows are independent: the last row alone gives the same bits.
                let mut last = x[(rows - 1) * width..].to_vec();
                if residual {
                    add_layer_norm(
                        Isa::best(),
                        &mut last,
                        &y[(rows - 1) * width..],
                        &w,
                        &b,
                        1e-12,
                    );
                } else {
                    layer_norm(Isa::best(), &mut last, &w, &b, 1e-12);
                }
                assert_eq!(bits(&last), bits(&want[(rows - 1) * width..]));
            }
        }
    }

    /// GELU gives `gelu::<true>`'s bits at every level; lengths cover whole vectors and scalar
    /// tails.
    #[test]
    fn gelu_levels_give_their_scalar_twins_bits() {
        let mut rng = SplitMix64::new(37);
        for len in [1, 7, 8, 15, 16, 17, 33, 1200] {
            let mut x: Vec<f32> = (0..len).map(|_| rng.normal() * 4.0).collect();
            x[0] = if len > 1 { -0.0 } else { 3.5 };
            let want: Vec<f32> = x.iter().map(|&v| vmath::gelu::<true>(v)).collect();
            for isa in Isa::available() {
                let mut got = x.clone();
                activation(isa, &mut got, Activation::Gelu);
                assert_eq!(bits(&got), bits(&want), "{isa}, len {len}");
            }
            // gelu_new is the same scalar code at every level.
            let mut want = x.clone();
            activation(Isa::PORTABLE, &mut want, Activation::GeluNew);
            for isa in Isa::available() {
                let mut got = x.clone();
                activation(isa, &mut got, Activation::GeluNew);
                assert_eq!(bits(&got), bits(&want), "gelu_new {isa}");
            }
        }
    }

    /// tanh gives `vmath::tanh`'s bits at every level, saturated values included.
    #[test]
    fn tanh_levels_give_their_scalar_twins_bits() {
        let mut rng = SplitMix64::new(41);
        for len in [1, 7, 8, 15, 16, 17, 33, 1280] {
            let mut x: Vec<f32> = (0..len).map(|_| rng.normal() * 3.0).collect();
            x[0] = if len > 1 { -0.0 } else { 12.0 };
            let want: Vec<f32> = x.iter().map(|&v| vmath::tanh(v)).collect();
            for isa in Isa::available() {
                let mut got = x.clone();
                tanh_in_place(isa, &mut got);
                assert_eq!(bits(&got), bits(&want), "{isa}, len {len}");
            }
        }
    }

    #[test]
    fn softmax_and_uncertainty() {
        let mut p = [1.0f32, 2.0, 3.0];
        softmax(&mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
        let mut big = [1000.0f32, 0.0];
        softmax(&mut big);
        assert_eq!(big, [1.0, 0.0]);
        assert!((uncertainty(&[0.0, 0.0, 0.0]) - 1.0).abs() < 1e-12);
        assert_eq!(uncertainty(&[1000.0, 0.0]), 0.0);
        let u = uncertainty(&[1.0, 0.0]);
        assert!(u > 0.0 && u < 1.0);
        assert!(uncertainty(&[f32::NAN, 0.0]).is_nan());
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }
}
