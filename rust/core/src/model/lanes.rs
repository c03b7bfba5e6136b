//! One vector of f32 lanes, so that a kernel is written once for AVX2 (8 lanes) and AVX-512
//! (16 lanes).
//!
//! Every method is an `unsafe fn` meant to be inlined into a function compiled with the matching
//! target features ([`Avx2`]: `avx2,fma`; [`Avx512`]: `avx512f`), which the caller's run-time
//! dispatch guarantees. Each operation rounds exactly like its scalar counterpart on every lane
//! (`fmadd` like `f32::mul_add`, `exp2` and `gelu` like [`vmath`]'s with fused multiply-adds), so a kernel that runs one scalar
//! computation per lane gives the scalar computation's bits.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::vmath;

/// A vector of [`F32Lanes::LANES`] f32 values and the operations the kernels need.
///
/// # Safety
/// Implementations' methods require the CPU features their type documents; pointer arguments
/// must be valid for the lanes they touch, as each method states.
pub(crate) unsafe trait F32Lanes {
    const LANES: usize;
    /// Vectors a kernel may keep as accumulators beside its operands in the register file.
    const MAX_ACCUMULATORS: usize;
    type V: Copy;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    /// Reads `LANES` values at `p`.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Writes `LANES` values at `p`.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c` with one rounding.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise maximum (a NaN in `b` is returned as is).
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// [`vmath::exp2`] (with fused multiply-adds) of every lane.
    unsafe fn exp2(x: Self::V) -> Self::V;
    /// [`vmath::gelu`] (with fused multiply-adds) of every lane.
    unsafe fn gelu(x: Self::V) -> Self::V;
    /// [`vmath::tanh`] of every lane, with the same bits.
    #[inline(always)]
    unsafe fn tanh(x: Self::V) -> Self::V {
        // The scalar's steps: clamp to [-9, 9] (min as -max(-x)), e = exp2(2x / ln 2),
        // (e - 1) / (e + 1) (e * 1 - 1 is one rounding of e - 1).
        unsafe {
            let neg = Self::splat(-1.0);
            let lo = Self::splat(-vmath::TANH_CLAMP);
            let x = Self::max(x, lo);
            let x = Self::mul(Self::max(Self::mul(x, neg), lo), neg);
            let e = Self::exp2(Self::mul(x, Self::splat(vmath::TANH_EXP2)));
            Self::div(
                Self::fmadd(e, Self::splat(1.0), neg),
                Self::add(e, Self::splat(1.0)),
            )
        }
    }
}

/// 256-bit vectors; requires AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
unsafe impl F32Lanes for Avx2 {
    const LANES: usize = 8;
    const MAX_ACCUMULATORS: usize = 12;
    type V = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn exp2(x: __m256) -> __m256 {
        unsafe { vmath::exp2_avx2(x) }
    }
    #[inline(always)]
    unsafe fn gelu(x: __m256) -> __m256 {
        unsafe { vmath::gelu_avx2(x) }
    }
}

/// 512-bit vectors; requires AVX-512F.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512;

#[cfg(target_arch = "x86_64")]
unsafe impl F32Lanes for Avx512 {
    const LANES: usize = 16;
    const MAX_ACCUMULATORS: usize = 16;
    type V = __m512;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn exp2(x: __m512) -> __m512 {
        unsafe { vmath::exp2_avx512(x) }
    }
    #[inline(always)]
    unsafe fn gelu(x: __m512) -> __m512 {
        unsafe { vmath::gelu_avx512(x) }
    }
}
