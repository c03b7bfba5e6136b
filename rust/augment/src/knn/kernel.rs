//! Dot products of a few index rows with a block of [`QUERY_BLOCK`] queries, the inner loop of
//! the neighbour search. Every path computes the same numbers bit for bit: each dot product keeps
//! [`LANES`] partial sums (lane `l` adds the products of dimensions `l, l + 8, l + 16, ...` in
//! order, a multiply then an add, never fused) and folds them in one fixed tree. The portable path
//! spells that out in scalars; the AVX2 path is the same computation in 256-bit registers, one
//! row at a time; the AVX-512 path holds two rows' lanes in each 512-bit register, so one
//! instruction does the work of two AVX2 ones.

/// Partial sums per dot product; vectors are stored padded with zeros to a multiple of it.
pub const LANES: usize = 8;
/// Queries per block: every row loaded from memory is used this many times.
pub const QUERY_BLOCK: usize = 8;
/// Index rows per call of [`Kernel::dots`]: the AVX-512 path's two registers of two rows each.
pub const ROW_BLOCK: usize = 4;

/// Scores of up to [`ROW_BLOCK`] rows against the [`QUERY_BLOCK`] queries of a block.
pub type Scores = [[f32; QUERY_BLOCK]; ROW_BLOCK];

/// Which code computes the products, chosen once per search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx512,
    Avx2,
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Portable];

    /// The fastest path this CPU runs.
    pub fn detect() -> Kernel {
        Kernel::ALL
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Kernel::Portable)
    }

    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// The kernel called `name`, if there is one.
    pub fn named(name: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// `out[i][q] = rows[i] . queries[q]` for the `rows.len() / dim` rows (1 to [`ROW_BLOCK`])
    /// stored one after another in `rows` and the [`QUERY_BLOCK`] queries stored the same way in
    /// `queries`; `dim` is a multiple of [`LANES`]. Entries past the rows given are left as
    /// they were.
    pub fn dots(self, rows: &[f32], dim: usize, queries: &[f32], out: &mut Scores) {
        assert!(
            dim > 0 && dim.is_multiple_of(LANES),
            "vectors are padded to a multiple of LANES"
        );
        let n = rows.len() / dim;
        assert!(
            rows.len() == n * dim && (1..=ROW_BLOCK).contains(&n),
            "1 to ROW_BLOCK whole rows"
        );
        assert_eq!(queries.len(), dim * QUERY_BLOCK);
        assert!(self.available(), "{} is not available here", self.name());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the kernel's CPU features are present (checked above); lengths were checked
            // above.
            Kernel::Avx512 if n == ROW_BLOCK => unsafe { avx512::dots(rows, queries, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx2 => {
                for (row, o) in rows.chunks_exact(dim).zip(out.iter_mut()) {
                    // SAFETY: AVX2 is present (every kernel but the portable one needs it).
                    unsafe { avx2::dots(row, queries, o) }
                }
            }
            _ => {
                for (row, o) in rows.chunks_exact(dim).zip(out.iter_mut()) {
                    portable_dots(row, queries, o);
                }
            }
        }
    }
}

/// The fixed folding order of the lane sums: (l0+l4, l1+l5, l2+l6, l3+l7), then pairs 0+2 and
/// 1+3, then the last two.
#[inline]
fn fold(l: [f32; LANES]) -> f32 {
    let a = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let b = [a[0] + a[2], a[1] + a[3]];
    b[0] + b[1]
}

fn portable_dots(row: &[f32], queries: &[f32], out: &mut [f32; QUERY_BLOCK]) {
    let dim = row.len();
    for (q, slot) in out.iter_mut().enumerate() {
        let query = &queries[q * dim..(q + 1) * dim];
        let mut lanes = [0.0f32; LANES];
        for (r, v) in row.chunks_exact(LANES).zip(query.chunks_exact(LANES)) {
            for l in 0..LANES {
                lanes[l] += r[l] * v[l];
            }
        }
        *slot = fold(lanes);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{LANES, QUERY_BLOCK};

    /// [`super::fold`] of the eight lanes of `a`: halves, then pairs, then the last two.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn fold(a: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        let last = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 0b01));
        _mm_cvtss_f32(last)
    }

    /// One row against the block of queries.
    ///
    /// # Safety
    /// AVX2; `queries` holds `QUERY_BLOCK` rows of `row.len()` floats, a multiple of `LANES`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dots(row: &[f32], queries: &[f32], out: &mut [f32; QUERY_BLOCK]) {
        let dim = row.len();
        let r_ptr = row.as_ptr();
        let q_ptr = queries.as_ptr();
        let mut acc = [_mm256_setzero_ps(); QUERY_BLOCK];
        let mut d = 0;
        while d < dim {
            // SAFETY: d + LANES <= dim for the row and for each query (caller's contract).
            let r = unsafe { _mm256_loadu_ps(r_ptr.add(d)) };
            for (q, a) in acc.iter_mut().enumerate() {
                let v = unsafe { _mm256_loadu_ps(q_ptr.add(q * dim + d)) };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(v, r));
            }
            d += LANES;
        }
        for (slot, a) in out.iter_mut().zip(acc) {
            *slot = fold(a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Scores, LANES, QUERY_BLOCK, ROW_BLOCK};

    /// Two rows' `LANES` floats from dimension `d` in one register: the first row in the low
    /// half, the second in the high half.
    ///
    /// # Safety
    /// AVX-512F/DQ/VL; `LANES` floats from `a` and from `b` are readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    unsafe fn two_rows(a: *const f32, b: *const f32) -> __m512 {
        // SAFETY: caller's contract.
        let (lo, hi) = unsafe { (_mm256_loadu_ps(a), _mm256_loadu_ps(b)) };
        _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1)
    }

    /// `ROW_BLOCK` rows (stored one after another in `rows`) against the block of queries: rows
    /// 0 and 1 share one register, rows 2 and 3 another, and every lane does what its AVX2
    /// counterpart does, so the sums are the same bits. (AVX-512VL lets the folds' 256-bit steps
    /// use registers 16 to 31; without it the sixteen accumulators must share registers 0 to 15
    /// with the rows, and one spills to the stack every step.)
    ///
    /// # Safety
    /// AVX2 and AVX-512F/DQ/VL; `rows` holds `ROW_BLOCK` rows and `queries` `QUERY_BLOCK` rows of the
    /// same length, a multiple of `LANES`.
    #[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl")]
    pub(super) unsafe fn dots(rows: &[f32], queries: &[f32], out: &mut Scores) {
        let dim = rows.len() / ROW_BLOCK;
        let r_ptr = rows.as_ptr();
        let q_ptr = queries.as_ptr();
        // Rows 0 and 1 in `first`, rows 2 and 3 in `second`, one register per query each.
        let mut first = [_mm512_setzero_ps(); QUERY_BLOCK];
        let mut second = [_mm512_setzero_ps(); QUERY_BLOCK];
        let mut d = 0;
        while d < dim {
            // SAFETY: d + LANES <= dim inside every row and query (caller's contract).
            let (r01, r23) = unsafe {
                (
                    two_rows(r_ptr.add(d), r_ptr.add(dim + d)),
                    two_rows(r_ptr.add(2 * dim + d), r_ptr.add(3 * dim + d)),
                )
            };
            for q in 0..QUERY_BLOCK {
                // The query's LANES floats in both halves.
                let v = _mm512_broadcast_f32x8(unsafe { _mm256_loadu_ps(q_ptr.add(q * dim + d)) });
                first[q] = _mm512_add_ps(first[q], _mm512_mul_ps(v, r01));
                second[q] = _mm512_add_ps(second[q], _mm512_mul_ps(v, r23));
            }
            d += LANES;
        }
        for (pair, sums) in [first, second].iter().enumerate() {
            for (q, &a) in sums.iter().enumerate() {
                out[2 * pair][q] = super::avx2::fold(_mm512_castps512_ps256(a));
                out[2 * pair + 1][q] = super::avx2::fold(_mm512_extractf32x8_ps(a, 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tinyfast_core::rng::SplitMix64;

    use super::*;

    #[test]
    fn paths_agree_bit_for_bit() {
        let mut rng = SplitMix64::new(7);
        for dim in [8, 16, 48, 304] {
            let rows: Vec<f32> = (0..dim * ROW_BLOCK).map(|_| rng.normal()).collect();
            let queries: Vec<f32> = (0..dim * QUERY_BLOCK).map(|_| rng.normal()).collect();
            for n in 1..=ROW_BLOCK {
                let rows = &rows[..n * dim];
                let mut portable = [[0.0; QUERY_BLOCK]; ROW_BLOCK];
                Kernel::Portable.dots(rows, dim, &queries, &mut portable);
                for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
                    let mut got = [[f32::NAN; QUERY_BLOCK]; ROW_BLOCK];
                    kernel.dots(rows, dim, &queries, &mut got);
                    for i in 0..n {
                        assert_eq!(
                            portable[i].map(f32::to_bits),
                            got[i].map(f32::to_bits),
                            "{} dim {dim} rows {n} row {i}",
                            kernel.name()
                        );
                    }
                    assert!(
                        got[n..].iter().flatten().all(|x| x.is_nan()),
                        "past the rows"
                    );
                }
                for (i, row) in rows.chunks_exact(dim).enumerate() {
                    for q in 0..QUERY_BLOCK {
                        let exact: f64 = row
                            .iter()
                            .zip(&queries[q * dim..(q + 1) * dim])
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum();
                        assert!(
                            (f64::from(portable[i][q]) - exact).abs() < 1e-3,
                            "dim {dim} row {i} q {q}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for kernel in Kernel::ALL {
            assert_eq!(Kernel::named(kernel.name()), Some(kernel));
        }
        assert_eq!(Kernel::named("sse"), None);
        assert!(Kernel::detect().available());
    }
}
