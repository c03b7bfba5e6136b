//! Helpers of the CLI tests: a tiny bundle written from scratch (random weights from a fixed seed, a
//! small WordPiece tokenizer.json, a hand-written safetensors file) and a way to run the binary.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Map, Value};
use tinyfast_core::quant::quantize_weights;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tinyfast-cli-{}-{tag}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn arg(&self) -> String {
        self.0.to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*, enough for test weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[-scale, scale)`.
    fn weight(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
    }
}

/// The words of the test tokenizer; ids are positions.
pub const WORDS: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "movie", "film", "the", "a", "is", "was",
    "not", "very", "fun", "dull", "plot", "i", "it", "love", "hate", "##s", "##ly", ",", ".", "!",
];

pub const LABELS: &[&str] = &["negative", "positive", "neutral"];
pub const LAYERS: usize = 3;
pub const MAX_LENGTH: usize = 20;
const HIDDEN: usize = 16;
const HEADS: usize = 2;
const FFN: usize = 32;
const POSITIONS: usize = 24;
const BRANCH: usize = 8;

/// What to write.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    pub int8: bool,
    pub regression: bool,
}

impl Default for Kind {
    fn default() -> Self {
        Kind {
            int8: true,
            regression: false,
        }
    }
}

/// Writes a bundle of `kind` into a new directory: 3 layers of width 16, a linear exit after layer
/// 1 and a fastbert exit after layer 2.
pub fn bundle(kind: Kind) -> TempDir {
    let dir = TempDir::new("bundle");
    write_bundle(dir.path(), kind);
    dir
}

pub fn write_bundle(dir: &Path, kind: Kind) {
    let c = if kind.regression { 1 } else { LABELS.len() };
    let v = WORDS.len();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tensors: Vec<(String, Vec<usize>, Tensor)> = Vec::new();
    let mut f32t = |name: String, shape: Vec<usize>, scale: f32, center: f32| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| center + rng.weight(scale)).collect();
        (name, shape, Tensor::F32(data))
    };
    let mut push = |t: (String, Vec<usize>, Tensor)| tensors.push(t);
    push(f32t("embeddings.word".into(), vec![v, HIDDEN], 1.0, 0.0));
    push(f32t(
        "embeddings.position".into(),
        vec![POSITIONS, HIDDEN],
        0.5,
        0.0,
    ));
    push(f32t(
        "embeddings.token_type".into(),
        vec![2, HIDDEN],
        0.5,
        0.0,
    ));
    push(f32t(
        "embeddings.norm.weight".into(),
        vec![HIDDEN],
        0.1,
        1.0,
    ));
    push(f32t("embeddings.norm.bias".into(), vec![HIDDEN], 0.1, 0.0));
    for l in 0..LAYERS {
        for (lin, n, k) in [
            ("qkv", 3 * HIDDEN, HIDDEN),
            ("attn_out", HIDDEN, HIDDEN),
            ("ffn_in", FFN, HIDDEN),
            ("ffn_out", HIDDEN, FFN),
        ] {
            let p = format!("layers.{l}.{lin}");
            let (name, shape, w) = f32t(format!("{p}.weight"), vec![n, k], 0.5, 0.0);
            let Tensor::F32(values) = &w else {
                unreachable!()
            };
            if kind.int8 {
                let q = quantize_weights(values, n, k).unwrap();
                push((name, shape, Tensor::I8(q.data().to_vec())));
                push((
                    format!("{p}.scale"),
                    vec![n],
                    Tensor::F32(q.scales().to_vec()),
                ));
            } else {
                push((name, shape, w));
            }
            push(f32t(format!("{p}.bias"), vec![n], 0.1, 0.0));
            if lin == "attn_out" || lin == "ffn_out" {
                let norm = if lin == "attn_out" {
                    "attn_norm"
                } else {
                    "ffn_norm"
                };
                push(f32t(
                    format!("layers.{l}.{norm}.weight"),
                    vec![HIDDEN],
                    0.1,
                    1.0,
                ));
                push(f32t(
                    format!("layers.{l}.{norm}.bias"),
                    vec![HIDDEN],
                    0.1,
                    0.0,
                ));
            }
        }
    }
    for (name, n, k) in [("pooler", HIDDEN, HIDDEN), ("classifier", c, HIDDEN)] {
        push(f32t(format!("head.{name}.weight"), vec![n, k], 0.5, 0.0));
        push(f32t(format!("head.{name}.bias"), vec![n], 0.1, 0.0));
    }
    push(f32t(
        "exits.1.classifier.weight".into(),
        vec![c, HIDDEN],
        1.0,
        0.0,
    ));
    push(f32t("exits.1.classifier.bias".into(), vec![c], 0.1, 0.0));
    for (name, n, k) in [
        ("dense_in", BRANCH, HIDDEN),
        ("query", BRANCH, BRANCH),
        ("key", BRANCH, BRANCH),
        ("value", BRANCH, BRANCH),
        ("attn_out", BRANCH, BRANCH),
        ("dense", BRANCH, BRANCH),
        ("classifier", c, BRANCH),
    ] {
        push(f32t(format!("exits.2.{name}.weight"), vec![n, k], 0.7, 0.0));
        push(f32t(format!("exits.2.{name}.bias"), vec![n], 0.1, 0.0));
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors);

    let labels: Vec<&str> = if kind.regression {
        vec![]
    } else {
        LABELS.to_vec()
    };
    let config = json!({
        "format": "tinyfast-bundle",
        "format_version": 1,
        "architecture": {
            "type": "bert", "vocab_size": v, "hidden_size": HIDDEN, "num_layers": LAYERS,
            "num_heads": HEADS, "intermediate_size": FFN, "max_position_embeddings": POSITIONS,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"
        },
        "task": if kind.regression { "regression" } else { "classification" },
        "labels": labels,
        "max_length": MAX_LENGTH,
        "quantization": if kind.int8 { "int8" } else { "none" },
        "exits": [{"layer": 1, "kind": "linear"}, {"layer": 2, "kind": "fastbert"}],
        "branch": {"width": BRANCH, "heads": 2},
        "source": {"model": "cli test"}
    });
    std::fs::write(dir.join("tinyfast.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
}

enum Tensor {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

/// A safetensors file: 8-byte little-endian header length, the JSON header (padded with spaces to
/// a multiple of 8), then the tensors' bytes back to back in the given order.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Tensor)]) {
    let mut header = Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, shape, tensor) in tensors {
        let start = data.len();
        let dtype = match tensor {
            Tensor::F32(v) => {
                v.iter().for_each(|x| data.extend(x.to_le_bytes()));
                "F32"
            }
            Tensor::I8(v) => {
                data.extend(v.iter().map(|&x| x.to_le_bytes()[0]));
                "I8"
            }
        };
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut head = Value::Object(header).to_string().into_bytes();
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(head.len() as u64).to_le_bytes()).unwrap();
    file.write_all(&head).unwrap();
    file.write_all(&data).unwrap();
}

/// A BERT-like WordPiece tokenizer over [`WORDS`] with `[CLS] A [SEP] (B [SEP])` post-processing.
fn tokenizer_json() -> Value {
    let vocab: Map<String, Value> = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let added: Vec<Value> = WORDS[..4]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            json!({"id": i, "content": w, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let special =
        |name: &str, type_id: u32| json!({"SpecialToken": {"id": name, "type_id": type_id}});
    let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special("[CLS]", 0), seq("A", 0), special("[SEP]", 0)],
            "pair": [special("[CLS]", 0), seq("A", 0), special("[SEP]", 0), seq("B", 1),
                     special("[SEP]", 1)],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

/// What a run of the binary gave.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tinyfast-rt args...` with `stdin` as its standard input.
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinyfast-rt"))
        .args(args)
        .env_remove("TINYFAST_KERNEL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    // A separate writer, so that a large input cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs and expects success; returns stdout.
pub fn ok(args: &[&str], stdin: &[u8]) -> String {
    let out = run(args, stdin);
    assert_eq!(out.code, 0, "tinyfast-rt {args:?} failed: {}", out.stderr);
    out.stdout
}

/// Parses JSON lines.
pub fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}
