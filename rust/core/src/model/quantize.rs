//! Per-token u8 activation quantization, vectorized: the runtime's form of the reference
//! [`crate::quant::quantize_activations_into`].
//!
//! Computes exactly what the reference computes (the rule of docs/bundle.md, "Int8 scheme"), bit
//! for bit, which tests check for every kernel on random rows, edge cases and the golden vectors of
//! tests/golden/quantization.json. It is a separate implementation because it is on the hot path:
//! the row's min, max and finiteness are reduced in lanes, and `round(x / s)` is computed as
//! `t = trunc(y); t + sign(y) if |y - t| >= 0.5` (exact: `y - t` and `t +- 1` are representable),
//! which compiles to vector instructions where `f32::round` is a library call per element. The
//! scale and zero point come from the reference's own `activation_params`.
//!
//! Kernels, one per level of [`Isa`], chosen by [`quantize_rows`] once per call:
//! [`quantize_rows_avx512`] (16 lanes, intrinsics, masked tails), [`quantize_rows_avx2`] (the
//! portable source compiled for AVX2, which vectorizes it to 8 lanes) and
//! [`quantize_rows_portable`].

use crate::cpu::{Isa, KernelKind};
use crate::quant::{activation_params, check_len, checked_len, QuantError, ACT_QMAX};

const LANES: usize = 8;

/// Quantizes `rows` rows of `x` (`[rows, k]`) into `q`, `scales` and `zero_points` with the
/// kernel of `isa`; fails on a non-finite value, naming its row and column (as the reference
/// does).
pub fn quantize_rows(
    isa: Isa,
    x: &[f32],
    rows: usize,
    k: usize,
    q: &mut [u8],
    scales: &mut [f32],
    zero_points: &mut [u8],
) -> Result<(), QuantError> {
    quantize_rows_smoothed(isa, x, None, rows, k, q, scales, zero_points)
}

/// [`quantize_rows`] of `x` multiplied feature-wise by `smooth` (`[k]`) when given: each value is
/// `x[t, j] * smooth[j]` (one f32 product, docs/bundle.md "Smoothing"), computed as it is read,
/// so smoothing costs no pass or buffer of its own. A non-finite product is an error like a
/// non-finite input.
#[allow(clippy::too_many_arguments)]
pub fn quantize_rows_smoothed(
    isa: Isa,
    x: &[f32],
    smooth: Option<&[f32]>,
    rows: usize,
    k: usize,
    q: &mut [u8],
    scales: &mut [f32],
    zero_points: &mut [u8],
) -> Result<(), QuantError> {
    if let Some(m) = smooth {
        check_len("smoothing factors", k, m.len())?;
    }
    match isa.kind() {
        // SAFETY: `isa` proves the CPU has the level's features, AVX-512F among them.
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => unsafe {
            quantize_rows_avx512(x, smooth, rows, k, q, scales, zero_points)
        },
        // SAFETY: `isa` proves the CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 => unsafe {
            quantize_rows_avx2(x, smooth, rows, k, q, scales, zero_points)
        },
        _ => quantize_rows_portable(x, smooth, rows, k, q, scales, zero_points),
    }
}

/// [`quantize_rows_smoothed`] in portable code.
pub fn quantize_rows_portable(
    x: &[f32],
    smooth: Option<&[f32]>,
    rows: usize,
    k: usize,
    q: &mut [u8],
    scales: &mut [f32],
    zero_points: &mut [u8],
) -> Result<(), QuantError> {
    quantize_rows_lanes(x, smooth, rows, k, q, scales, zero_points)
}

/// [`quantize_rows_smoothed`] in the portable source compiled for AVX2 (it vectorizes to eight
/// lanes).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_rows_avx2(
    x: &[f32],
    smooth: Option<&[f32]>,
    rows: usize,
    k: usize,
    q: &mut [u8],
    scales: &mut [f32],
    zero_points: &mut [u8],
) -> Result<(), QuantError> {
    quantize_rows_lanes(x, smooth, rows, k, q, scales, zero_points)
}

/// The portable source of both kernels above, inlined into each so that it compiles for that
/// kernel's instruction set.
#[inline(always)]
fn quantize_rows_lanes(
    x: &[f32],
    smooth: Option<&[f32]>,
    rows: usize,
    k: usize,
    q: &mut [u8],
    scales: &mut [f32],
    zero_points: &mut [u8],
) -> Result<(), QuantError> {
    match smooth {
        None => quantize_each_row(x, rows, k, q, scales, zero_points, |x, q| {
            quantize_row::<false>(x, x, q)
        }),
        Some(m) => quantize_each_row(x, rows, k, q, scales, zero_points, |x, q| {
            quantize_row::<true>(x, m, q)
        }),
    }
}

/// [`quantize_rows_smoothed`] sixteen values at a time.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn quantize_rows_avx512(
    x: &[f32],
    smooth: Option<&[f32]>,
    rows: usize,
    k: usize,
    q: &mut [u8],
    scales: &mut [f32],
    zero_points: &mut [u8],
) -> Result<(), QuantError> {
    // SAFETY (both closures): AVX-512F is enabled.
    match smooth {
        None => quantize_each_row(x, rows, k, q, scales, zero_points, |x, q| unsafe {
            quantize_row_avx512::<false>(x, x, q)
        }),
        Some(m) => quantize_each_row(x, rows, k, q, scales, zero_points, |x, q| unsafe {
            quantize_row_avx512::<true>(x, m, q)
        }),
    }
}

/// Checks the shapes, then quantizes row by row with `row` (which returns `(scale, zero_point)`
/// or the column of the first non-finite value).
#[inline(always)]
fn quantize_each_row(
    x: &[f32],
    rows: usize,
    k: usize,
    q: &mut [u8],
    scales: &mut [f32],
    zero_points: &mut [u8],
    row: impl Fn(&[f32], &mut [u8]) -> Result<(f32, u8), usize>,
) -> Result<(), QuantError> {
    let len = checked_len(rows, k)?;
    check_len("activations", len, x.len())?;
    check_len("quantized activations", len, q.len())?;
    check_len("activation scales", rows, scales.len())?;
    check_len("activation zero points", rows, zero_points.len())?;
    for t in 0..rows {
        let xr = &x[t * k..(t + 1) * k];
        let (s, zp) = row(xr, &mut q[t * k..(t + 1) * k]).map_err(|col| QuantError::NonFinite {
            what: "activation",
            row: t,
            col,
            value: xr[col],
        })?;
        scales[t] = s;
        zero_points[t] = zp;
    }
    Ok(())
}

/// One row: returns `(scale, zero_point)`, or the column of the first non-finite value. With
/// `SMOOTH`, the row's values are `x[j] * m[j]` (`m` as long as `x`); without, `m` is unused.
#[inline(always)]
fn quantize_row<const SMOOTH: bool>(
    x: &[f32],
    m: &[f32],
    q: &mut [u8],
) -> Result<(f32, u8), usize> {
    let m = &m[..x.len()];
    let value = |v: f32, f: f32| if SMOOTH { v * f } else { v };
    let mut lo = [0f32; LANES];
    let mut hi = [0f32; LANES];
    // `v * 0` is 0 for finite values and NaN for infinities and NaN.
    let mut bad = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    let rest_m = &m[x.len() - rest.len()..];
    for (c, f) in chunks.zip(m.chunks_exact(LANES)) {
        for l in 0..LANES {
            let v = value(c[l], f[l]);
            // Plain comparisons (a single vector min/max); NaN is caught by `bad`, and a -0.0
            // against 0.0 choice cannot change any output.
            lo[l] = if v < lo[l] { v } else { lo[l] };
            hi[l] = if v > hi[l] { v } else { hi[l] };
            bad[l] += v * 0.0;
        }
    }
    let (mut lo, mut hi, mut bad) = (
        lo.iter().fold(0f32, |m, &v| m.min(v)),
        hi.iter().fold(0f32, |m, &v| m.max(v)),
        bad.iter().sum::<f32>(),
    );
    for (&v, &f) in rest.iter().zip(rest_m) {
        let v = value(v, f);
        lo = lo.min(v);
        hi = hi.max(v);
        bad += v * 0.0;
    }
    if bad.is_nan() {
        return Err(first_non_finite::<SMOOTH>(x, m));
    }
    let Some((scale, zp)) = activation_params(lo, hi) else {
        q.fill(0);
        return Ok((1.0, 0));
    };
    for ((qi, &v), &f) in q.iter_mut().zip(x).zip(m) {
        let y = value(v, f) / scale;
        let t = y.trunc();
        let r = if (y - t).abs() >= 0.5 {
            t + 1f32.copysign(y)
        } else {
            t
        };
        let c = (r + zp).clamp(0.0, ACT_QMAX);
        // SAFETY: the row was checked finite above and |v / scale| <= 255, so `c` is a finite
        // value in 0..=255. The saturating `as` cast would be correct too but does not
        // vectorize, and this loop is a hot spot of every int8 linear.
        *qi = unsafe { c.to_int_unchecked::<i32>() } as u8;
    }
    Ok((scale, zp as u8))
}

/// The column of the first value that is not finite (after smoothing, with `SMOOTH`).
fn first_non_finite<const SMOOTH: bool>(x: &[f32], m: &[f32]) -> usize {
    x.iter()
        .zip(m)
        .position(|(&v, &f)| !(if SMOOTH { v * f } else { v }).is_finite())
        .unwrap_or(0)
}

/// [`quantize_row`] sixteen values at a time, with the same operations (the same bits); the
/// last partial vector is loaded and stored under a mask.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn quantize_row_avx512<const SMOOTH: bool>(
    x: &[f32],
    m: &[f32],
    q: &mut [u8],
) -> Result<(f32, u8), usize> {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let n = x.len();
    assert_eq!(q.len(), n);
    assert!(m.len() >= n);
    let body = n / L * L;
    let tail: __mmask16 = ((1u32 << (n - body)) - 1) as u16;
    let (xp, mp, qp) = (x.as_ptr(), m.as_ptr(), q.as_mut_ptr());
    // SAFETY (every block): full vectors cover `0..body`, the masked one `body..n`, of `x` and
    // of `m` (at least as long).
    let read = |p: *const f32, i: usize| unsafe {
        if i < body {
            _mm512_loadu_ps(p.add(i))
        } else {
            _mm512_maskz_loadu_ps(tail, p.add(i))
        }
    };
    let load = |i: usize| {
        if SMOOTH {
            _mm512_mul_ps(read(xp, i), read(mp, i))
        } else {
            read(xp, i)
        }
    };
    let zero = _mm512_setzero_ps();
    let (mut lo, mut hi, mut bad) = (zero, zero, zero);
    for i in (0..n).step_by(L) {
        let v = load(i);
        // minps(v, lo) is `v < lo ? v : lo`, the portable comparison; masked lanes read 0,
        // which the range includes anyway.
        lo = _mm512_min_ps(v, lo);
        hi = _mm512_max_ps(v, hi);
        bad = _mm512_add_ps(bad, _mm512_mul_ps(v, zero));
    }
    if _mm512_reduce_add_ps(bad).is_nan() {
        return Err(first_non_finite::<SMOOTH>(x, m));
    }
    let Some((scale, zp)) = activation_params(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi))
    else {
        q.fill(0);
        return Ok((1.0, 0));
    };
    let (sv, zv, one, half, qmax) = (
        _mm512_set1_ps(scale),
        _mm512_set1_ps(zp),
        _mm512_set1_ps(1.0),
        _mm512_set1_ps(0.5),
        _mm512_set1_ps(ACT_QMAX),
    );
    for i in (0..n).step_by(L) {
        let y = _mm512_div_ps(load(i), sv);
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
        let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(y, t)), half);
        let up = away & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, zero);
        let down = away & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, zero);
        let r = _mm512_mask_sub_ps(_mm512_mask_add_ps(t, up, t, one), down, t, one);
        let c = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, zv), zero), qmax);
        let c = _mm512_cvttps_epi32(c);
        // SAFETY: as for the loads; `q` has `n` bytes.
        unsafe {
            if i < body {
                _mm_storeu_si128(qp.add(i).cast(), _mm512_cvtusepi32_epi8(c));
            } else {
                _mm512_mask_cvtusepi32_storeu_epi8(qp.add(i).cast(), tail, c);
            }
        }
    }
    Ok((scale, zp as u8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;

    /// Every kernel this CPU runs against the reference quantizer.
    fn both(x: &[f32], rows: usize, k: usize) {
        for isa in Isa::available() {
            one(isa, x, rows, k);
        }
    }

    fn one(isa: Isa, x: &[f32], rows: usize, k: usize) {
        let (mut q1, mut s1, mut z1) = (vec![7u8; rows * k], vec![0f32; rows], vec![9u8; rows]);
        let (mut q2, mut s2, mut z2) = (q1.clone(), s1.clone(), z1.clone());
        let a = quantize_rows(isa, x, rows, k, &mut q1, &mut s1, &mut z1);
        let b = crate::quant::quantize_activations_into(x, rows, k, &mut q2, &mut s2, &mut z2);
        // Debug text, since NaN values in errors never compare equal.
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        if a.is_ok() {
            assert_eq!(q1, q2, "{isa}");
            assert_eq!(
                s1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                s2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{isa}"
            );
            assert_eq!(z1, z2, "{isa}");
        }
    }

    #[test]
    fn bit_identical_to_the_reference_quantizer() {
        let mut rng = SplitMix64::new(21);
        for &(rows, k) in &[
            (1, 1),
            (3, 7),
            (5, 8),
            (4, 9),
            (2, 16),
            (3, 17),
            (9, 312),
            (2, 1200),
            (3, 33),
        ] {
            for mode in 0..4 {
                let x: Vec<f32> = (0..rows * k)
                    .map(|_| match mode {
                        0 => rng.normal() * 3.0,
                        1 => rng.normal().abs() + 0.1,
                        2 => -(rng.normal().abs()),
                        // Values on exact half steps of a power-of-two scale.
                        _ => (rng.below(511) as f32 - 255.0) * 0.5,
                    })
                    .collect();
                both(&x, rows, k);
            }
        }
        // Zero rows, tiny rows, huge ranges, signed zeros, exact halves.
        both(&[0.0, -0.0, 0.0, 0.0, -0.0, 0.0, 0.0, 0.0, 0.0], 1, 9);
        both(&[1e-42, -1e-44, 0.0, 3e-45], 1, 4);
        both(&[f32::MAX, -f32::MAX, 1.0, 0.5, -3.0], 1, 5);
        both(&[127.5, -127.5, 0.5, -0.5, 1.5, 2.5, -2.5, 254.99998], 1, 8);
        let halves: Vec<f32> = (0..255).map(|i| i as f32 + 0.5).collect();
        both(&halves, 1, 255);
    }

    /// With smoothing factors, every kernel quantizes exactly the products `x * m` as the
    /// reference quantizes them, and a product that overflows is an error at its column.
    #[test]
    fn smoothed_rows_are_the_reference_on_the_products() {
        let mut rng = SplitMix64::new(8);
        for &(rows, k) in &[
            (1, 1),
            (3, 7),
            (2, 16),
            (3, 17),
            (5, 312),
            (2, 1200),
            (4, 33),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|_| rng.normal() * 4.0).collect();
            let m: Vec<f32> = (0..k).map(|_| rng.normal().abs() + 0.01).collect();
            let product: Vec<f32> = x.iter().enumerate().map(|(i, v)| v * m[i % k]).collect();
            for isa in Isa::available() {
                let (mut q1, mut s1, mut z1) =
                    (vec![7u8; rows * k], vec![0f32; rows], vec![9u8; rows]);
                let (mut q2, mut s2, mut z2) = (q1.clone(), s1.clone(), z1.clone());
                quantize_rows_smoothed(isa, &x, Some(&m), rows, k, &mut q1, &mut s1, &mut z1)
                    .unwrap();
                crate::quant::quantize_activations_into(
                    &product, rows, k, &mut q2, &mut s2, &mut z2,
                )
                .unwrap();
                assert_eq!(q1, q2, "{isa} {rows}x{k}");
                assert_eq!(
                    s1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    s2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
                assert_eq!(z1, z2);
            }
        }
        let x = vec![1.0f32, 2.0, 3e38, 1.0, 0.5];
        let m = vec![1.0f32, 1.0, 10.0, f32::NAN, 1.0];
        for isa in Isa::available() {
            let (mut q, mut s, mut z) = (vec![0u8; 5], vec![0f32; 1], vec![0u8; 1]);
            let e = quantize_rows_smoothed(isa, &x, Some(&m), 1, 5, &mut q, &mut s, &mut z)
                .unwrap_err();
            assert!(
                matches!(e, QuantError::NonFinite { row: 0, col: 2, .. }),
                "{isa}: {e:?}"
            );
            let e = quantize_rows_smoothed(isa, &x, Some(&m[..4]), 1, 5, &mut q, &mut s, &mut z)
                .unwrap_err();
            assert!(
                matches!(e, QuantError::ShapeMismatch { .. }),
                "{isa}: {e:?}"
            );
        }
    }

    /// Values whose quotient by the row's scale lies on or within a few ulps of a half-integer,
    /// where any rounding slip would change a code.
    #[test]
    fn quotients_next_to_half_integers() {
        let mut rng = SplitMix64::new(5);
        for _ in 0..200 {
            let (lo, hi) = (-(rng.normal().abs() * 3.0), rng.normal().abs() * 5.0 + 0.01);
            let (scale, zp) = activation_params(lo, hi).unwrap();
            let mut x = vec![lo, hi];
            for _ in 0..40 {
                let j = rng.below(255) as f32 - zp + 0.5;
                let v = (j * scale).clamp(lo, hi);
                x.extend([v, v.next_up().min(hi), v.next_down().max(lo)]);
            }
            both(&x, 1, x.len());
        }
    }

    #[test]
    fn non_finite_values_are_errors_like_the_reference() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for col in [0, 5, 8, 12] {
                let mut x = vec![0.25f32; 2 * 13];
                x[13 + col] = bad;
                both(&x, 2, 13);
                let (mut q, mut s, mut z) = (vec![0u8; 26], vec![0f32; 2], vec![0u8; 2]);
                for isa in Isa::available() {
                    let e = quantize_rows(isa, &x, 2, 13, &mut q, &mut s, &mut z).unwrap_err();
                    assert!(matches!(e, QuantError::NonFinite { row: 1, col: c, .. } if c == col));
                }
            }
        }
    }

    /// Every kernel this CPU runs reproduces the golden activation vectors.
    #[test]
    fn golden_activations_at_every_level() {
        use crate::quant::golden::{cases, to_bits};
        for c in cases("activations") {
            for isa in Isa::available() {
                let (mut q, mut s, mut z) =
                    (vec![7u8; c.x.len()], vec![0f32; c.rows], vec![9u8; c.rows]);
                quantize_rows(isa, &c.x, c.rows, c.cols, &mut q, &mut s, &mut z).unwrap();
                let codes: Vec<i64> = q.iter().map(|&v| i64::from(v)).collect();
                assert_eq!(codes, c.codes, "{isa} {}", c.name);
                assert_eq!(to_bits(&s), to_bits(&c.scales), "{isa} {}", c.name);
                let zps: Vec<i64> = z.iter().map(|&v| i64::from(v)).collect();
                assert_eq!(Some(zps), c.zero_points, "{isa} {}", c.name);
            }
        }
    }
}
