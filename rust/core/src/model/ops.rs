//! The f32 element-wise pieces of the forward pass: LayerNorm, GELU, softmax and the normalized
//! entropy used for early exit. Each works on one row and depends on nothing else, so results never
//! depend on the batch around a row.

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
/// variance, as `torch.nn.LayerNorm`. Mean and variance are accumulated in f64 (the row is f32 in and
/// out), which keeps them accurate to the last f32 bit whatever the width.
#[inline(never)]
pub fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| {
            let d = f64::from(v) - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    let inv = 1.0 / (var + f64::from(eps)).sqrt();
    for ((v, &w), &b) in x.iter_mut().zip(weight).zip(bias) {
        let normed = ((f64::from(*v) - mean) * inv) as f32;
        *v = normed * w + b;
    }
}

/// The feed-forward activation, in place.
pub fn activation(x: &mut [f32], act: Activation) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, the only feature `activation_avx2` is compiled for.
        unsafe { activation_avx2(x, act) };
        return;
    }
    activation_generic(x, act);
}

/// The same code compiled for 256-bit vectors: element-wise, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn activation_avx2(x: &mut [f32], act: Activation) {
    activation_generic(x, act);
}

#[inline(always)]
fn activation_generic(x: &mut [f32], act: Activation) {
    match act {
        Activation::Gelu => {
            for v in x {
                *v = gelu_erf(*v);
            }
        }
        Activation::GeluNew => {
            for v in x {
                *v = gelu_tanh(*v);
            }
        }
    }
}

/// `x * 0.5 * (1 + erf(x / sqrt(2)))`, BERT's GELU.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    x * 0.5 * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// The error function of an f32, as `x P(x^2) / Q(x^2)` with degree-5 polynomials, evaluated in f64
/// on `|x| <= 4` (where `|1 - erf(4)| < 2e-8`) and clamped to `[-1, 1]`. The coefficients are a
/// near-minimax fit made for tinyfast (absolute error 2.2e-8 in exact arithmetic); the result
/// rounded to f32 is within 5.2e-8 of the true value, i.e. within one f32 step, for every input.
/// Branch-free and element-wise, so loops over it vectorize and round identically at any width;
/// several times faster than a scalar `erff`.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: [f64; 6] = [
        1.128_378_979_118_934_5,
        0.196_218_555_751_439_62,
        0.053_462_782_354_138_51,
        0.004_002_093_390_864_794,
        0.000_287_964_596_556_281_1,
        1.974_557_828_733_866_4e-6,
    ];
    const Q: [f64; 6] = [
        1.0,
        0.507_225_351_400_653_7,
        0.116_463_211_712_076_09,
        0.015_441_434_891_886_952,
        0.001_215_899_880_191_582_5,
        3.747_392_347_703_199e-5,
    ];
    let x = f64::from(x).clamp(-4.0, 4.0);
    let t = x * x;
    let p = ((((P[5] * t + P[4]) * t + P[3]) * t + P[2]) * t + P[1]) * t + P[0];
    let q = ((((Q[5] * t + Q[4]) * t + Q[3]) * t + Q[2]) * t + Q[1]) * t + Q[0];
    (x * (p / q)).clamp(-1.0, 1.0) as f32
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

/// `softmax(scale * x)` in place for attention rows, as `exp((x - max) * scale) / sum` with
/// [`exp_fast`] (`scale > 0`). Within a few f32 steps of [`softmax`]; NaN anywhere makes the row
/// NaN.
pub fn softmax_scaled(x: &mut [f32], scale: f32) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = exp_fast((*v - max) * scale);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`softmax_scaled`] with AVX2, eight values at a time ([`exp_fast_avx2`] gives the same bits
/// as [`exp_fast`]; max and sum are taken over eight interleaved partial results).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn softmax_scaled_avx2(x: &mut [f32], scale: f32) {
    use std::arch::x86_64::*;
    const L: usize = 8;
    let body = x.len() / L * L;
    let ptr = x.as_mut_ptr();
    // SAFETY (all blocks): AVX2 is enabled; vector accesses cover `0..body` in steps of 8.
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..body).step_by(L) {
        vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(ptr.add(i)) });
    }
    let mut lanes = [0f32; L];
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vmax) };
    let max = lanes
        .iter()
        .chain(&x[body..])
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let (vm, vs) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
    let mut vsum = _mm256_setzero_ps();
    for i in (0..body).step_by(L) {
        unsafe {
            let e = exp_fast_avx2(_mm256_mul_ps(
                _mm256_sub_ps(_mm256_loadu_ps(ptr.add(i)), vm),
                vs,
            ));
            _mm256_storeu_ps(ptr.add(i), e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vsum) };
    let mut sum = lanes.iter().sum::<f32>();
    for v in &mut x[body..] {
        *v = exp_fast((*v - max) * scale);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`exp_fast`] of eight values: the same operations in the same order, so the same bits.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn exp_fast_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = _mm256_set1_ps;
    // max/min return their second operand when either is NaN: NaN passes through.
    let x = _mm256_min_ps(c(EXP_HI), _mm256_max_ps(c(EXP_LO), x));
    let n = _mm256_floor_ps(_mm256_add_ps(
        _mm256_mul_ps(x, c(std::f32::consts::LOG2_E)),
        c(0.5),
    ));
    let r = _mm256_sub_ps(
        _mm256_sub_ps(x, _mm256_mul_ps(n, c(LN2_HI))),
        _mm256_mul_ps(n, c(LN2_LO)),
    );
    let z = _mm256_mul_ps(r, r);
    let mut p = c(EXP_POLY[0]);
    for &coef in &EXP_POLY[1..] {
        p = _mm256_add_ps(_mm256_mul_ps(p, r), c(coef));
    }
    let p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, z), r), c(1.0));
    let n_int = _mm256_sub_epi32(
        _mm256_castps_si256(_mm256_add_ps(n, c(SHIFTER))),
        _mm256_set1_epi32(SHIFTER.to_bits() as i32),
    );
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(n_int, _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
}

/// The range of [`exp_fast`]'s argument (clamped outside it).
const EXP_LO: f32 = -87.3;
const EXP_HI: f32 = 88.0;
/// ln 2 split in two so that `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding 1.5 * 2^23 puts a small integer-valued f32 in the low mantissa bits.
const SHIFTER: f32 = 12_582_912.0;
/// Cephes' polynomial for `(e^r - 1 - r) / r^2`, highest degree first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` within 2 f32 steps (relative error below 2.4e-7) for `-87.3 <= x <= 88`, branch-free so
/// that loops over it vectorize (Cephes' `expf`: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a
/// degree-6 polynomial for `e^r`, and `2^n` built in the exponent bits). Below the range the
/// result is `e^-87.3` (about 1.2e-38) rather than a subnormal or 0, above it `e^88`; NaN stays
/// NaN.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let z = r * r;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
    let p = p * z + r + 1.0;
    let n_int = (n + SHIFTER).to_bits().wrapping_sub(SHIFTER.to_bits());
    p * f32::from_bits(n_int.wrapping_add(127) << 23)
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
    fn erf_is_within_one_f32_step() {
        // Against libm's erff (itself within an ulp) on a dense grid, and at the edges.
        let mut worst = 0f64;
        for i in -600_000..=600_000 {
            let x = i as f32 * 1e-5;
            let d = (f64::from(erf(x)) - f64::from(libm::erff(x))).abs();
            worst = worst.max(d);
        }
        assert!(worst <= 1.2e-7, "max |erf - erff| = {worst}");
        for x in [0.0f32, 1e-30, -1e-30, 1e-6, 4.0, 5.0, 1e30, f32::INFINITY] {
            let want = libm::erff(x);
            assert!((erf(x) - want).abs() <= 1.2e-7, "{x}: {} vs {want}", erf(x));
            assert_eq!(erf(-x), -erf(x));
        }
        assert!(erf(f32::NAN).is_nan());
        // Small arguments keep their relative accuracy.
        let x = 1e-20f32;
        assert!(((erf(x) / x) as f64 - 2.0 / std::f64::consts::PI.sqrt()).abs() < 3e-7);
    }

    #[test]
    fn gelu_values() {
        assert_eq!(gelu_erf(0.0), 0.0);
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_erf(-1.0) + 0.158_655_3).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_erf(10.0) - 10.0).abs() < 1e-6);
    }

    #[test]
    fn exp_fast_is_within_two_f32_steps() {
        let mut worst = 0f64;
        for i in -873_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = f64::from(x).exp();
            let rel = (f64::from(exp_fast(x)) - want).abs() / want;
            worst = worst.max(rel);
        }
        assert!(worst < 2.4e-7, "max relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(-1000.0) > 0.0 && exp_fast(-1000.0) < 1.3e-38);
        assert!(exp_fast(f32::NEG_INFINITY) < 1.3e-38);
        assert!(exp_fast(1000.0).is_finite());
        assert!(exp_fast(f32::NAN).is_nan());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_fast_avx2_gives_the_same_bits() {
        use std::arch::x86_64::*;
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -87.3,
            88.0,
            0.0,
            -0.0,
        ];
        let grid = (-900_000..=900_000).map(|i| i as f32 * 1e-4);
        let xs: Vec<f32> = special.into_iter().chain(grid).collect();
        for chunk in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: the CPU supports AVX2; both pointers hold 8 values.
            unsafe {
                let v = exp_fast_avx2(_mm256_loadu_ps(chunk.as_ptr()));
                _mm256_storeu_ps(got.as_mut_ptr(), v);
            }
            for (&x, g) in chunk.iter().zip(got) {
                assert_eq!(g.to_bits(), exp_fast(x).to_bits(), "exp({x})");
            }
        }
    }

    #[test]
    fn softmax_scaled_matches_softmax() {
        let mut seed = 7u64;
        for n in [1usize, 2, 7, 8, 9, 31, 128, 513] {
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
                })
                .collect();
            let scale = 0.3;
            let mut a: Vec<f32> = row.iter().map(|v| v * scale).collect();
            let mut b = row.clone();
            softmax(&mut a);
            softmax_scaled(&mut b, scale);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 2e-6 * x.max(1e-30) + 1e-12,
                    "{n}: {x} vs {y}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut c = row.clone();
                // SAFETY: the CPU supports AVX2.
                unsafe { softmax_scaled_avx2(&mut c, scale) };
                for (x, y) in a.iter().zip(&c) {
                    assert!(
                        (x - y).abs() <= 2e-6 * x.max(1e-30) + 1e-12,
                        "{n}: {x} vs {y}"
                    );
                }
            }
        }
        let mut nan = [0.0, f32::NAN, 1.0];
        softmax_scaled(&mut nan, 1.0);
        assert!(nan.iter().all(|v| v.is_nan()));
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
