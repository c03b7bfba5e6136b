//! Exact nearest neighbours by cosine similarity: every query against every row of an index of
//! unit vectors, K best kept per query.
//!
//! The work is cut into tasks of ([`GROUP_BLOCKS`] blocks of [`QUERY_BLOCK`] queries) x (a stripe
//! of [`STRIPE_ROWS`] rows), run on the caller's rayon pool. A task walks its stripe in tiles of
//! [`TILE_ROWS`] rows and runs every block of its group over a tile before the next, so each row
//! comes from memory once per group and is then reused from the core's own cache: the search is
//! bound by arithmetic, not by the memory bus the cores share. Each task keeps its own [`TopK`]
//! per query and the stripes' results are merged in a fixed order. Tasks, kernel sums and the
//! merge order do not depend on the number of threads, so neither do the results.

mod kernel;
mod topk;

use rayon::prelude::*;

pub use kernel::{Kernel, Scores, LANES, QUERY_BLOCK, ROW_BLOCK};
pub use topk::TopK;

/// Rows per task: large enough to amortize a task, small enough that a few queries still make
/// work for every thread on a large index.
pub const STRIPE_ROWS: usize = 8192;
/// Rows scanned by every block of a group before moving on: 256 rows of 300-400 floats stay in a
/// core's L2 cache (under half a megabyte) beside the group's queries.
pub const TILE_ROWS: usize = 256;
/// Query blocks per task: each row read from memory serves `GROUP_BLOCKS * QUERY_BLOCK` queries.
pub const GROUP_BLOCKS: usize = 16;

/// `vectors` holds `vectors.len() / dim` rows of `dim` floats (`dim` a multiple of [`LANES`]);
/// `queries` holds queries the same way. Returns, per query, up to `k` (row, score) pairs best
/// first, never the row `exclude[q]`.
pub fn search(
    vectors: &[f32],
    dim: usize,
    queries: &[f32],
    exclude: &[Option<u32>],
    k: usize,
    kernel: Kernel,
) -> Vec<Vec<(u32, f32)>> {
    assert!(
        dim > 0 && dim.is_multiple_of(LANES),
        "dim must be a multiple of LANES"
    );
    assert_eq!(vectors.len() % dim, 0);
    assert_eq!(queries.len() % dim, 0);
    let n_queries = queries.len() / dim;
    assert_eq!(exclude.len(), n_queries);
    let n_rows = vectors.len() / dim;
    let n_blocks = n_queries.div_ceil(QUERY_BLOCK);
    let n_groups = n_blocks.div_ceil(GROUP_BLOCKS);
    let n_stripes = n_rows.div_ceil(STRIPE_ROWS).max(1);

    // The last block is padded with zero queries, whose results are dropped.
    let mut padded = queries.to_vec();
    padded.resize(n_blocks * QUERY_BLOCK * dim, 0.0);
    let skip: Vec<Option<u32>> = (0..n_blocks * QUERY_BLOCK)
        .map(|q| exclude.get(q).copied().flatten())
        .collect();

    // partial[group * n_stripes + stripe][query of the group]
    let partial: Vec<Vec<TopK>> = (0..n_groups * n_stripes)
        .into_par_iter()
        .map(|task| {
            let (group, stripe) = (task / n_stripes, task % n_stripes);
            let blocks = group * GROUP_BLOCKS..((group + 1) * GROUP_BLOCKS).min(n_blocks);
            let queries = blocks.start * QUERY_BLOCK..blocks.end * QUERY_BLOCK;
            let rows = stripe * STRIPE_ROWS..((stripe + 1) * STRIPE_ROWS).min(n_rows);
            scan(
                vectors,
                dim,
                rows,
                &padded[queries.start * dim..queries.end * dim],
                &skip[queries],
                k,
                kernel,
            )
        })
        .collect();

    let mut out = Vec::with_capacity(n_queries);
    for q in 0..n_queries {
        let (group, at) = (
            q / (GROUP_BLOCKS * QUERY_BLOCK),
            q % (GROUP_BLOCKS * QUERY_BLOCK),
        );
        let mut best = TopK::new(k);
        for stripe in &partial[group * n_stripes..(group + 1) * n_stripes] {
            best.merge(&stripe[at]);
        }
        out.push(
            best.into_sorted()
                .into_iter()
                .map(|(s, r)| (r, s))
                .collect(),
        );
    }
    out
}

/// The K best rows of `rows` for each query of `queries` (whole blocks, one after another).
fn scan(
    vectors: &[f32],
    dim: usize,
    rows: std::ops::Range<usize>,
    queries: &[f32],
    skip: &[Option<u32>],
    k: usize,
    kernel: Kernel,
) -> Vec<TopK> {
    let mut best: Vec<TopK> = (0..skip.len()).map(|_| TopK::new(k)).collect();
    let mut scores: Scores = [[0.0; QUERY_BLOCK]; ROW_BLOCK];
    let block_len = QUERY_BLOCK * dim;
    let mut tile = rows.start;
    while tile < rows.end {
        let tile_end = (tile + TILE_ROWS).min(rows.end);
        let tile_vectors = &vectors[tile * dim..tile_end * dim];
        for ((block, tops), skips) in queries
            .chunks_exact(block_len)
            .zip(best.chunks_exact_mut(QUERY_BLOCK))
            .zip(skip.chunks_exact(QUERY_BLOCK))
        {
            for (i, some_rows) in tile_vectors.chunks(ROW_BLOCK * dim).enumerate() {
                kernel.dots(some_rows, dim, block, &mut scores);
                let first = tile + i * ROW_BLOCK;
                for (row, row_scores) in (first..).zip(&scores[..some_rows.len() / dim]) {
                    let id = row as u32;
                    for ((top, &score), &skipped) in tops.iter_mut().zip(row_scores).zip(skips) {
                        if skipped != Some(id) {
                            top.push(score, id);
                        }
                    }
                }
            }
        }
        tile = tile_end;
    }
    best
}

#[cfg(test)]
mod tests {
    use tinyfast_core::rng::SplitMix64;

    use super::*;

    /// The plain definition: every score in f64, a full sort.
    fn brute_force(vectors: &[f32], dim: usize, query: &[f32], skip: Option<u32>) -> Vec<u32> {
        let mut scored: Vec<(f64, u32)> = vectors
            .chunks_exact(dim)
            .enumerate()
            .filter(|(i, _)| skip != Some(*i as u32))
            .map(|(i, v)| {
                let s = v
                    .iter()
                    .zip(query)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b));
                (s.sum(), i as u32)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|x| x.1).collect()
    }

    #[test]
    fn matches_brute_force_on_every_kernel_and_pool_size() {
        let dim = 24;
        // Two stripes (the second ends inside a tile, with a last call of fewer than ROW_BLOCK
        // rows) and two query groups (the second ends inside a block).
        let n_rows = STRIPE_ROWS + TILE_ROWS + 4 * ROW_BLOCK + 2;
        let n_queries = GROUP_BLOCKS * QUERY_BLOCK + 11;
        let mut rng = SplitMix64::new(3);
        let vectors: Vec<f32> = (0..n_rows * dim).map(|_| rng.normal()).collect();
        let queries: Vec<f32> = (0..n_queries * dim).map(|_| rng.normal()).collect();
        let exclude: Vec<Option<u32>> = (0..n_queries)
            .map(|q| (q % 2 == 0).then_some(q as u32 * 5))
            .collect();
        let mut runs = Vec::new();
        for kernel in Kernel::ALL.into_iter().filter(|k| k.available()) {
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                runs.push(pool.install(|| search(&vectors, dim, &queries, &exclude, 6, kernel)));
            }
        }
        assert!(
            runs.windows(2).all(|w| w[0] == w[1]),
            "results depend on kernel or threads"
        );
        for (q, found) in runs[0].iter().enumerate() {
            let want = brute_force(&vectors, dim, &queries[q * dim..(q + 1) * dim], exclude[q]);
            let ids: Vec<u32> = found.iter().map(|x| x.0).collect();
            assert_eq!(ids, want[..6], "query {q}");
        }
    }
}
