//! Branch-free f32 math for the forward pass's hot loops: `exp2` (attention softmax), `erf`
//! (GELU) and `tanh` (exit branches and the pooler, built on `exp2`), each as a scalar function and AVX2 / AVX-512 functions that perform the same
//! operations in the same order, so that every version gives the same bits and a vectorized loop
//! may finish its tail with the scalar one. The polynomials' steps are fused multiply-adds when
//! the scalar functions' `FMA` parameter says so; the vector versions always use them (they equal
//! the `::<true>` scalar versions), and so does the runtime's portable level, so that every level
//! gives the same bits. That has a price on x86_64's baseline target, where `f32::mul_add` is a
//! call to the C library's `fmaf` (with hardware FMA behind it when the CPU has one; a software
//! one otherwise): the portable level is a fallback, and results that do not depend on the level
//! are worth more there than its speed. On targets with fused multiply-add in their baseline
//! (aarch64) it is one instruction. `::<false>` is kept to measure the approximations without
//! fusing.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The range of [`exp2`]'s argument (clamped outside it): `2^n` stays a normal f32.
const EXP2_LO: f32 = -126.0;
const EXP2_HI: f32 = 127.0;
/// Adding and subtracting 1.5 * 2^23 rounds a small f32 to the nearest integer (ties to even).
const SHIFTER: f32 = 12_582_912.0;
/// Taylor coefficients of `2^f = e^(f ln 2)`, `(ln 2)^k / k!`, from `k = 6` down to 1 (the
/// truncation error on `|f| <= 1/2` is below 1.2e-7).
#[allow(clippy::excessive_precision)]
const EXP2_POLY: [f32; 6] = [
    1.540_353_0e-4,
    1.333_355_8e-3,
    9.618_129_1e-3,
    5.550_410_9e-2,
    2.402_265_1e-1,
    std::f32::consts::LN_2,
];

/// `a * b + c`, with one rounding when `FMA` (see the module docs for what it costs where the
/// target has no `fma` feature).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `2^t` within 3.5e-7 relative error for `-126 <= t <= 127` (clamped outside; NaN stays NaN):
/// `t = n + f` with `n` the nearest integer, a polynomial for `2^f`, `2^n` built in the exponent
/// bits. [`exp2_avx2`] and [`exp2_avx512`] give `exp2::<true>`'s bits.
#[inline(always)]
pub fn exp2<const FMA: bool>(t: f32) -> f32 {
    // Comparisons rather than `clamp`: NaN passes through, as in the vector versions.
    let t = if t < EXP2_LO { EXP2_LO } else { t };
    let t = if t > EXP2_HI { EXP2_HI } else { t };
    let n = (t + SHIFTER) - SHIFTER;
    let f = t - n;
    let p = EXP2_POLY[1..]
        .iter()
        .fold(EXP2_POLY[0], |p, &c| madd::<FMA>(p, f, c));
    let p = madd::<FMA>(p, f, 1.0);
    // `n` is an integer in -126..=127 (NaN converts to 0 and leaves `p` NaN).
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// [`exp2`] (with fused multiply-adds) of eight values, with the same bits.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn exp2_avx2(t: __m256) -> __m256 {
    let c = _mm256_set1_ps;
    // max/min return their second operand when either is NaN: NaN passes through.
    let t = _mm256_min_ps(c(EXP2_HI), _mm256_max_ps(c(EXP2_LO), t));
    let n = _mm256_sub_ps(_mm256_add_ps(t, c(SHIFTER)), c(SHIFTER));
    let f = _mm256_sub_ps(t, n);
    let mut p = c(EXP2_POLY[0]);
    for &coef in &EXP2_POLY[1..] {
        p = _mm256_fmadd_ps(p, f, c(coef));
    }
    let p = _mm256_fmadd_ps(p, f, c(1.0));
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvttps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
}

/// [`exp2`] (with fused multiply-adds) of sixteen values, with the same bits (`scalef` by the
/// integer `n` rounds `p * 2^n` once, as the multiply does).
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn exp2_avx512(t: __m512) -> __m512 {
    let c = _mm512_set1_ps;
    let t = _mm512_min_ps(c(EXP2_HI), _mm512_max_ps(c(EXP2_LO), t));
    let n = _mm512_sub_ps(_mm512_add_ps(t, c(SHIFTER)), c(SHIFTER));
    let f = _mm512_sub_ps(t, n);
    let mut p = c(EXP2_POLY[0]);
    for &coef in &EXP2_POLY[1..] {
        p = _mm512_fmadd_ps(p, f, c(coef));
    }
    _mm512_scalef_ps(_mm512_fmadd_ps(p, f, c(1.0)), n)
}

/// Numerator and denominator of `erf(x) = x P(x^2) / Q(x^2)` on `|x| <= 4`, highest degree
/// first: a near-minimax fit made for tinyfast (absolute error 2.2e-8 in exact arithmetic). The
/// constant term is fitted, not 2 / sqrt(pi).
#[allow(clippy::approx_constant)]
const ERF_P: [f32; 6] = [
    1.974_557_8e-6,
    2.879_646e-4,
    4.002_093_4e-3,
    5.346_278_3e-2,
    1.962_185_6e-1,
    1.128_379,
];
const ERF_Q: [f32; 6] = [
    3.747_392_3e-5,
    1.215_9e-3,
    1.544_143_5e-2,
    1.164_632_1e-1,
    5.072_253_5e-1,
    1.0,
];

/// The error function: [`ERF_P`] / [`ERF_Q`] evaluated in f32 on `x` clamped to `[-4, 4]`
/// (`1 - erf(4) < 2e-8`), the result clamped to `[-1, 1]`. Within 4e-7 of the true value for
/// every input; NaN stays NaN. [`erf_avx2`] gives `erf::<true>`'s bits.
#[inline(always)]
pub fn erf<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let t = x * x;
    let p = ERF_P[1..]
        .iter()
        .fold(ERF_P[0], |p, &c| madd::<FMA>(p, t, c));
    let q = ERF_Q[1..]
        .iter()
        .fold(ERF_Q[0], |q, &c| madd::<FMA>(q, t, c));
    (x * (p / q)).clamp(-1.0, 1.0)
}

/// [`erf`] (with fused multiply-adds) of eight values, with the same bits.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn erf_avx2(x: __m256) -> __m256 {
    let c = _mm256_set1_ps;
    let clamp = |v, lo, hi| _mm256_min_ps(c(hi), _mm256_max_ps(c(lo), v));
    let x = clamp(x, -4.0, 4.0);
    let t = _mm256_mul_ps(x, x);
    let (mut p, mut q) = (c(ERF_P[0]), c(ERF_Q[0]));
    for (&a, &b) in ERF_P[1..].iter().zip(&ERF_Q[1..]) {
        p = _mm256_fmadd_ps(p, t, c(a));
        q = _mm256_fmadd_ps(q, t, c(b));
    }
    clamp(_mm256_mul_ps(x, _mm256_div_ps(p, q)), -1.0, 1.0)
}

/// BERT's GELU, `x / 2 * (1 + erf(x / sqrt 2))`, with [`erf`]; [`gelu_avx2`] and
/// [`gelu_avx512`] give `gelu::<true>`'s bits.
#[inline(always)]
pub fn gelu<const FMA: bool>(x: f32) -> f32 {
    x * 0.5 * (1.0 + erf::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// [`gelu`] (with fused multiply-adds) of eight values, with the same bits.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn gelu_avx2(x: __m256) -> __m256 {
    let c = _mm256_set1_ps;
    let e = erf_avx2(_mm256_mul_ps(x, c(std::f32::consts::FRAC_1_SQRT_2)));
    _mm256_mul_ps(_mm256_mul_ps(x, c(0.5)), _mm256_add_ps(c(1.0), e))
}

/// [`gelu`] (with fused multiply-adds) of sixteen values, with the same bits.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn gelu_avx512(x: __m512) -> __m512 {
    let c = _mm512_set1_ps;
    let clamp = |v, lo, hi| _mm512_min_ps(c(hi), _mm512_max_ps(c(lo), v));
    let y = clamp(
        _mm512_mul_ps(x, c(std::f32::consts::FRAC_1_SQRT_2)),
        -4.0,
        4.0,
    );
    let t = _mm512_mul_ps(y, y);
    let (mut p, mut q) = (c(ERF_P[0]), c(ERF_Q[0]));
    for (&a, &b) in ERF_P[1..].iter().zip(&ERF_Q[1..]) {
        p = _mm512_fmadd_ps(p, t, c(a));
        q = _mm512_fmadd_ps(q, t, c(b));
    }
    let e = clamp(_mm512_mul_ps(y, _mm512_div_ps(p, q)), -1.0, 1.0);
    _mm512_mul_ps(_mm512_mul_ps(x, c(0.5)), _mm512_add_ps(c(1.0), e))
}

/// `tanh` saturates to +-1 in f32 beyond this (`1 - tanh(9) < 3e-8`).
pub(crate) const TANH_CLAMP: f32 = 9.0;
/// `2 / ln 2`: `e^(2x) = 2^(x * TANH_EXP2)`.
pub(crate) const TANH_EXP2: f32 = 2.0 * std::f32::consts::LOG2_E;

/// `tanh(x) = (e^(2x) - 1) / (e^(2x) + 1)` with [`exp2`] on `x` clamped to `[-9, 9]`: within
/// 4e-7 of the true value (absolute; the subtraction loses relative accuracy near 0, where the
/// result is small). The exit branches apply it to every token, where libm's `tanhf` call per
/// value cost more than the branch's matrix products. The `F32Lanes` version
/// (`lanes::tanh`) performs the same operations in the same order: the same bits.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let x = if x < -TANH_CLAMP { -TANH_CLAMP } else { x };
    let x = if x > TANH_CLAMP { TANH_CLAMP } else { x };
    let e = exp2::<true>(x * TANH_EXP2);
    (e - 1.0) / (e + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use crate::cpu::{Isa, KernelKind};

    #[test]
    fn exp2_is_within_3_5e7() {
        for (name, f) in [
            ("fused", exp2::<true> as fn(f32) -> f32),
            ("separate", exp2::<false>),
        ] {
            let mut worst = 0f64;
            for i in -1_260_000..=1_270_000 {
                let t = i as f32 * 1e-4;
                let want = f64::from(t).exp2();
                worst = worst.max((f64::from(f(t)) - want).abs() / want);
            }
            assert!(worst < 3.5e-7, "{name}: max relative error {worst}");
            assert_eq!(f(0.0), 1.0, "{name}");
            assert_eq!(f(-3.0), 0.125, "{name}");
            assert_eq!(f(-1000.0), 2f32.powi(-126), "{name}");
            assert_eq!(f(f32::NEG_INFINITY), 2f32.powi(-126), "{name}");
            assert!(f(1000.0).is_finite(), "{name}");
            assert!(f(f32::NAN).is_nan(), "{name}");
        }
    }

    #[test]
    fn tanh_is_within_4e7() {
        let mut worst = 0f64;
        for i in -1_200_000..=1_200_000 {
            let x = i as f32 * 1e-5;
            worst = worst.max((f64::from(tanh(x)) - f64::from(x).tanh()).abs());
        }
        assert!(worst <= 4e-7, "max |tanh - tanh64| = {worst}");
        assert_eq!(tanh(0.0), 0.0);
        for x in [9.5f32, 100.0, f32::MAX, f32::INFINITY] {
            assert!(
                (tanh(x) - 1.0).abs() <= 4e-7 && (tanh(-x) + 1.0).abs() <= 4e-7,
                "{x}"
            );
        }
    }

    #[test]
    fn erf_is_within_4e7() {
        erf_within_4e7(erf::<true>);
        erf_within_4e7(erf::<false>);
    }

    fn erf_within_4e7(erf: fn(f32) -> f32) {
        // Against libm's erff (itself within an ulp) on a dense grid, and at the edges.
        let mut worst = 0f64;
        for i in -600_000..=600_000 {
            let x = i as f32 * 1e-5;
            worst = worst.max((f64::from(erf(x)) - f64::from(libm::erff(x))).abs());
        }
        assert!(worst <= 4e-7, "max |erf - erff| = {worst}");
        for x in [0.0f32, 1e-30, -1e-30, 1e-6, 4.0, 5.0, 1e30, f32::INFINITY] {
            let want = libm::erff(x);
            assert!((erf(x) - want).abs() <= 4e-7, "{x}: {} vs {want}", erf(x));
            assert_eq!(erf(-x), -erf(x));
        }
        assert!(erf(f32::NAN).is_nan());
        // Small arguments keep their relative accuracy.
        let x = 1e-20f32;
        assert!(((erf(x) / x) as f64 - 2.0 / std::f64::consts::PI.sqrt()).abs() < 3e-7);
    }

    #[test]
    fn gelu_values() {
        gelu_values_of(gelu::<true>);
        gelu_values_of(gelu::<false>);
    }

    fn gelu_values_of(gelu: fn(f32) -> f32) {
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_3).abs() < 1e-6);
        assert!((gelu(10.0) - 10.0).abs() < 1e-6);
        assert!(gelu(f32::NAN).is_nan());
    }

    /// Special values, then a dense grid over [-130, 130].
    fn sample_inputs() -> Vec<f32> {
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -87.3,
            88.0,
            -126.0,
            -126.5,
            127.0,
            127.5,
            -1000.0,
            0.0,
            -0.0,
            4.0,
        ];
        let grid = (-1_300_000..=1_300_000).map(|i| i as f32 * 1e-4);
        special.into_iter().chain(grid).collect()
    }

    /// Applies an eight-wide function to `xs` and compares bits with the scalar one.
    #[cfg(target_arch = "x86_64")]
    fn same_bits(scalar: fn(f32) -> f32, wide: unsafe fn(__m256) -> __m256, name: &str) {
        if Isa::new(KernelKind::Avx2).is_none() {
            return;
        }
        let xs = sample_inputs();
        for chunk in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: the CPU supports AVX2 and FMA (checked above); both pointers hold 8 values.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), wide(_mm256_loadu_ps(chunk.as_ptr()))) };
            for (&x, g) in chunk.iter().zip(got) {
                assert_eq!(g.to_bits(), scalar(x).to_bits(), "{name}({x})");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_versions_give_the_same_bits() {
        same_bits(exp2::<true>, exp2_avx2, "exp2");
        same_bits(erf::<true>, erf_avx2, "erf");
        same_bits(gelu::<true>, gelu_avx2, "gelu");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_versions_give_the_same_bits() {
        if Isa::new(KernelKind::Avx512Vnni).is_none() {
            return;
        }
        for (name, scalar, wide) in [
            (
                "exp2",
                exp2::<true> as fn(f32) -> f32,
                exp2_avx512 as unsafe fn(__m512) -> __m512,
            ),
            ("gelu", gelu::<true>, gelu_avx512),
        ] {
            for chunk in sample_inputs().chunks_exact(16) {
                let mut got = [0f32; 16];
                // SAFETY: the CPU supports AVX-512F; both pointers hold 16 values.
                unsafe {
                    _mm512_storeu_ps(got.as_mut_ptr(), wide(_mm512_loadu_ps(chunk.as_ptr())))
                };
                for (&x, g) in chunk.iter().zip(got) {
                    assert_eq!(g.to_bits(), scalar(x).to_bits(), "{name}({x})");
                }
            }
        }
    }
}
