//! The f32 element-wise pieces of the forward pass: LayerNorm, GELU, softmax and the normalized
//! entropy used for early exit. Each works on one row and depends on nothing else, so results never
//! depend on the batch around a row.

#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2, Avx512, F32Lanes};
use super::vmath;
use crate::config::Activation;

/// `x = LayerNorm(x + y) * weight + bias` over one row (`y` is the residual branch's output).
#[inline]
pub fn add_layer_norm(x: &mut [f32], y: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
    layer_norm(x, weight, bias, eps);
}

/// LayerNorm of one row in place: `(x - mean) / sqrt(var + eps) * weight + bias` with the biased
/// variance (two passes), as `torch.nn.LayerNorm`. Sums are taken over eight interleaved partial
/// sums, so the loops vectorize; the AVX2 build gives the same bits.
pub fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, the only feature `layer_norm_avx2` is compiled for.
        unsafe { layer_norm_avx2(x, weight, bias, eps) };
        return;
    }
    layer_norm_generic(x, weight, bias, eps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn layer_norm_avx2(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    layer_norm_generic(x, weight, bias, eps);
}

#[inline(always)]
fn layer_norm_generic(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
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

/// The feed-forward activation, in place.
pub fn activation(x: &mut [f32], act: Activation) {
    match act {
        Activation::Gelu => {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, the only feature `gelu_in_place_avx512` needs.
                unsafe { gelu_in_place_avx512(x) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports AVX2 and FMA, the features `gelu_in_place_avx2` needs.
                unsafe { gelu_in_place_avx2(x) };
                return;
            }
            for v in x {
                *v = vmath::gelu::<false>(*v);
            }
        }
        Activation::GeluNew => {
            for v in x {
                *v = gelu_tanh(*v);
            }
        }
    }
}

/// [`vmath::gelu`] (with fused multiply-adds) in place, eight values at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_in_place_avx2(x: &mut [f32]) {
    // SAFETY: AVX2 and FMA are enabled, as `Avx2` requires.
    unsafe { gelu_in_place_lanes::<Avx2>(x) }
}

/// [`vmath::gelu`] (with fused multiply-adds) in place, sixteen values at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu_in_place_avx512(x: &mut [f32]) {
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

/// `tanh` in place.
#[inline(never)]
pub fn tanh_in_place(x: &mut [f32]) {
    for v in x {
        *v = v.tanh();
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

    #[test]
    fn layer_norm_matches_definition() {
        let mut x = [1.0f32, 2.0, 3.0, 6.0];
        layer_norm(&mut x, &[1.0; 4], &[0.5; 4], 1e-12);
        let mean = 3.0f64;
        let var: f64 = (4.0 + 1.0 + 0.0 + 9.0) / 4.0;
        for (i, v) in [1.0f64, 2.0, 3.0, 6.0].iter().enumerate() {
            let want = (v - mean) / var.sqrt() + 0.5;
            assert!((f64::from(x[i]) - want).abs() < 1e-6, "{i}");
        }
        // A constant row normalizes to the bias (eps keeps it finite).
        let mut c = [7.0f32; 3];
        layer_norm(&mut c, &[2.0; 3], &[0.25; 3], 1e-12);
        assert_eq!(c, [0.25; 3]);
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
