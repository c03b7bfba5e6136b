//! Test helpers shared by the core's unit and integration tests and by the CLI's tests (the
//! `testing` cargo feature; always compiled for the core's own unit tests). Not a stable API.
//!
//! - [`SplitMix64`]: a small deterministic generator for test data;
//! - [`TempDir`]: a directory removed when dropped;
//! - [`write_safetensors`]: a safetensors writer of our own, so that tests can also write broken
//!   files;
//! - [`weight_residual`]: the int8 codes of what rounding left of a weight matrix (a bundle's
//!   `residual_weight`, which export writes);
//! - [`Model`]: a tiny BERT of a given [`Spec`] with random weights, written as a runtime bundle
//!   (`tinyfast.json`, `model.safetensors`, and the WordPiece `tokenizer.json` of
//!   [`tokenizer_json`] over [`VOCAB`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

use crate::quant::{quantize_weights, QuantizedMatrix};

pub use crate::rng::SplitMix64;

/// The int8 codes of `w - dequantize(quantize_weights(w))` (`[rows_out, cols_in]`): the residual
/// weights of docs/bundle.md, "Residual layers", as export computes them.
pub fn weight_residual(w: &[f32], rows_out: usize, cols_in: usize) -> QuantizedMatrix {
    let codes = quantize_weights(w, rows_out, cols_in).unwrap();
    let left: Vec<f32> = w
        .iter()
        .zip(codes.dequantize())
        .map(|(a, b)| a - b)
        .collect();
    quantize_weights(&left, rows_out, cols_in).unwrap()
}

/// A fresh directory under the system temp dir, removed (with its contents) when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `tag` only makes the name readable; the process id and a counter make it unique.
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tinyfast-test-{}-{tag}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> String {
        self.0.to_str().expect("temp dir path is UTF-8").to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tensor's values.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

/// A named tensor as a safetensors file holds it.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Writes a safetensors file holding `tensors` in this order: the 8-byte little-endian header
/// length, the JSON header (padded with spaces to a multiple of 8), then the tensors' bytes back
/// to back. Shapes are written as given, unchecked, so tests can write inconsistent files.
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
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// The words of the test tokenizer; ids are positions.
pub const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "movie", "film", "good", "bad",
    "great", "terrible", "is", "was", "not", "very", "and", "but", "i", "it", "this", "that",
    "love", "hate", "fun", "boring", "plot", "actors", "##s", "##ing", "##ed", "##ly", ",", ".",
    "!", "?", "x", "y", "z",
];

/// BERT's post-processing, `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]`, with `[CLS]` = 2 and
/// `[SEP]` = 3 as in [`VOCAB`].
pub fn bert_post_processor() -> Value {
    json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                           "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}
    })
}

/// A BERT-style WordPiece `tokenizer.json` over [`VOCAB`]: lower-casing BERT normalizer and
/// pre-tokenizer, `[CLS] A [SEP] (B [SEP])` post-processing.
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
        "post_processor": bert_post_processor(),
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
    /// Labels `label0`, `label1`, ... (ignored for regression).
    pub labels: usize,
    pub regression: bool,
    pub max_length: usize,
    /// (1-based layer, "linear" or "fastbert").
    pub exits: Vec<(usize, &'static str)>,
    /// FastBERT branch (width, heads).
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
    /// Random weights from `spec.seed`, scaled so that activations stay of order 1.
    pub fn new(spec: Spec) -> Self {
        let mut rng = SplitMix64::new(spec.seed);
        let s = &spec;
        let (h, f, w) = (s.hidden, s.intermediate, s.branch.0);
        let c = s.outputs();
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
            let fs = 1.0 / (f as f32).sqrt();
            add(format!("{p}.ffn_out.weight"), vec![h, f], fs, 0.0);
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

    /// The f32 values of tensor `name` (panics if there is none).
    pub fn get(&self, name: &str) -> &[f32] {
        let t = self.f32.iter().find(|t| t.name == name);
        match &t.unwrap_or_else(|| panic!("no tensor {name}")).data {
            Data::F32(v) => v,
            Data::I8(_) => unreachable!("the model holds f32 tensors only"),
        }
    }

    /// Replaces the values of tensor `name` (same element count).
    pub fn set(&mut self, name: &str, values: Vec<f32>) {
        let t = self.f32.iter_mut().find(|t| t.name == name);
        let t = t.unwrap_or_else(|| panic!("no tensor {name}"));
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
                    unreachable!("the model holds f32 tensors only")
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

    /// The label names, in id order (empty for regression).
    pub fn labels(&self) -> Vec<String> {
        if self.spec.regression {
            vec![]
        } else {
            (0..self.spec.labels).map(|i| format!("label{i}")).collect()
        }
    }

    /// `tinyfast.json`.
    pub fn config(&self, int8: bool) -> Value {
        let s = &self.spec;
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
            "labels": self.labels(),
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

    /// Writes (or overwrites) the bundle's three files in `dir`.
    pub fn write_to(&self, dir: &Path, int8: bool) {
        std::fs::write(dir.join("tinyfast.json"), self.config(int8).to_string()).unwrap();
        write_safetensors(&dir.join("model.safetensors"), &self.tensors(int8));
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    }
}

impl Spec {
    /// `C`: the number of labels, or 1 for regression.
    pub fn outputs(&self) -> usize {
        if self.regression {
            1
        } else {
            self.labels
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_bundles_load() {
        for int8 in [true, false] {
            let dir = Model::new(Spec::default()).write(int8);
            let bundle = crate::Bundle::load(dir.path()).unwrap();
            assert_eq!(bundle.config.labels, ["label0", "label1", "label2"]);
        }
    }

    #[test]
    fn splitmix64_is_the_reference_sequence() {
        // The first outputs of splitmix64 seeded with 0, as its author's reference code gives.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
