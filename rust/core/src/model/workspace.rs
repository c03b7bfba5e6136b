//! Per-call scratch memory of the forward pass.
//!
//! # Layout: packed sequences, no padding
//! The sequences of a chunk are stored back to back: sequence `s` owns token rows
//! `offsets[s] .. offsets[s + 1]` of every token buffer (`x`, `qkv`, `ctx`, ...), and `tok_seq[t]`
//! names the sequence of token row `t`. Nothing is padded, so no work is spent on padding, and the
//! padding mask of docs/bundle.md is implicit: attention over sequence `s` reads only its own keys,
//! which equals scoring the padded keys `-inf` (their softmax weight is exactly 0). Compaction after
//! an early exit moves the surviving sequences' hidden states down over the exited ones and rewrites
//! `offsets`, `tok_seq` and `seq_row`.
//!
//! # Allocation
//! A [`Workspace`] is sized at the start of each chunk to that chunk's token and sequence counts
//! (`Workspace::prepare`); buffers only ever grow. Within a chunk the token count only shrinks,
//! so the layer loop allocates nothing, and a runtime that keeps its workspaces (the runtime pools
//! them) allocates nothing in the steady state once it has seen its largest chunk.

use rayon::prelude::*;

use super::{Head, ModelWeights};

/// Grows `v` with default values to at least `n` elements; never shrinks it.
pub(crate) fn fit<T: Default + Clone>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// Per-call buffers for the quantized activations of an int8 linear's input: `q` holds
/// `rows * k` bytes, `scales` and `zero_points` one entry per row.
#[derive(Debug, Default)]
pub struct QuantScratch {
    pub q: Vec<u8>,
    pub scales: Vec<f32>,
    pub zero_points: Vec<u8>,
}

impl QuantScratch {
    /// Grows the buffers (never shrinks them) to hold `rows` rows of up to `k` features.
    pub fn reserve(&mut self, rows: usize, k: usize) {
        fit(&mut self.q, rows * k);
        fit(&mut self.scales, rows);
        fit(&mut self.zero_points, rows);
    }

    /// The room of the first `rows` rows of up to `k` features, cut into one slice per `chunk`
    /// rows for parallel tasks.
    pub(crate) fn par_slices(
        &mut self,
        rows: usize,
        k: usize,
        chunk: usize,
    ) -> impl IndexedParallelIterator<Item = QuantSlices<'_>> {
        self.q[..rows * k]
            .par_chunks_mut(chunk * k)
            .zip(self.scales[..rows].par_chunks_mut(chunk))
            .zip(self.zero_points[..rows].par_chunks_mut(chunk))
            .map(|((q, scales), zero_points)| QuantSlices {
                q,
                scales,
                zero_points,
            })
    }
}

/// One task's share of a [`QuantScratch`]: room for the quantized inputs of its rows.
pub struct QuantSlices<'a> {
    pub q: &'a mut [u8],
    pub scales: &'a mut [f32],
    pub zero_points: &'a mut [u8],
}

/// Scratch of one forward pass; see the module docs.
#[derive(Debug, Default)]
pub struct Workspace {
    /// Token ids and token type ids of the packed tokens, `[T]`.
    pub(crate) ids: Vec<u32>,
    pub(crate) types: Vec<u32>,
    /// `B + 1` token offsets of the sequences still running.
    pub(crate) offsets: Vec<usize>,
    /// The sequence of each token row, `[T]`.
    pub(crate) tok_seq: Vec<u32>,
    /// The chunk-local input row of each running sequence, `[B]`.
    pub(crate) seq_row: Vec<usize>,
    /// `0, 1, ..., B - 1`: the sequence of each query row of an attention over the `[CLS]` rows
    /// alone (one query per sequence).
    pub(crate) seq_ident: Vec<u32>,
    /// Hidden states `[T, H]`.
    pub(crate) x: Vec<f32>,
    /// Fused query/key/value `[T, 3H]`.
    pub(crate) qkv: Vec<f32>,
    /// Layer outputs of the `[CLS]` rows only, `[B, H]` (the last layer's, or one followed by a
    /// light branch).
    pub(crate) xc: Vec<f32>,
    /// Attention context `[T, H]`.
    pub(crate) ctx: Vec<f32>,
    /// Output of attn_out / ffn_out before the residual, `[T, H]`.
    pub(crate) tmp: Vec<f32>,
    /// FFN intermediate `[T, F]`.
    pub(crate) ffn: Vec<f32>,
    /// Quantized activations of an int8 linear's input.
    pub(crate) quant: QuantScratch,
    /// Attention scratch (a tile's queries and scores, or the branch attention's) per parallel
    /// task.
    pub(crate) scores: Vec<f32>,
    /// Branch hidden states `[T, W]`.
    pub(crate) bh: Vec<f32>,
    /// Per-sequence rows ([CLS] vectors and what follows from them), `[B, max(H, W)]`.
    pub(crate) cls_a: Vec<f32>,
    pub(crate) cls_b: Vec<f32>,
    /// Branch or head logits `[B, C]`.
    pub(crate) logits: Vec<f32>,
}

impl Workspace {
    /// Sizes every buffer for `tokens` token rows in `seqs` sequences of `model`.
    pub(crate) fn prepare(&mut self, model: &ModelWeights, tokens: usize, seqs: usize) {
        let d = &model.dims;
        let (h, f, w) = (d.hidden, d.intermediate, d.branch_width);
        fit(&mut self.x, tokens * h);
        fit(&mut self.qkv, tokens * 3 * h);
        fit(&mut self.xc, seqs * h);
        fit(&mut self.ctx, tokens * h);
        fit(&mut self.tmp, tokens * h);
        fit(&mut self.ffn, tokens * f);
        self.quant.reserve(tokens, h.max(f));
        fit(&mut self.bh, tokens * w);
        fit(&mut self.cls_a, seqs * h.max(w));
        fit(&mut self.cls_b, seqs * h.max(w));
        if let Head::Classifier(_) = model.head {
            // A masked LM's vocabulary logits are computed a few rows at a time instead.
            fit(&mut self.logits, seqs * d.outputs);
        }
        fit(&mut self.tok_seq, tokens);
        if self.seq_ident.len() < seqs {
            self.seq_ident = (0..seqs as u32).collect();
        }
    }

    /// Rebuilds `tok_seq` from `offsets`.
    pub(crate) fn index_tokens(&mut self) {
        for s in 0..self.offsets.len().saturating_sub(1) {
            let (a, b) = (self.offsets[s], self.offsets[s + 1]);
            self.tok_seq[a..b].fill(s as u32);
        }
    }
}
