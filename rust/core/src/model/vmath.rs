//! Branch-free f32 math for the forward pass's hot loops: `exp` (attention softmax) and `erf`
//! (GELU), each as a scalar function and an AVX2 function of eight values that performs the same
//! operations in the same order (no fused multiply-adds), so the two give the same bits and a
//! vectorized loop may finish its tail with the scalar one.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The range of [`exp`]'s argument (clamped outside it).
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

/// `e^x` within 2 f32 steps (relative error below 2.4e-7) for `-87.3 <= x <= 88` (Cephes'
/// `expf`: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a polynomial for `e^r`, and `2^n` built in
/// the exponent bits). Below the range the result is `e^-87.3` (about 1.2e-38) rather than a
/// subnormal or 0, above it `e^88`; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let z = r * r;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
    let p = p * z + r + 1.0;
    let n_int = (n + SHIFTER).to_bits().wrapping_sub(SHIFTER.to_bits());
    p * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// [`exp`] of eight values, with the same bits.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn exp_avx2(x: __m256) -> __m256 {
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
/// every input; NaN stays NaN.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let t = x * x;
    let p = ERF_P[1..].iter().fold(ERF_P[0], |p, &c| p * t + c);
    let q = ERF_Q[1..].iter().fold(ERF_Q[0], |q, &c| q * t + c);
    (x * (p / q)).clamp(-1.0, 1.0)
}

/// [`erf`] of eight values, with the same bits.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn erf_avx2(x: __m256) -> __m256 {
    let c = _mm256_set1_ps;
    let clamp = |v, lo, hi| _mm256_min_ps(c(hi), _mm256_max_ps(c(lo), v));
    let x = clamp(x, -4.0, 4.0);
    let t = _mm256_mul_ps(x, x);
    let (mut p, mut q) = (c(ERF_P[0]), c(ERF_Q[0]));
    for (&a, &b) in ERF_P[1..].iter().zip(&ERF_Q[1..]) {
        p = _mm256_add_ps(_mm256_mul_ps(p, t), c(a));
        q = _mm256_add_ps(_mm256_mul_ps(q, t), c(b));
    }
    clamp(_mm256_mul_ps(x, _mm256_div_ps(p, q)), -1.0, 1.0)
}

/// BERT's GELU, `x / 2 * (1 + erf(x / sqrt 2))`, with [`erf`].
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// [`gelu`] of eight values, with the same bits.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn gelu_avx2(x: __m256) -> __m256 {
    let c = _mm256_set1_ps;
    let e = erf_avx2(_mm256_mul_ps(x, c(std::f32::consts::FRAC_1_SQRT_2)));
    _mm256_mul_ps(_mm256_mul_ps(x, c(0.5)), _mm256_add_ps(c(1.0), e))
}

/// [`exp`] of sixteen values, with the same bits.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn exp_avx512(x: __m512) -> __m512 {
    let c = _mm512_set1_ps;
    let x = _mm512_min_ps(c(EXP_HI), _mm512_max_ps(c(EXP_LO), x));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_add_ps(
        _mm512_mul_ps(x, c(std::f32::consts::LOG2_E)),
        c(0.5),
    ));
    let r = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(n, c(LN2_HI))),
        _mm512_mul_ps(n, c(LN2_LO)),
    );
    let z = _mm512_mul_ps(r, r);
    let mut p = c(EXP_POLY[0]);
    for &coef in &EXP_POLY[1..] {
        p = _mm512_add_ps(_mm512_mul_ps(p, r), c(coef));
    }
    let p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, z), r), c(1.0));
    let n_int = _mm512_sub_epi32(
        _mm512_castps_si512(_mm512_add_ps(n, c(SHIFTER))),
        _mm512_set1_epi32(SHIFTER.to_bits() as i32),
    );
    let pow2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(n_int, _mm512_set1_epi32(127)));
    _mm512_mul_ps(p, _mm512_castsi512_ps(pow2))
}

/// [`gelu`] of sixteen values, with the same bits.
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
        p = _mm512_add_ps(_mm512_mul_ps(p, t), c(a));
        q = _mm512_add_ps(_mm512_mul_ps(q, t), c(b));
    }
    let e = clamp(_mm512_mul_ps(y, _mm512_div_ps(p, q)), -1.0, 1.0);
    _mm512_mul_ps(_mm512_mul_ps(x, c(0.5)), _mm512_add_ps(c(1.0), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_f32_steps() {
        let mut worst = 0f64;
        for i in -873_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = f64::from(x).exp();
            worst = worst.max((f64::from(exp(x)) - want).abs() / want);
        }
        assert!(worst < 2.4e-7, "max relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1.3e-38);
        assert!(exp(f32::NEG_INFINITY) < 1.3e-38);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_4e7() {
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
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_3).abs() < 1e-6);
        assert!((gelu(10.0) - 10.0).abs() < 1e-6);
        assert!(gelu(f32::NAN).is_nan());
    }

    /// Special values, then a dense grid over [-90, 90].
    fn sample_inputs() -> Vec<f32> {
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -87.3,
            88.0,
            0.0,
            -0.0,
            4.0,
        ];
        let grid = (-900_000..=900_000).map(|i| i as f32 * 1e-4);
        special.into_iter().chain(grid).collect()
    }

    /// Applies an eight-wide function to `xs` and compares bits with the scalar one.
    #[cfg(target_arch = "x86_64")]
    fn same_bits(scalar: fn(f32) -> f32, wide: unsafe fn(__m256) -> __m256, name: &str) {
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
            4.0,
        ];
        let grid = (-900_000..=900_000).map(|i| i as f32 * 1e-4);
        let xs: Vec<f32> = special.into_iter().chain(grid).collect();
        for chunk in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: the CPU supports AVX2; both pointers hold 8 values.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), wide(_mm256_loadu_ps(chunk.as_ptr()))) };
            for (&x, g) in chunk.iter().zip(got) {
                assert_eq!(g.to_bits(), scalar(x).to_bits(), "{name}({x})");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_versions_give_the_same_bits() {
        same_bits(exp, exp_avx2, "exp");
        same_bits(erf, erf_avx2, "erf");
        same_bits(gelu, gelu_avx2, "gelu");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_versions_give_the_same_bits() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        for (name, scalar, wide) in [
            (
                "exp",
                exp as fn(f32) -> f32,
                exp_avx512 as unsafe fn(__m512) -> __m512,
            ),
            ("gelu", gelu, gelu_avx512),
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
