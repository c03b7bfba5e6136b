//! A masked LM's best vocabulary ids at chosen token positions: the encoder (its last layer at
//! the chosen rows only), the head on those rows, and a top-K per row over the ids the caller
//! allows.
//!
//! ```text
//! x = encoder(tokens)                       the last layer only at the chosen rows
//! t = LayerNorm(act(transform(x[p])))       each chosen position p
//! logits = decoder(t)                       [V], ROWS_PER_BLOCK rows at a time
//! out = the K best allowed ids of logits    higher logit first, lower id first on ties
//! ```
//!
//! Every step is per token or per row, so a position's ids never depend on the other sequences
//! of the chunk or on the thread count.

use rayon::prelude::*;

use super::encoder::encode_rows;
use super::linear::Linear;
use super::ops::{activation, layer_norm};
use super::workspace::Workspace;
use super::{Head, MaskedLmHead, ModelWeights};
use crate::cpu::Isa;
use crate::error::{Error, Result};

/// Chosen rows whose vocabulary logits are held at once (64 x 30522 floats: 7.8 MB).
pub const ROWS_PER_BLOCK: usize = 64;

/// One chosen position: `seq` among the sequences loaded into the workspace, `pos` its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub seq: usize,
    pub pos: usize,
}

/// An int8 decoder cut down to the ids a caller allows: the rows of the head's decoder for
/// `ids` (increasing), so its logits are the full decoder's at those ids, bit for bit, for a
/// fraction of the work (TinyBERT's augmentation allows about two ids in three).
#[derive(Debug)]
pub(crate) struct AllowedDecoder {
    allowed: Vec<bool>,
    ids: Vec<u32>,
    decoder: Linear,
}

impl AllowedDecoder {
    /// The decoder of `head` at the ids `allowed` marks; `None` when cutting gains nothing (an f32
    /// decoder, every id allowed) or leaves nothing to run (no id allowed: the full decoder's
    /// scan then answers -1 throughout).
    pub(crate) fn new(head: &MaskedLmHead, allowed: &[bool]) -> Option<AllowedDecoder> {
        let Linear::Int8(full) = &head.decoder else {
            return None;
        };
        let channels: Vec<usize> = (0..allowed.len()).filter(|&id| allowed[id]).collect();
        if channels.is_empty() || channels.len() == allowed.len() {
            return None;
        }
        Some(AllowedDecoder {
            allowed: allowed.to_vec(),
            ids: channels.iter().map(|&id| id as u32).collect(),
            decoder: Linear::Int8(full.select(&channels)),
        })
    }

    /// Whether this is the decoder for `allowed`.
    pub(crate) fn allows(&self, allowed: &[bool]) -> bool {
        self.allowed == allowed
    }
}

/// For the sequences loaded into `ws` (validated, as for [`super::encoder::forward`]), writes the
/// `k` best allowed ids at `at[i]` to `out[i * k..(i + 1) * k]`, best first, `-1` after the last
/// when fewer than `k` are allowed. `allowed[id]` says whether `id` may be returned (every id when
/// `None`). Positions must lie inside their sequences and come in sequence order. `cut`, the
/// model's decoder cut down to `allowed`, gives the same ids with less work.
#[allow(clippy::too_many_arguments)]
pub(crate) fn top_k(
    model: &ModelWeights,
    ws: &mut Workspace,
    at: &[Position],
    allowed: Option<&[bool]>,
    cut: Option<&AllowedDecoder>,
    k: usize,
    isa: Isa,
    out: &mut [i64],
) -> Result<()> {
    let Head::MaskedLm(head) = &model.head else {
        return Err(Error::input(
            "masked-LM candidates need a masked_lm bundle; this one is a classifier",
        ));
    };
    let d = &model.dims;
    let h = d.hidden;
    // The decoder that runs, its width, and the scan's mask over that width: the cut decoder
    // allows every one of its ids.
    let (decoder, v, allowed) = match cut {
        Some(c) => {
            debug_assert!(allowed.is_some_and(|a| c.allows(a)));
            (&c.decoder, c.ids.len(), None)
        }
        None => (&head.decoder, d.vocab, allowed),
    };
    // The vocabulary id of the decoder's output `i`.
    let id_of = |i: usize| cut.map_or(i, |c| c.ids[i] as usize);
    assert_eq!(out.len(), at.len() * k, "out must hold k ids per position");
    if at.is_empty() {
        return Ok(());
    }
    assert!(
        at.windows(2).all(|w| w[0].seq <= w[1].seq),
        "positions must come in sequence order"
    );
    let rows = at.len();
    let tokens: Vec<usize> = at
        .iter()
        .map(|p| {
            let token = ws.offsets[p.seq] + p.pos;
            assert!(
                token < ws.offsets[p.seq + 1],
                "position outside its sequence"
            );
            token
        })
        .collect();
    let seqs: Vec<u32> = at.iter().map(|p| p.seq as u32).collect();
    let mut hidden = vec![0f32; rows * h];
    encode_rows(model, ws, &tokens, &seqs, isa, &mut hidden)?;

    let mut t = vec![0f32; rows * h];
    head.transform.forward(&hidden, rows, &mut t, isa);
    activation(isa, &mut t, d.act);
    layer_norm(isa, &mut t, &head.norm.weight, &head.norm.bias, d.eps);

    let mut logits = vec![0f32; ROWS_PER_BLOCK.min(rows) * v];
    for (block, (t_block, out_block)) in t
        .chunks(ROWS_PER_BLOCK * h)
        .zip(out.chunks_mut(ROWS_PER_BLOCK * k))
        .enumerate()
    {
        let r = t_block.len() / h;
        decoder.forward(
            t_block,
            r,
            &mut logits[..r * v],
            &mut ws.quant,
            isa,
            &"head.decoder",
        )?;
        logits[..r * v]
            .par_chunks(v)
            .zip(out_block.par_chunks_mut(k))
            .enumerate()
            .try_for_each(|(i, (row, ids))| {
                best_ids(row, allowed, ids).map_err(|at| {
                    Error::compute(format!(
                        "masked position {}: the model produced a non-finite logit for id {}",
                        block * ROWS_PER_BLOCK + i,
                        id_of(at)
                    ))
                })?;
                if cut.is_some() {
                    for id in ids.iter_mut().filter(|id| **id >= 0) {
                        *id = id_of(*id as usize) as i64;
                    }
                }
                Ok(())
            })?;
    }
    Ok(())
}

/// Logits scanned per block by [`best_ids`].
const SCAN_BLOCK: usize = 64;

/// The `ids.len()` best allowed ids of `logits` into `ids`, best first (higher logit, then lower
/// id), `-1` where fewer are allowed. Err(id) on the first non-finite logit.
fn best_ids(logits: &[f32], allowed: Option<&[bool]>, ids: &mut [i64]) -> Result<(), usize> {
    let k = ids.len();
    ids.fill(-1);
    if k == 0 {
        return Ok(());
    }
    // (logit, id), best first; ids arrive in increasing order, so a later id enters only with a
    // strictly higher logit than the one it displaces.
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    // Blocks whose largest logit cannot enter a full list are skipped whole after one
    // vectorizable pass (finiteness is checked there too); the others go value by value.
    for (b, block) in logits.chunks(SCAN_BLOCK).enumerate() {
        let (top, finite) = block.iter().fold((f32::NEG_INFINITY, true), |(m, ok), &x| {
            (if x > m { x } else { m }, ok & x.is_finite())
        });
        if !finite {
            let at = block.iter().position(|x| !x.is_finite()).unwrap_or(0);
            return Err(b * SCAN_BLOCK + at);
        }
        if best.len() == k && top <= best[k - 1].0 {
            continue;
        }
        for (i, &x) in block.iter().enumerate() {
            let id = b * SCAN_BLOCK + i;
            if allowed.is_some_and(|a| !a[id]) {
                continue;
            }
            if best.len() == k && x <= best[k - 1].0 {
                continue;
            }
            let at = best.partition_point(|&(y, _)| y >= x);
            best.insert(at, (x, id));
            best.truncate(k);
        }
    }
    for (slot, (_, id)) in ids.iter_mut().zip(best) {
        *slot = id as i64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::best_ids;

    #[test]
    fn best_first_lower_id_on_ties_and_only_allowed() {
        let logits = [0.5, 2.0, -1.0, 2.0, 3.0, 0.5];
        let mut ids = [0i64; 4];
        best_ids(&logits, None, &mut ids).unwrap();
        assert_eq!(ids, [4, 1, 3, 0]);
        let allowed = [true, false, true, true, false, true];
        best_ids(&logits, Some(&allowed), &mut ids).unwrap();
        assert_eq!(ids, [3, 0, 5, 2]);
        let mut many = [0i64; 8];
        best_ids(&logits, Some(&allowed), &mut many).unwrap();
        assert_eq!(many, [3, 0, 5, 2, -1, -1, -1, -1]);
    }

    #[test]
    fn non_finite_logits_are_reported() {
        let mut ids = [0i64; 2];
        assert_eq!(best_ids(&[1.0, f32::NAN, 2.0], None, &mut ids), Err(1));
        let mut long = vec![0.5f32; 300];
        long[200] = f32::INFINITY;
        assert_eq!(best_ids(&long, None, &mut ids), Err(200));
    }

    /// Across many blocks, with ties and a mask: a full sort's order (higher logit, lower id).
    #[test]
    fn matches_a_full_sort() {
        let mut rng = crate::testing::SplitMix64::new(11);
        for (n, k) in [(1000, 15), (130, 1), (64, 64), (200, 250)] {
            // Few distinct values, so that ties cross block boundaries.
            let logits: Vec<f32> = (0..n)
                .map(|_| (rng.next_u64() % 40) as f32 * 0.25)
                .collect();
            let allowed: Vec<bool> = (0..n).map(|_| !rng.next_u64().is_multiple_of(4)).collect();
            let mut want: Vec<usize> = (0..n).filter(|&i| allowed[i]).collect();
            want.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            let mut want: Vec<i64> = want.into_iter().take(k).map(|i| i as i64).collect();
            want.resize(k, -1);
            let mut got = vec![0i64; k];
            best_ids(&logits, Some(&allowed), &mut got).unwrap();
            assert_eq!(got, want, "n {n} k {k}");
        }
    }
}
