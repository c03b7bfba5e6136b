//! Helpers of the core's integration tests beyond `tinyfast_core::testing` (which writes the tiny
//! bundles): a literal, padded forward pass of docs/bundle.md to check the runtime against, and
//! sample texts.

#![allow(dead_code)]

use tinyfast_core::quant::{quantize_activations, quantize_weights};
pub use tinyfast_core::testing::*;

/// The reference forward pass of a test [`Model`].
pub trait Reference {
    /// For each row (ids, token types): the logits of every exit branch (by layer) and of the head.
    fn reference(&self, rows: &[(Vec<u32>, Vec<u32>)], int8: bool) -> Vec<RowLogits>;
}

impl Reference for Model {
    fn reference(&self, rows: &[(Vec<u32>, Vec<u32>)], int8: bool) -> Vec<RowLogits> {
        Forward(self).reference(rows, int8)
    }
}

/// The literal forward pass of docs/bundle.md, padded and masked.
struct Forward<'a>(&'a Model);

impl Forward<'_> {
    /// `y = x W^T + b` for `rows` rows, f32 or int8 (per-token quantization, as the doc says).
    fn linear(&self, prefix: &str, x: &[f32], rows: usize, int8: bool) -> Vec<f32> {
        let w = self.0.get(&format!("{prefix}.weight"));
        let b = self.0.get(&format!("{prefix}.bias"));
        let (n, k) = (b.len(), x.len() / rows);
        let mut y = vec![0f32; rows * n];
        let quantized = int8 && prefix.starts_with("layers.");
        if quantized {
            let qw = quantize_weights(w, n, k).unwrap();
            let qa = quantize_activations(x, rows, k).unwrap();
            for t in 0..rows {
                for o in 0..n {
                    let mut acc = 0i64;
                    let mut colsum = 0i64;
                    for kk in 0..k {
                        let wq = i64::from(qw.data()[o * k + kk]);
                        acc += i64::from(qa.q()[t * k + kk]) * wq;
                        colsum += wq;
                    }
                    let d = acc - i64::from(qa.zero_points()[t]) * colsum;
                    y[t * n + o] = qa.scales()[t] * qw.scales()[o] * d as f32 + b[o];
                }
            }
        } else {
            for t in 0..rows {
                for o in 0..n {
                    let mut acc = 0f64;
                    for kk in 0..k {
                        acc += f64::from(x[t * k + kk]) * f64::from(w[o * k + kk]);
                    }
                    y[t * n + o] = acc as f32 + b[o];
                }
            }
        }
        y
    }

    fn layer_norm(&self, prefix: &str, x: &mut [f32]) {
        let (w, b) = (
            self.0.get(&format!("{prefix}.weight")),
            self.0.get(&format!("{prefix}.bias")),
        );
        let h = w.len();
        for row in x.chunks_exact_mut(h) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / h as f64;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / h as f64;
            for (i, v) in row.iter_mut().enumerate() {
                *v = ((f64::from(*v) - mean) / (var + 1e-12).sqrt()) as f32 * w[i] + b[i];
            }
        }
    }

    /// Padded multi-head self-attention over `[B, L, W]` with `-inf` on padded keys.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lens: &[usize],
        l: usize,
        w: usize,
        heads: usize,
    ) -> Vec<f32> {
        let d = w / heads;
        let mut out = vec![0f32; lens.len() * l * w];
        for (b, &len) in lens.iter().enumerate() {
            for h in 0..heads {
                for i in 0..l {
                    let mut s = vec![0f32; l];
                    for (j, sj) in s.iter_mut().enumerate() {
                        let mut dot = 0f32;
                        for c in 0..d {
                            dot += q[(b * l + i) * w + h * d + c] * k[(b * l + j) * w + h * d + c];
                        }
                        let mask = if j < len { 0.0 } else { f32::NEG_INFINITY };
                        *sj = dot / (d as f32).sqrt() + mask;
                    }
                    let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for c in 0..d {
                        let mut acc = 0f32;
                        for j in 0..l {
                            acc += e[j] / z * v[(b * l + j) * w + h * d + c];
                        }
                        out[(b * l + i) * w + h * d + c] = acc;
                    }
                }
            }
        }
        out
    }

    /// For each row: the logits of every exit branch (by layer) and of the head.
    pub fn reference(&self, rows: &[(Vec<u32>, Vec<u32>)], int8: bool) -> Vec<RowLogits> {
        let s = &self.0.spec;
        let (h, bsz) = (s.hidden, rows.len());
        let lens: Vec<usize> = rows.iter().map(|r| r.0.len()).collect();
        let l = *lens.iter().max().unwrap();
        let n = bsz * l;
        let (word, pos, ty) = (
            self.0.get("embeddings.word"),
            self.0.get("embeddings.position"),
            self.0.get("embeddings.token_type"),
        );
        let mut x = vec![0f32; n * h];
        for (b, (ids, types)) in rows.iter().enumerate() {
            for p in 0..l {
                let (id, t) = if p < ids.len() {
                    (ids[p] as usize, types[p] as usize)
                } else {
                    (0, 0)
                };
                for c in 0..h {
                    x[(b * l + p) * h + c] = word[id * h + c] + pos[p * h + c] + ty[t * h + c];
                }
            }
        }
        self.layer_norm("embeddings.norm", &mut x);
        let cls = |x: &[f32], w: usize| -> Vec<f32> {
            (0..bsz)
                .flat_map(|b| x[b * l * w..b * l * w + w].to_vec())
                .collect()
        };
        let mut exits: Vec<Vec<(usize, Vec<f32>)>> = vec![Vec::new(); bsz];
        let c_out = if s.regression { 1 } else { s.labels };
        for layer in 0..s.layers {
            let p = format!("layers.{layer}");
            let qkv = self.linear(&format!("{p}.qkv"), &x, n, int8);
            let split = |part: usize| -> Vec<f32> {
                (0..n)
                    .flat_map(|t| qkv[t * 3 * h + part * h..t * 3 * h + (part + 1) * h].to_vec())
                    .collect()
            };
            let a = Self::attention(&split(0), &split(1), &split(2), &lens, l, h, s.heads);
            let o = self.linear(&format!("{p}.attn_out"), &a, n, int8);
            for (xi, oi) in x.iter_mut().zip(&o) {
                *xi += oi;
            }
            self.layer_norm(&format!("{p}.attn_norm"), &mut x);
            let mut f = self.linear(&format!("{p}.ffn_in"), &x, n, int8);
            for v in f.iter_mut() {
                *v = if s.act == "gelu" {
                    0.5 * *v * (1.0 + libm::erff(*v / std::f32::consts::SQRT_2))
                } else {
                    0.5 * *v * (1.0 + (0.797_884_6 * (*v + 0.044715 * *v * *v * *v)).tanh())
                };
            }
            let o = self.linear(&format!("{p}.ffn_out"), &f, n, int8);
            for (xi, oi) in x.iter_mut().zip(&o) {
                *xi += oi;
            }
            self.layer_norm(&format!("{p}.ffn_norm"), &mut x);
            if let Some(&(k, kind)) = s.exits.iter().find(|e| e.0 == layer + 1) {
                let p = format!("exits.{k}");
                let logits = if kind == "linear" {
                    self.linear(&format!("{p}.classifier"), &cls(&x, h), bsz, false)
                } else {
                    let w = s.branch.0;
                    let mut hb = self.linear(&format!("{p}.dense_in"), &x, n, false);
                    hb.iter_mut().for_each(|v| *v = v.tanh());
                    let q = self.linear(&format!("{p}.query"), &hb, n, false);
                    let kk = self.linear(&format!("{p}.key"), &hb, n, false);
                    let vv = self.linear(&format!("{p}.value"), &hb, n, false);
                    let a = Self::attention(&q, &kk, &vv, &lens, l, w, s.branch.1);
                    let a = self.linear(&format!("{p}.attn_out"), &a, n, false);
                    let mut c = self.linear(&format!("{p}.dense"), &cls(&a, w), bsz, false);
                    c.iter_mut().for_each(|v| *v = v.tanh());
                    self.linear(&format!("{p}.classifier"), &c, bsz, false)
                };
                for (b, e) in exits.iter_mut().enumerate() {
                    e.push((k, logits[b * c_out..(b + 1) * c_out].to_vec()));
                }
            }
        }
        let mut pooled = self.linear("head.pooler", &cls(&x, h), bsz, false);
        pooled.iter_mut().for_each(|v| *v = v.tanh());
        let head = self.linear("head.classifier", &pooled, bsz, false);
        exits
            .into_iter()
            .enumerate()
            .map(|(b, e)| (e, head[b * c_out..(b + 1) * c_out].to_vec()))
            .collect()
    }
}

/// One row's reference logits: every exit branch's (by 1-based layer), then the head's.
pub type RowLogits = (Vec<(usize, Vec<f32>)>, Vec<f32>);

/// `entropy(softmax(z)) / ln C` in f64.
pub fn uncertainty(z: &[f32]) -> f64 {
    let m = z
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let e: Vec<f64> = z.iter().map(|&v| (f64::from(v) - m).exp()).collect();
    let s: f64 = e.iter().sum();
    let h: f64 = e
        .iter()
        .map(|&x| x / s)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    h / (z.len() as f64).ln()
}

/// Sample texts of varied lengths.
pub fn texts() -> Vec<String> {
    let mut out: Vec<String> = vec![
        "the movie is good".into(),
        "".into(),
        "this film was terrible , boring and not fun !".into(),
        "i love it".into(),
        "great actors but the plot was very bad and the film is boring , boring , boring".into(),
        "x".into(),
        "hate".into(),
        "a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a".into(),
    ];
    let mut rng = SplitMix64::new(99);
    for _ in 0..12 {
        let n = 1 + rng.index(20);
        let words: Vec<&str> = (0..n)
            .map(|_| VOCAB[5 + rng.index(VOCAB.len() - 5)])
            .collect();
        out.push(words.join(" "));
    }
    out
}
