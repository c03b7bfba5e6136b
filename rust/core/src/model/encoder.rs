//! The forward pass over one chunk of sequences, with early exit and batch compaction.
//!
//! ```text
//! x = LayerNorm(word[ids] + position[0..L] + token_type[types])
//! for each layer l:
//!     q, k, v = split(x @ qkv^T + qkv.bias)
//!     a = softmax(q k^T / sqrt(H / num_heads) + mask)
//!     x = LayerNorm(x + (a v) @ attn_out^T + bias)
//!     x = LayerNorm(x + gelu(x @ ffn_in^T + b) @ ffn_out^T + b)
//!     if layer l+1 has an exit: branch logits; rows with uncertainty < speed finish; compact
//! head: logits = classifier(tanh(pooler(x[CLS])))
//! ```
//!
//! The head reads only `x[CLS]` of the last layer, so that layer runs its attention queries and
//! everything after them for the `[CLS]` rows alone (keys and values still come from every
//! token). A light branch (`classifier(x[CLS])`) reads only `x[CLS]` too, so a layer followed by
//! one finishes the `[CLS]` rows first, lets the rows under `speed` exit, and completes the layer
//! for the rows that go on: an exiting row skips the rest of its exit layer. (A FastBERT branch
//! attends over every token, so its layer runs whole before the branch.)
//!
//! Every step is per token (embeddings, linears, LayerNorm, GELU) or per sequence (attention,
//! branches, head), so a sequence's logits and exit layer never depend on the other sequences of
//! the chunk: batched results equal batch-size-1 results bit for bit.

use std::fmt;

use rayon::prelude::*;

use super::attention::{attention, self_attention_qkv, Rows};
use super::linear::rows_per_task;
use super::ops::{activation, add_layer_norm, layer_norm, tanh_in_place, uncertainty};
use super::workspace::{QuantScratch, Workspace};
use super::{Branch, EncoderLayer, FastBertBranch, Head, LayerNormWeights, ModelWeights};
use crate::cpu::Isa;
use crate::error::{Error, Result};

/// Names a linear in errors without allocating (`layers.2.ffn_out`).
struct Site {
    layer: usize,
    linear: &'static str,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layers.{}.{}", self.layer, self.linear)
    }
}

/// Runs the model on the sequences loaded into `ws` (with [`Workspace::begin`] and
/// [`Workspace::push_seq`]; ids, types and lengths already validated against the model).
///
/// For each sequence, writes its logits to `logits_out[row * C..]` and its 1-based exit layer to
/// `exit_out[row]`, where `row` is its position among the pushed sequences. Rows exit after a branch
/// when their uncertainty is `< speed`; `speed <= 0` (or a regression model) runs every layer and
/// skips the branches altogether.
pub(crate) fn forward(
    model: &ModelWeights,
    ws: &mut Workspace,
    speed: f32,
    isa: Isa,
    logits_out: &mut [f32],
    exit_out: &mut [usize],
) -> Result<()> {
    let d = &model.dims;
    let (h, c) = (d.hidden, d.outputs);
    let mut seqs = ws.seq_row.len();
    if seqs == 0 {
        return Ok(());
    }
    let mut tokens = ws.offsets[seqs];
    ws.prepare(model, tokens, seqs);
    ws.index_tokens();
    embed(model, ws, tokens, isa);

    let mut out = Outputs {
        logits: logits_out,
        exits: exit_out,
    };
    let early = speed > 0.0 && !d.regression;
    let last = model.layers.len().saturating_sub(1);
    for (l, layer) in model.layers.iter().enumerate() {
        let exit = early
            .then(|| model.exits.iter().find(|e| e.layer == l + 1))
            .flatten();
        qkv(layer, l, ws, tokens, isa)?;
        let light = match exit.map(|e| &e.branch) {
            Some(Branch::Linear { classifier }) => Some(classifier),
            _ => None,
        };
        if l == last || light.is_some() {
            cls_rows(model, layer, l, ws, seqs, isa)?;
            let Some(classifier) = light else {
                break;
            };
            classifier.forward(&ws.xc[..seqs * h], seqs, &mut ws.logits, isa);
            (seqs, tokens) = exit_and_compact(ws, h, c, l + 1, speed, &mut out, true);
            if seqs == 0 {
                return Ok(());
            }
        }
        rest_of_layer(model, layer, l, ws, tokens, isa)?;
        if let Some(Branch::FastBert(fb)) = exit.map(|e| &e.branch) {
            fastbert_logits(model, fb, ws, tokens, seqs, isa);
            (seqs, tokens) = exit_and_compact(ws, h, c, l + 1, speed, &mut out, false);
            if seqs == 0 {
                return Ok(());
            }
        }
    }

    if model.layers.is_empty() {
        gather_cls(&ws.x, h, h, &ws.offsets, &mut ws.xc[..seqs * h]);
    }
    head_logits(model, ws, seqs, isa)?;
    for s in 0..seqs {
        let row = ws.seq_row[s];
        out.logits[row * c..(row + 1) * c].copy_from_slice(&ws.logits[s * c..(s + 1) * c]);
        out.exits[row] = d.layers;
    }
    Ok(())
}

/// The last layer's hidden states of chosen token rows of the sequences loaded into `ws` (no
/// exits, no head), into `out` (`[rows, H]`): row `i` is packed token row `tokens_at[i]`, of
/// sequence `seqs_at[i]` (sequences in increasing order). Every layer but the last runs on every token;
/// the last computes keys and values for every token but its queries and everything after them
/// for the chosen rows alone, as [`cls_rows`] does for `[CLS]`.
pub(crate) fn encode_rows(
    model: &ModelWeights,
    ws: &mut Workspace,
    tokens_at: &[usize],
    seqs_at: &[u32],
    isa: Isa,
    out: &mut [f32],
) -> Result<()> {
    let d = &model.dims;
    let h = d.hidden;
    let rows = tokens_at.len();
    let seqs = ws.seq_row.len();
    let tokens = ws.offsets[seqs];
    ws.prepare(model, tokens, seqs);
    ws.index_tokens();
    embed(model, ws, tokens, isa);
    let Some((last, first)) = model.layers.split_last() else {
        for (row, &t) in out.chunks_exact_mut(h).zip(tokens_at) {
            row.copy_from_slice(&ws.x[t * h..(t + 1) * h]);
        }
        return Ok(());
    };
    for (l, layer) in first.iter().enumerate() {
        qkv(layer, l, ws, tokens, isa)?;
        rest_of_layer(model, layer, l, ws, tokens, isa)?;
    }
    let l = first.len();
    qkv(last, l, ws, tokens, isa)?;
    let qkv_rows = &ws.qkv[..tokens * 3 * h];
    let mut queries = vec![0f32; rows * h];
    for (q, &t) in queries.chunks_exact_mut(h).zip(tokens_at) {
        q.copy_from_slice(&qkv_rows[t * 3 * h..t * 3 * h + h]);
    }
    let mut ctx = vec![0f32; rows * h];
    let at = |data, stride, col| Rows { data, stride, col };
    attention(
        isa,
        at(&queries, h, 0),
        at(qkv_rows, 3 * h, h),
        at(qkv_rows, 3 * h, 2 * h),
        h,
        d.heads,
        &ws.offsets,
        seqs_at,
        &mut ws.scores,
        &mut ctx,
    );
    for (x, &t) in out.chunks_exact_mut(h).zip(tokens_at) {
        x.copy_from_slice(&ws.x[t * h..(t + 1) * h]);
    }
    after_attention(
        model,
        last,
        l,
        &mut out[..rows * h],
        &ctx,
        &mut ws.tmp,
        &mut ws.ffn,
        &mut ws.quant,
        isa,
    )
}

/// Where finished rows' logits (`[rows, C]`) and 1-based exit layers go, by input row.
struct Outputs<'a> {
    logits: &'a mut [f32],
    exits: &'a mut [usize],
}

impl Workspace {
    /// Starts loading a chunk of sequences.
    pub(crate) fn begin(&mut self) {
        self.ids.clear();
        self.types.clear();
        self.offsets.clear();
        self.offsets.push(0);
        self.seq_row.clear();
    }

    /// Appends one sequence (its ids and, optionally, token type ids; zeros otherwise).
    pub(crate) fn push_seq(&mut self, ids: &[u32], types: Option<&[u32]>) {
        self.ids.extend_from_slice(ids);
        match types {
            Some(t) => self.types.extend_from_slice(t),
            None => self.types.extend(std::iter::repeat_n(0, ids.len())),
        }
        self.offsets.push(self.ids.len());
        self.seq_row.push(self.seq_row.len());
    }
}

/// `x = LayerNorm(word[id] + position[pos] + token_type[type])` for every token.
fn embed(model: &ModelWeights, ws: &mut Workspace, tokens: usize, isa: Isa) {
    let emb = &model.embeddings;
    let (h, eps) = (model.dims.hidden, model.dims.eps);
    let (ids, types, offsets, tok_seq) = (&ws.ids, &ws.types, &ws.offsets, &ws.tok_seq);
    let chunk = rows_per_task(tokens);
    ws.x[..tokens * h]
        .par_chunks_mut(chunk * h)
        .enumerate()
        .for_each(|(ci, xs)| {
            for (i, row) in xs.chunks_exact_mut(h).enumerate() {
                let t = ci * chunk + i;
                let pos = t - offsets[tok_seq[t] as usize];
                let word = &emb.word[ids[t] as usize * h..][..h];
                let position = &emb.position[pos * h..][..h];
                let token_type = &emb.token_type[types[t] as usize * h..][..h];
                for (((x, &w), &p), &ty) in row.iter_mut().zip(word).zip(position).zip(token_type) {
                    *x = w + p + ty;
                }
            }
            layer_norm(isa, xs, &emb.norm.weight, &emb.norm.bias, eps);
        });
}

/// An element-wise map over `rows` rows of `width`, in parallel.
fn par_map_rows(buf: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    let rows = buf.len() / width.max(1);
    if rows == 0 {
        return;
    }
    let chunk = rows_per_task(rows);
    buf.par_chunks_mut(chunk * width).for_each(f);
}

/// `qkv = x @ qkv^T + b` for the `t` token rows.
fn qkv(layer: &EncoderLayer, l: usize, ws: &mut Workspace, t: usize, isa: Isa) -> Result<()> {
    let h = layer.qkv.k();
    layer.qkv.forward(
        &ws.x[..t * h],
        t,
        &mut ws.qkv[..t * 3 * h],
        &mut ws.quant,
        isa,
        &Site {
            layer: l,
            linear: "qkv",
        },
    )
}

/// The layer after `qkv` for every token row: `x` becomes the layer's output.
fn rest_of_layer(
    model: &ModelWeights,
    layer: &EncoderLayer,
    l: usize,
    ws: &mut Workspace,
    t: usize,
    isa: Isa,
) -> Result<()> {
    let d = &model.dims;
    let h = d.hidden;
    self_attention_qkv(
        isa,
        &ws.qkv[..t * 3 * h],
        h,
        d.heads,
        &ws.offsets,
        &ws.tok_seq[..t],
        &mut ws.scores,
        &mut ws.ctx[..t * h],
    );
    let x = &mut ws.x[..t * h];
    after_attention(
        model,
        layer,
        l,
        x,
        &ws.ctx,
        &mut ws.tmp,
        &mut ws.ffn,
        &mut ws.quant,
        isa,
    )
}

/// The layer after `qkv` for the `[CLS]` rows of the `b` sequences only (see the module docs):
/// their outputs go to `xc`, `x` keeps the layer's input.
fn cls_rows(
    model: &ModelWeights,
    layer: &EncoderLayer,
    l: usize,
    ws: &mut Workspace,
    b: usize,
    isa: Isa,
) -> Result<()> {
    let d = &model.dims;
    let h = d.hidden;
    let t = ws.offsets[b];
    let qkv = &ws.qkv[..t * 3 * h];
    gather_cls(qkv, 3 * h, h, &ws.offsets, &mut ws.cls_a[..b * h]);
    let rows = |data, stride, col| Rows { data, stride, col };
    attention(
        isa,
        rows(&ws.cls_a[..b * h], h, 0),
        rows(qkv, 3 * h, h),
        rows(qkv, 3 * h, 2 * h),
        h,
        d.heads,
        &ws.offsets,
        &ws.seq_ident[..b],
        &mut ws.scores,
        &mut ws.ctx[..b * h],
    );
    gather_cls(&ws.x, h, h, &ws.offsets, &mut ws.xc[..b * h]);
    let x = &mut ws.xc[..b * h];
    after_attention(
        model,
        layer,
        l,
        x,
        &ws.ctx,
        &mut ws.tmp,
        &mut ws.ffn,
        &mut ws.quant,
        isa,
    )
}

/// The rest of a layer on the rows of `x` (the layer's input) and `ctx` (their attention
/// output): `x = LayerNorm(x + ctx @ attn_out^T + b)`, then the feed-forward block; `tmp`, `ffn`
/// and `quant` are scratch.
///
/// Every step is per row, so the whole block runs as one parallel task per slice of rows: a
/// slice's intermediates (`tmp`, `ffn`, the quantized inputs) are read back while they are still
/// in the core's cache, where separate passes over all rows would stream each of them through
/// memory, and the threads meet once per block instead of once per step.
#[allow(clippy::too_many_arguments)]
fn after_attention(
    model: &ModelWeights,
    layer: &EncoderLayer,
    l: usize,
    x: &mut [f32],
    ctx: &[f32],
    tmp: &mut [f32],
    ffn: &mut [f32],
    quant: &mut QuantScratch,
    isa: Isa,
) -> Result<()> {
    let d = &model.dims;
    let (h, f) = (d.hidden, d.intermediate);
    let t = x.len() / h;
    if t == 0 {
        return Ok(());
    }
    let site = |linear| Site { layer: l, linear };
    let norm = |x: &mut [f32], y: &[f32], n: &LayerNormWeights| {
        add_layer_norm(isa, x, y, &n.weight, &n.bias, d.eps)
    };
    // One slice of rows, on the calling thread.
    let block = |x: &mut [f32], ctx: &[f32], tmp: &mut [f32], ffn: &mut [f32], quant: &mut _| {
        let t = x.len() / h;
        let (tmp, ffn) = (&mut tmp[..t * h], &mut ffn[..t * f]);
        layer
            .attn_out
            .forward_serial(ctx, t, tmp, quant, isa, &site("attn_out"))?;
        norm(x, tmp, &layer.attn_norm);
        layer
            .ffn_in
            .forward_serial(x, t, ffn, quant, isa, &site("ffn_in"))?;
        activation(isa, ffn, d.act);
        layer
            .ffn_out
            .forward_serial(ffn, t, tmp, quant, isa, &site("ffn_out"))?;
        norm(x, tmp, &layer.ffn_norm);
        Ok(())
    };
    let chunk = rows_per_task(t);
    x.par_chunks_mut(chunk * h)
        .zip(ctx[..t * h].par_chunks(chunk * h))
        .zip(tmp[..t * h].par_chunks_mut(chunk * h))
        .zip(ffn[..t * f].par_chunks_mut(chunk * f))
        .zip(quant.par_slices(t, h.max(f), chunk))
        .try_for_each(|((((x, ctx), tmp), ffn), mut quant)| block(x, ctx, tmp, ffn, &mut quant))
}

/// Copies the first `width` values of the first token row (`[CLS]`) of each sequence of `src`
/// (`[T, stride]`) to `dst` (`[B, width]`).
fn gather_cls(src: &[f32], stride: usize, width: usize, offsets: &[usize], dst: &mut [f32]) {
    for (s, row) in dst
        .chunks_exact_mut(width)
        .take(offsets.len() - 1)
        .enumerate()
    {
        let start = offsets[s] * stride;
        row.copy_from_slice(&src[start..start + width]);
    }
}

/// A FastBERT branch's logits for every running sequence, into `ws.logits` (`[B, C]`).
fn fastbert_logits(
    model: &ModelWeights,
    fb: &FastBertBranch,
    ws: &mut Workspace,
    t: usize,
    b: usize,
    isa: Isa,
) {
    let h = model.dims.hidden;
    let w = fb.dense_in.n();
    // h = tanh(x @ dense_in^T + b) on every token.
    fb.dense_in
        .forward(&ws.x[..t * h], t, &mut ws.bh[..t * w], isa);
    par_map_rows(&mut ws.bh[..t * w], w, |rows| tanh_in_place(isa, rows));
    // Self-attention, [CLS] query only (the branch reads nothing but h[CLS] afterwards), with
    // the key and value projections folded into it: no token's key or value is formed.
    gather_cls(&ws.bh[..t * w], w, w, &ws.offsets, &mut ws.cls_a[..b * w]);
    fb.query
        .forward(&ws.cls_a[..b * w], b, &mut ws.cls_b[..b * w], isa);
    fb.attention.forward(
        isa,
        &ws.cls_b[..b * w],
        &ws.bh[..t * w],
        &ws.offsets,
        &mut ws.scores,
        &mut ws.cls_a[..b * w],
    );
    fb.attn_out
        .forward(&ws.cls_a[..b * w], b, &mut ws.cls_b[..b * w], isa);
    // c = tanh(h[CLS] @ dense^T + b); logits = c @ classifier^T + b.
    fb.dense
        .forward(&ws.cls_b[..b * w], b, &mut ws.cls_a[..b * w], isa);
    tanh_in_place(isa, &mut ws.cls_a[..b * w]);
    fb.classifier
        .forward(&ws.cls_a[..b * w], b, &mut ws.logits, isa);
}

/// `classifier(tanh(pooler(x[CLS])))` for every running sequence, into `ws.logits`; the `[CLS]`
/// rows are `xc[..b * H]` (see [`cls_rows`]).
fn head_logits(model: &ModelWeights, ws: &mut Workspace, b: usize, isa: Isa) -> Result<()> {
    let Head::Classifier(head) = &model.head else {
        return Err(Error::input(
            "a masked_lm bundle has no classifier head; ask it for masked-LM candidates instead",
        ));
    };
    let h = model.dims.hidden;
    head.pooler
        .forward(&ws.xc[..b * h], b, &mut ws.cls_b[..b * h], isa);
    tanh_in_place(isa, &mut ws.cls_b[..b * h]);
    head.classifier
        .forward(&ws.cls_b[..b * h], b, &mut ws.logits, isa);
    Ok(())
}

/// Finishes the sequences whose branch uncertainty is `< speed` (their logits and `layer` go to
/// the outputs, at their input row) and compacts the rest: hidden states move down over the
/// finished ones (and so do their `qkv` rows, when `with_qkv`: the layer is not finished yet),
/// offsets and rows are rewritten. Returns the new `(sequences, tokens)`.
fn exit_and_compact(
    ws: &mut Workspace,
    h: usize,
    c: usize,
    layer: usize,
    speed: f32,
    out: &mut Outputs,
    with_qkv: bool,
) -> (usize, usize) {
    let b = ws.seq_row.len();
    let speed = f64::from(speed);
    let (mut kept, mut new_t, mut start) = (0, 0, 0);
    for s in 0..b {
        // offsets[s + 1] is still the old value: writes below only reach offsets[kept] with
        // kept <= s + 1, and equal indices hold equal values while nothing has exited.
        let end = ws.offsets[s + 1];
        let row = ws.seq_row[s];
        let logits = &ws.logits[s * c..(s + 1) * c];
        if uncertainty(logits) < speed {
            out.logits[row * c..(row + 1) * c].copy_from_slice(logits);
            out.exits[row] = layer;
        } else {
            if new_t != start {
                ws.x.copy_within(start * h..end * h, new_t * h);
                if with_qkv {
                    ws.qkv
                        .copy_within(start * 3 * h..end * 3 * h, new_t * 3 * h);
                }
            }
            new_t += end - start;
            ws.seq_row[kept] = row;
            kept += 1;
            ws.offsets[kept] = new_t;
        }
        start = end;
    }
    ws.offsets.truncate(kept + 1);
    ws.seq_row.truncate(kept);
    ws.index_tokens();
    (kept, new_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Activation;
    use crate::gemm::PackedWeights;
    use crate::model::{
        BranchAttention, ClassifierHead, Dims, Embeddings, EncoderLayer, Exit, F32Linear,
        FastBertBranch, Int8Linear, Linear,
    };
    use crate::quant::quantize_weights;
    use crate::testing::SplitMix64;

    const H: usize = 32;
    const F: usize = 64;
    const W: usize = 16;
    const C: usize = 3;
    const LAYERS: usize = 4;

    fn values(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.normal() * scale).collect()
    }

    fn f32_linear(rng: &mut SplitMix64, n: usize, k: usize) -> F32Linear {
        let w = values(rng, n * k, 1.0 / (k as f32).sqrt());
        F32Linear::new(&w, n, k, values(rng, n, 0.1)).unwrap()
    }

    fn int8_linear(rng: &mut SplitMix64, n: usize, k: usize) -> Linear {
        let w = values(rng, n * k, 1.0 / (k as f32).sqrt());
        let packed = PackedWeights::new(&quantize_weights(&w, n, k).unwrap()).unwrap();
        Linear::Int8(Int8Linear::new(packed, values(rng, n, 0.1)).unwrap())
    }

    fn norm(rng: &mut SplitMix64, h: usize) -> LayerNormWeights {
        LayerNormWeights {
            weight: (0..h).map(|_| rng.uniform(0.8, 1.2)).collect(),
            bias: values(rng, h, 0.05),
        }
    }

    /// A small int8 BERT with a FastBERT exit after layer 1 and a linear one after layer 2.
    fn model(act: Activation) -> ModelWeights {
        let mut rng = SplitMix64::new(47);
        let (vocab, positions) = (50, 24);
        let embeddings = Embeddings {
            word: values(&mut rng, vocab * H, 1.0),
            position: values(&mut rng, positions * H, 0.3),
            token_type: values(&mut rng, 2 * H, 0.3),
            norm: norm(&mut rng, H),
        };
        let layers = (0..LAYERS)
            .map(|_| EncoderLayer {
                qkv: int8_linear(&mut rng, 3 * H, H),
                attn_out: int8_linear(&mut rng, H, H),
                attn_norm: norm(&mut rng, H),
                ffn_in: int8_linear(&mut rng, F, H),
                ffn_out: int8_linear(&mut rng, H, F),
                ffn_norm: norm(&mut rng, H),
            })
            .collect();
        let fastbert = FastBertBranch {
            dense_in: f32_linear(&mut rng, W, H),
            query: f32_linear(&mut rng, W, W),
            attention: BranchAttention::new(
                values(&mut rng, W * W, 0.25),
                &values(&mut rng, W * W, 0.25),
                values(&mut rng, W, 0.1),
                W,
                2,
            )
            .unwrap(),
            attn_out: f32_linear(&mut rng, W, W),
            dense: f32_linear(&mut rng, W, W),
            classifier: f32_linear(&mut rng, C, W),
        };
        let exits = vec![
            Exit {
                layer: 1,
                branch: Branch::FastBert(Box::new(fastbert)),
            },
            Exit {
                layer: 2,
                branch: Branch::Linear {
                    classifier: f32_linear(&mut rng, C, H),
                },
            },
        ];
        ModelWeights {
            dims: Dims {
                vocab,
                positions,
                token_types: 2,
                hidden: H,
                heads: 4,
                intermediate: F,
                layers: LAYERS,
                outputs: C,
                branch_width: W,
                branch_heads: 2,
                eps: 1e-12,
                act,
                regression: false,
            },
            embeddings,
            layers,
            head: Head::Classifier(ClassifierHead {
                pooler: f32_linear(&mut rng, H, H),
                classifier: f32_linear(&mut rng, C, H),
            }),
            exits,
        }
    }

    /// Sequences of 1 to 23 tokens (vector tiles full, partial and ragged).
    fn sequences() -> Vec<Vec<u32>> {
        let mut rng = SplitMix64::new(53);
        [2, 23, 9, 1, 16, 17, 5, 12]
            .iter()
            .map(|&n| (0..n).map(|_| rng.below(50) as u32).collect())
            .collect()
    }

    /// Logits and exit layers of `seqs`, run together.
    fn run(
        model: &ModelWeights,
        isa: Isa,
        seqs: &[Vec<u32>],
        speed: f32,
    ) -> (Vec<u32>, Vec<usize>) {
        let mut ws = Workspace::default();
        ws.begin();
        for s in seqs {
            ws.push_seq(s, None);
        }
        let mut logits = vec![f32::NAN; seqs.len() * C];
        let mut exits = vec![0; seqs.len()];
        forward(model, &mut ws, speed, isa, &mut logits, &mut exits).unwrap();
        (logits.into_iter().map(f32::to_bits).collect(), exits)
    }

    /// At every level: the same call twice gives the same bits, and so does each sequence alone.
    /// Across levels: every kernel gives the same bits at every level (GELU and attention use
    /// fused multiply-adds at each), so logits and exit layers are identical.
    #[test]
    fn every_level_gives_the_same_bits() {
        let seqs = sequences();
        for act in [Activation::Gelu, Activation::GeluNew] {
            let model = model(act);
            for speed in [0.0, 0.8, 0.9, 1.0] {
                let mut by_level = Vec::new();
                for isa in Isa::available() {
                    let got = run(&model, isa, &seqs, speed);
                    assert_eq!(got, run(&model, isa, &seqs, speed), "{isa} {speed}");
                    for (i, s) in seqs.iter().enumerate() {
                        let (logits, exits) = run(&model, isa, std::slice::from_ref(s), speed);
                        assert_eq!(logits, got.0[i * C..(i + 1) * C], "{isa} row {i}");
                        assert_eq!(exits, [got.1[i]], "{isa} row {i}");
                    }
                    by_level.push((isa, got));
                }
                let (first, want) = &by_level[0];
                for (isa, got) in &by_level[1..] {
                    assert_eq!(got, want, "{isa} vs {first}, speed {speed}");
                }
            }
        }
    }
}
