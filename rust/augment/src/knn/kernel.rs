//! Dot products of one index row with a block of [`QUERY_BLOCK`] queries, the inner loop of the
//! neighbour search. Two paths compute the same numbers bit for bit: each keeps [`LANES`]
//! partial sums (lane `l` adds the products of dimensions `l, l + 8, l + 16, ...` in order, a
//! multiply then an add, never fused) and folds them in one fixed tree. The portable path spells
//! that out in scalars; the AVX2 path is the same computation in 256-bit registers.

/// Partial sums per dot product; vectors are stored padded with zeros to a multiple of it.
pub const LANES: usize = 8;
/// Queries per block: every row loaded from memory is used this many times.
pub const QUERY_BLOCK: usize = 8;

/// Which code computes the products, chosen once per search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest path this CPU runs.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// `out[q] = row . queries[q]` for the `QUERY_BLOCK` queries stored one after another in
    /// `queries` (each `row.len()` long, a multiple of `LANES`).
    pub fn dots(self, row: &[f32], queries: &[f32], out: &mut [f32; QUERY_BLOCK]) {
        assert_eq!(
            row.len() % LANES,
            0,
            "vectors are padded to a multiple of LANES"
        );
        assert_eq!(queries.len(), row.len() * QUERY_BLOCK);
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                assert!(std::is_x86_feature_detected!("avx2"));
                // SAFETY: AVX2 is present (checked above); lengths were checked above.
                unsafe { avx2::dots(row, queries, out) }
            }
            _ => portable_dots(row, queries, out),
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

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dots(row: &[f32], queries: &[f32], out: &mut [f32; QUERY_BLOCK]) {
        let dim = row.len();
        let r_ptr = row.as_ptr();
        let q_ptr = queries.as_ptr();
        let mut acc = [_mm256_setzero_ps(); QUERY_BLOCK];
        let mut d = 0;
        while d < dim {
            let r = _mm256_loadu_ps(r_ptr.add(d));
            for (q, a) in acc.iter_mut().enumerate() {
                let v = _mm256_loadu_ps(q_ptr.add(q * dim + d));
                *a = _mm256_add_ps(*a, _mm256_mul_ps(v, r));
            }
            d += LANES;
        }
        for (q, a) in acc.iter().enumerate() {
            // The fold of `super::fold`: halves, then pairs, then the last two.
            let halves = _mm_add_ps(_mm256_castps256_ps128(*a), _mm256_extractf128_ps(*a, 1));
            let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
            let last = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 0b01));
            out[q] = _mm_cvtss_f32(last);
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
            let row: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
            let queries: Vec<f32> = (0..dim * QUERY_BLOCK).map(|_| rng.normal()).collect();
            let mut portable = [0.0; QUERY_BLOCK];
            Kernel::Portable.dots(&row, &queries, &mut portable);
            let mut best = [0.0; QUERY_BLOCK];
            Kernel::detect().dots(&row, &queries, &mut best);
            assert_eq!(
                portable.map(f32::to_bits),
                best.map(f32::to_bits),
                "dim {dim}"
            );
            for q in 0..QUERY_BLOCK {
                let exact: f64 = row
                    .iter()
                    .zip(&queries[q * dim..(q + 1) * dim])
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                assert!(
                    (f64::from(portable[q]) - exact).abs() < 1e-3,
                    "dim {dim} q {q}"
                );
            }
        }
    }
}
