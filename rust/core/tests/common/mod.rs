//! Test helpers: tiny bundles built in the test (random weights from a deterministic generator, a
//! hand-made WordPiece tokenizer.json, a safetensors writer of our own so that tests can also write
//! broken files), and a literal, padded forward pass of docs/bundle.md to check the runtime against.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};
use tinyfast_core::quant::{quantize_activations, quantize_weights};

/// splitmix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly standard normal.
    pub fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * 3.0f32.sqrt()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tinyfast-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Writes a safetensors file holding `tensors` in this order.
pub fn write_safetensors(path: &Path, tensors: &[Tensor]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for t in tensors {
        let start = data.len();
        let dtype = match &t.data {
            Data::F32(v) => {
                for x in v {
                    data.extend_from_slice(&x.to_le_bytes());
                }
                "F32"
            }
            Data::I8(v) => {
                data.extend(v.iter().map(|&x| x as u8));
                "I8"
            }
        };
        header.insert(
            t.name.clone(),
            json!({"dtype": dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

pub const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "movie", "film", "good", "bad",
    "great", "terrible", "is", "was", "not", "very", "and", "but", "i", "it", "this", "that",
    "love", "hate", "fun", "boring", "plot", "actors", "##s", "##ing", "##ed", "##ly", ",", ".",
    "!", "?", "x", "y", "z",
];

/// A BERT-style WordPiece tokenizer.json over [`VOCAB`].
pub fn tokenizer_json() -> String {
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let vocab: serde_json::Map<String, Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[UNK]"), special(2, "[CLS]"),
                         special(3, "[SEP]"), special(4, "[MASK]")],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
    .to_string()
}

/// The shape of a test model.
#[derive(Clone, Debug)]
pub struct Spec {
    pub seed: u64,
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub positions: usize,
    pub types: usize,
    pub labels: usize,
    pub regression: bool,
    pub max_length: usize,
    pub exits: Vec<(usize, &'static str)>,
    pub branch: (usize, usize),
    pub act: &'static str,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            seed: 1,
            vocab: 48,
            hidden: 16,
            heads: 2,
            intermediate: 40,
            layers: 4,
            positions: 40,
            types: 2,
            labels: 3,
            regression: false,
            max_length: 24,
            exits: vec![(1, "fastbert"), (2, "linear"), (3, "fastbert")],
            branch: (8, 2),
            act: "gelu",
        }
    }
}

/// A model with f32 weights (the int8 bundle is derived from them).
#[derive(Clone, Debug)]
pub struct Model {
    pub spec: Spec,
    /// Every f32 tensor, encoder linears included, by docs/bundle.md name.
    pub f32: Vec<Tensor>,
}

impl Model {
    pub fn new(spec: Spec) -> Self {
        let mut rng = Rng::new(spec.seed);
        let s = &spec;
        let (h, f, w) = (s.hidden, s.intermediate, s.branch.0);
        let c = if s.regression { 1 } else { s.labels };
        let mut t = Vec::new();
        let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let n: usize = shape.iter().product();
            let v = (0..n).map(|_| offset + scale * rng.normal()).collect();
            t.push(Tensor {
                name,
                shape,
                data: Data::F32(v),
            });
        };
        add("embeddings.word".into(), vec![s.vocab, h], 1.0, 0.0);
        add("embeddings.position".into(), vec![s.positions, h], 0.5, 0.0);
        add("embeddings.token_type".into(), vec![s.types, h], 0.5, 0.0);
        add("embeddings.norm.weight".into(), vec![h], 0.1, 1.0);
        add("embeddings.norm.bias".into(), vec![h], 0.1, 0.0);
        let ws = 1.0 / (h as f32).sqrt();
        for l in 0..s.layers {
            let p = format!("layers.{l}");
            add(format!("{p}.qkv.weight"), vec![3 * h, h], 2.0 * ws, 0.0);
            add(format!("{p}.qkv.bias"), vec![3 * h], 0.1, 0.0);
            add(format!("{p}.attn_out.weight"), vec![h, h], ws, 0.0);
            add(format!("{p}.attn_out.bias"), vec![h], 0.1, 0.0);
            add(format!("{p}.attn_norm.weight"), vec![h], 0.1, 1.0);
            add(format!("{p}.attn_norm.bias"), vec![h], 0.1, 0.0);
            add(format!("{p}.ffn_in.weight"), vec![f, h], ws, 0.0);
            add(format!("{p}.ffn_in.bias"), vec![f], 0.1, 0.0);
            add(
                format!("{p}.ffn_out.weight"),
                vec![h, f],
                1.0 / (f as f32).sqrt(),
                0.0,
            );
            add(format!("{p}.ffn_out.bias"), vec![h], 0.1, 0.0);
            add(format!("{p}.ffn_norm.weight"), vec![h], 0.1, 1.0);
            add(format!("{p}.ffn_norm.bias"), vec![h], 0.1, 0.0);
        }
        add("head.pooler.weight".into(), vec![h, h], ws, 0.0);
        add("head.pooler.bias".into(), vec![h], 0.1, 0.0);
        add("head.classifier.weight".into(), vec![c, h], 1.0, 0.0);
        add("head.classifier.bias".into(), vec![c], 0.1, 0.0);
        for &(layer, kind) in &s.exits {
            let p = format!("exits.{layer}");
            if kind == "linear" {
                add(format!("{p}.classifier.weight"), vec![c, h], 0.5, 0.0);
                add(format!("{p}.classifier.bias"), vec![c], 0.1, 0.0);
            } else {
                let ww = 1.0 / (w as f32).sqrt();
                add(format!("{p}.dense_in.weight"), vec![w, h], ws, 0.0);
                add(format!("{p}.dense_in.bias"), vec![w], 0.1, 0.0);
                for lin in ["query", "key", "value", "attn_out", "dense"] {
                    add(format!("{p}.{lin}.weight"), vec![w, w], 2.0 * ww, 0.0);
                    add(format!("{p}.{lin}.bias"), vec![w], 0.1, 0.0);
                }
                add(format!("{p}.classifier.weight"), vec![c, w], 1.5, 0.0);
                add(format!("{p}.classifier.bias"), vec![c], 0.1, 0.0);
            }
        }
        Model { spec, f32: t }
    }

    pub fn get(&self, name: &str) -> &[f32] {
        match &self.f32.iter().find(|t| t.name == name).unwrap().data {
            Data::F32(v) => v,
            Data::I8(_) => unreachable!(),
        }
    }

    pub fn set(&mut self, name: &str, values: Vec<f32>) {
        let t = self.f32.iter_mut().find(|t| t.name == name).unwrap();
        assert_eq!(values.len(), t.shape.iter().product::<usize>());
        t.data = Data::F32(values);
    }

    fn is_encoder_linear_weight(name: &str) -> bool {
        name.starts_with("layers.") && name.ends_with(".weight") && !name.contains("norm")
    }

    /// The tensors of the bundle: f32 as is, or int8 (encoder linears quantized per channel).
    pub fn tensors(&self, int8: bool) -> Vec<Tensor> {
        let mut out = Vec::new();
        for t in &self.f32 {
            if int8 && Self::is_encoder_linear_weight(&t.name) {
                let Data::F32(v) = &t.data else {
                    unreachable!()
                };
                let q = quantize_weights(v, t.shape[0], t.shape[1]).unwrap();
                out.push(Tensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    data: Data::I8(q.data().to_vec()),
                });
                out.push(Tensor {
                    name: t.name.replace(".weight", ".scale"),
                    shape: vec![t.shape[0]],
                    data: Data::F32(q.scales().to_vec()),
                });
            } else {
                out.push(t.clone());
            }
        }
        out
    }

    pub fn config(&self, int8: bool) -> Value {
        let s = &self.spec;
        let labels: Vec<String> = if s.regression {
            vec![]
        } else {
            (0..s.labels).map(|i| format!("label{i}")).collect()
        };
        let exits: Vec<Value> = s
            .exits
            .iter()
            .map(|&(layer, kind)| json!({"layer": layer, "kind": kind}))
            .collect();
        json!({
            "format": "tinyfast-bundle",
            "format_version": 1,
            "architecture": {
                "type": "bert", "vocab_size": s.vocab, "hidden_size": s.hidden,
                "num_layers": s.layers, "num_heads": s.heads, "intermediate_size": s.intermediate,
                "max_position_embeddings": s.positions, "type_vocab_size": s.types,
                "layer_norm_eps": 1e-12, "hidden_act": s.act
            },
            "task": if s.regression { "regression" } else { "classification" },
            "labels": labels,
            "max_length": s.max_length,
            "quantization": if int8 { "int8" } else { "none" },
            "exits": exits,
            "branch": {"width": s.branch.0, "heads": s.branch.1},
            "source": {"model": "test", "tinyfast_version": "0.1.0"}
        })
    }

    /// Writes the bundle into a new temporary directory.
    pub fn write(&self, int8: bool) -> TempDir {
        let dir = TempDir::new(if int8 { "int8" } else { "f32" });
        self.write_to(dir.path(), int8);
        dir
    }

    pub fn write_to(&self, dir: &Path, int8: bool) {
        std::fs::write(dir.join("tinyfast.json"), self.config(int8).to_string()).unwrap();
        write_safetensors(&dir.join("model.safetensors"), &self.tensors(int8));
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    }

    // ---- The literal forward pass of docs/bundle.md, padded and masked, for reference. ----

    /// `y = x W^T + b` for `rows` rows, f32 or int8 (per-token quantization, as the doc says).
    fn linear(&self, prefix: &str, x: &[f32], rows: usize, int8: bool) -> Vec<f32> {
        let w = self.get(&format!("{prefix}.weight"));
        let b = self.get(&format!("{prefix}.bias"));
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
            self.get(&format!("{prefix}.weight")),
            self.get(&format!("{prefix}.bias")),
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
        let s = &self.spec;
        let (h, bsz) = (s.hidden, rows.len());
        let lens: Vec<usize> = rows.iter().map(|r| r.0.len()).collect();
        let l = *lens.iter().max().unwrap();
        let n = bsz * l;
        let (word, pos, ty) = (
            self.get("embeddings.word"),
            self.get("embeddings.position"),
            self.get("embeddings.token_type"),
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
    let mut rng = Rng::new(99);
    for _ in 0..12 {
        let n = 1 + rng.below(20);
        let words: Vec<&str> = (0..n)
            .map(|_| VOCAB[5 + rng.below(VOCAB.len() - 5)])
            .collect();
        out.push(words.join(" "));
    }
    out
}
