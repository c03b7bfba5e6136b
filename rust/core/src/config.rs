//! `tinyfast.json`: what the model in a bundle is (docs/bundle.md, "tinyfast.json").
//!
//! The file is parsed into a JSON value and every field is read and checked by hand, so that an
//! error names the field by its path (`architecture.hidden_size`, `exits[1].layer`), says what was
//! expected and what was found. Unknown fields are errors too (a typo must not silently fall back to
//! a default); `source` is informational and may hold anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The `format` string of a bundle.
pub const FORMAT: &str = "tinyfast-bundle";
/// The `format_version` this runtime reads.
pub const FORMAT_VERSION: u64 = 1;
/// Largest `tinyfast.json` read, in bytes (real ones are well under a kilobyte).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest hidden, intermediate or branch width accepted: the int8 GEMM's largest inner dimension.
pub const MAX_WIDTH: usize = crate::gemm::MAX_K;

/// The encoder's shape (`architecture`).
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    /// `layer_norm_eps`, as the f32 the runtime uses (checked to be finite and > 0 as an f32).
    pub layer_norm_eps: f32,
    pub hidden_act: Activation,
}

impl Architecture {
    /// `hidden_size / num_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// The feed-forward activation (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: `0.5 x (1 + erf(x / sqrt 2))`, as BERT.
    Gelu,
    /// `gelu_new`: `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`.
    GeluNew,
}

/// `task`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Classification,
    Regression,
    /// A masked language model: its head gives vocabulary logits at chosen token positions
    /// ([`crate::runtime::Runtime::masked_lm_top_k`]); no labels, no exits.
    MaskedLm,
}

/// `quantization`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantization {
    /// Int8 weights with per-output-channel scales for the encoder's four linears per layer.
    Int8,
    /// Everything f32 (`"none"`).
    None,
}

/// The kind of an exit branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// FastBERT's branch: dense + tanh, self-attention, `[CLS]` dense + tanh, classifier.
    FastBert,
    /// `[CLS] -> linear`.
    Linear,
}

/// One entry of `exits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitSpec {
    /// 1-based encoder layer after which the branch runs, in `1..num_layers`.
    pub layer: usize,
    pub kind: ExitKind,
}

/// `branch`: the shape of the fastbert branches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchShape {
    pub width: usize,
    pub heads: usize,
}

/// A validated `tinyfast.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct BundleConfig {
    pub architecture: Architecture,
    pub task: Task,
    /// Label names in id order; empty for regression.
    pub labels: Vec<String>,
    /// Tokens per text or pair, including special tokens; `<= max_position_embeddings`.
    pub max_length: usize,
    pub quantization: Quantization,
    /// `smoothing` (int8 only, default false): every encoder linear has a `.smooth` tensor, one
    /// factor per input feature that its input is multiplied by before it is quantized.
    pub smoothing: bool,
    /// `residual_layers` (int8 only, default none): 0-based layers, strictly increasing, whose
    /// four linears carry residual weights and add the residual passes of docs/bundle.md,
    /// "Residual layers".
    pub residual_layers: Vec<usize>,
    /// Strictly increasing by layer.
    pub exits: Vec<ExitSpec>,
    /// Present whenever an exit is `fastbert`.
    pub branch: Option<BranchShape>,
    /// Informational, as written.
    pub source: Option<Value>,
}

impl BundleConfig {
    /// `C`: the number of labels, or 1 for regression.
    pub fn num_outputs(&self) -> usize {
        match self.task {
            Task::Classification => self.labels.len(),
            Task::Regression => 1,
            Task::MaskedLm => self.architecture.vocab_size,
        }
    }

    /// Parses and validates the text of a `tinyfast.json`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::bundle(file, format!("not valid JSON: {e}")))?;
        let Value::Object(map) = &value else {
            return Err(Error::bundle(
                file,
                format!("expected a JSON object, got {}", kind_of(&value)),
            ));
        };
        let mut top = Obj::new(map, "", file);
        // The format first: another format or version gets that error, not one about its fields.
        let format = top.string("format")?;
        if format != FORMAT {
            return Err(top.err("format", format!("expected \"{FORMAT}\", got \"{format}\"")));
        }
        let version = top.u64("format_version")?;
        if version != FORMAT_VERSION {
            return Err(top.err(
                "format_version",
                format!(
                    "expected {FORMAT_VERSION} (the version this runtime reads), got {version}"
                ),
            ));
        }

        let architecture = parse_architecture(&mut top)?;
        let task = match top.string("task")?.as_str() {
            "classification" => Task::Classification,
            "regression" => Task::Regression,
            "masked_lm" => Task::MaskedLm,
            other => {
                return Err(top.err(
                    "task",
                    format!(
                        "expected \"classification\", \"regression\" or \"masked_lm\", got \
                         \"{other}\""
                    ),
                ))
            }
        };
        let labels = parse_labels(&mut top, task)?;
        let max_length = top.usize("max_length")?;
        if max_length < 2 || max_length > architecture.max_position_embeddings {
            return Err(top.err(
                "max_length",
                format!(
                    "expected 2..={} (room for [CLS] and [SEP], at most \
                     architecture.max_position_embeddings), got {max_length}",
                    architecture.max_position_embeddings
                ),
            ));
        }
        let quantization = match top.string("quantization")?.as_str() {
            "int8" => Quantization::Int8,
            "none" => Quantization::None,
            other => {
                return Err(top.err(
                    "quantization",
                    format!("expected \"int8\" or \"none\", got \"{other}\""),
                ))
            }
        };
        let smoothing = match top.take("smoothing") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(top.err(
                    "smoothing",
                    format!("expected true or false, got {}", describe(other)),
                ))
            }
        };
        if smoothing && quantization != Quantization::Int8 {
            return Err(top.err(
                "smoothing",
                "applies to int8 linears only; this bundle's quantization is \"none\"".to_string(),
            ));
        }
        let residual_layers = parse_residual_layers(&mut top, architecture.num_layers)?;
        if !residual_layers.is_empty() && quantization != Quantization::Int8 {
            return Err(top.err(
                "residual_layers",
                "apply to int8 linears only; this bundle's quantization is \"none\"".to_string(),
            ));
        }
        let exits = parse_exits(&mut top, architecture.num_layers)?;
        if task == Task::MaskedLm && !exits.is_empty() {
            return Err(top.err(
                "exits",
                format!("expected none for a masked_lm bundle, got {}", exits.len()),
            ));
        }
        let branch = parse_branch(&mut top)?;
        if branch.is_none() && exits.iter().any(|e| e.kind == ExitKind::FastBert) {
            return Err(top.err(
                "branch",
                "missing; it is required when an exit is \"fastbert\"".to_string(),
            ));
        }
        let source = top.take("source").cloned();
        top.finish()?;
        Ok(BundleConfig {
            architecture,
            task,
            labels,
            max_length,
            quantization,
            smoothing,
            residual_layers,
            exits,
            branch,
            source,
        })
    }
}

fn parse_architecture(top: &mut Obj) -> Result<Architecture> {
    let mut a = top.object("architecture")?;
    let ty = a.string("type")?;
    if ty != "bert" {
        return Err(a.err("type", format!("expected \"bert\", got \"{ty}\"")));
    }
    let vocab_size = a.positive("vocab_size")?;
    let hidden_size = a.positive("hidden_size")?;
    let num_layers = a.positive("num_layers")?;
    let num_heads = a.positive("num_heads")?;
    let intermediate_size = a.positive("intermediate_size")?;
    let max_position_embeddings = a.positive("max_position_embeddings")?;
    let type_vocab_size = a.positive("type_vocab_size")?;
    for (field, v) in [
        ("hidden_size", hidden_size),
        ("intermediate_size", intermediate_size),
    ] {
        if v > MAX_WIDTH {
            return Err(a.err(field, format!("expected at most {MAX_WIDTH}, got {v}")));
        }
    }
    if hidden_size % num_heads != 0 {
        return Err(a.err(
            "num_heads",
            format!("hidden_size {hidden_size} is not a multiple of num_heads {num_heads}"),
        ));
    }
    let eps = a.number("layer_norm_eps")?;
    let eps32 = eps as f32;
    if !(eps32.is_finite() && eps32 > 0.0) {
        return Err(a.err(
            "layer_norm_eps",
            format!("expected a finite number > 0 (as an f32), got {eps}"),
        ));
    }
    let hidden_act = match a.string("hidden_act")?.as_str() {
        "gelu" => Activation::Gelu,
        "gelu_new" => Activation::GeluNew,
        other => {
            return Err(a.err(
                "hidden_act",
                format!("expected \"gelu\" or \"gelu_new\", got \"{other}\""),
            ))
        }
    };
    a.finish()?;
    Ok(Architecture {
        vocab_size,
        hidden_size,
        num_layers,
        num_heads,
        intermediate_size,
        max_position_embeddings,
        type_vocab_size,
        layer_norm_eps: eps32,
        hidden_act,
    })
}

fn parse_labels(top: &mut Obj, task: Task) -> Result<Vec<String>> {
    let items = top.array("labels")?;
    let mut labels = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        match v {
            Value::String(s) => labels.push(s.clone()),
            other => {
                return Err(top.err(
                    &format!("labels[{i}]"),
                    format!("expected a string, got {}", kind_of(other)),
                ))
            }
        }
    }
    match task {
        Task::Classification if labels.len() < 2 => Err(top.err(
            "labels",
            format!(
                "a classification bundle needs at least 2 labels, got {}",
                labels.len()
            ),
        )),
        Task::Regression | Task::MaskedLm if !labels.is_empty() => Err(top.err(
            "labels",
            format!(
                "expected [] for {}, got {} labels",
                if task == Task::Regression {
                    "regression"
                } else {
                    "masked_lm"
                },
                labels.len()
            ),
        )),
        _ => Ok(labels),
    }
}

fn parse_residual_layers(top: &mut Obj, num_layers: usize) -> Result<Vec<usize>> {
    let Some(value) = top.take("residual_layers") else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(top.err(
            "residual_layers",
            format!("expected an array of layer indices, got {}", kind_of(value)),
        ));
    };
    let mut layers: Vec<usize> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let lo = layers.last().map_or(0, |prev| prev + 1);
        let layer = item.as_u64().and_then(|v| usize::try_from(v).ok());
        match layer {
            Some(l) if (lo..num_layers).contains(&l) => layers.push(l),
            _ => {
                return Err(top.err(
                    &format!("residual_layers[{i}]"),
                    format!(
                        "expected a layer index in {lo}..={} (0-based, strictly increasing), \
                         got {}",
                        num_layers.saturating_sub(1),
                        describe(item)
                    ),
                ))
            }
        }
    }
    Ok(layers)
}

fn parse_exits(top: &mut Obj, num_layers: usize) -> Result<Vec<ExitSpec>> {
    let Some(value) = top.take("exits") else {
        return Ok(Vec::new());
    };
    let file = top.file.clone();
    let Value::Array(items) = value else {
        return Err(Error::bundle(
            file,
            format!("field `exits`: expected an array, got {}", kind_of(value)),
        ));
    };
    let mut exits: Vec<ExitSpec> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("exits[{i}]");
        let Value::Object(map) = item else {
            return Err(Error::bundle(
                &file,
                format!("field `{path}`: expected an object, got {}", kind_of(item)),
            ));
        };
        let mut e = Obj::new(map, &path, &file);
        let layer = e.usize("layer")?;
        let lo = exits.last().map_or(1, |prev| prev.layer + 1);
        if layer < lo || layer >= num_layers {
            let why = if layer >= lo {
                format!(
                    "the last layer is answered by the head, so exits run after layers 1..={}",
                    num_layers - 1
                )
            } else if lo > 1 {
                format!(
                    "exits must be strictly increasing and the previous one is {}",
                    lo - 1
                )
            } else {
                "layers are 1-based".to_string()
            };
            return Err(e.err(
                "layer",
                format!(
                    "expected {lo}..={} ({why}), got {layer}",
                    num_layers.saturating_sub(1)
                ),
            ));
        }
        let kind = match e.string("kind")?.as_str() {
            "fastbert" => ExitKind::FastBert,
            "linear" => ExitKind::Linear,
            other => {
                return Err(e.err(
                    "kind",
                    format!("expected \"fastbert\" or \"linear\", got \"{other}\""),
                ))
            }
        };
        e.finish()?;
        exits.push(ExitSpec { layer, kind });
    }
    Ok(exits)
}

fn parse_branch(top: &mut Obj) -> Result<Option<BranchShape>> {
    match top.take("branch") {
        None | Some(Value::Null) => return Ok(None),
        Some(_) => {}
    }
    let mut b = top.object("branch")?;
    let width = b.positive("width")?;
    let heads = b.positive("heads")?;
    if width > MAX_WIDTH {
        return Err(b.err(
            "width",
            format!("expected at most {MAX_WIDTH}, got {width}"),
        ));
    }
    if width % heads != 0 {
        return Err(b.err(
            "heads",
            format!("width {width} is not a multiple of heads {heads}"),
        ));
    }
    b.finish()?;
    Ok(Some(BranchShape { width, heads }))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object being read field by field; remembers which keys were read so that
/// [`Obj::finish`] can reject unknown ones.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
    file: PathBuf,
    seen: BTreeSet<&'a str>,
}

impl<'a> Obj<'a> {
    fn new(map: &'a Map<String, Value>, prefix: &str, file: &Path) -> Self {
        Obj {
            map,
            prefix: prefix.to_string(),
            file: file.to_path_buf(),
            seen: BTreeSet::new(),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn err(&self, key: &str, message: String) -> Error {
        Error::bundle(&self.file, format!("field `{}`: {message}", self.path(key)))
    }

    fn take(&mut self, key: &str) -> Option<&'a Value> {
        let (k, v) = self.map.get_key_value(key)?;
        self.seen.insert(k.as_str());
        Some(v)
    }

    fn required(&mut self, key: &str) -> Result<&'a Value> {
        self.take(key)
            .ok_or_else(|| self.err(key, "missing".to_string()))
    }

    fn string(&mut self, key: &str) -> Result<String> {
        match self.required(key)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.err(key, format!("expected a string, got {}", kind_of(other)))),
        }
    }

    fn u64(&mut self, key: &str) -> Result<u64> {
        let v = self.required(key)?;
        v.as_u64().ok_or_else(|| {
            self.err(
                key,
                format!("expected a non-negative integer, got {}", describe(v)),
            )
        })
    }

    fn usize(&mut self, key: &str) -> Result<usize> {
        let v = self.u64(key)?;
        usize::try_from(v).map_err(|_| self.err(key, format!("{v} is too large")))
    }

    fn positive(&mut self, key: &str) -> Result<usize> {
        let v = self.usize(key)?;
        if v == 0 {
            return Err(self.err(key, "expected an integer >= 1, got 0".to_string()));
        }
        Ok(v)
    }

    fn number(&mut self, key: &str) -> Result<f64> {
        let v = self.required(key)?;
        v.as_f64()
            .ok_or_else(|| self.err(key, format!("expected a number, got {}", describe(v))))
    }

    fn array(&mut self, key: &str) -> Result<&'a Vec<Value>> {
        match self.required(key)? {
            Value::Array(a) => Ok(a),
            other => Err(self.err(key, format!("expected an array, got {}", kind_of(other)))),
        }
    }

    fn object(&mut self, key: &str) -> Result<Obj<'a>> {
        match self.required(key)? {
            Value::Object(m) => Ok(Obj::new(m, &self.path(key), &self.file)),
            other => Err(self.err(key, format!("expected an object, got {}", kind_of(other)))),
        }
    }

    fn finish(self) -> Result<()> {
        if let Some(k) = self.map.keys().find(|k| !self.seen.contains(k.as_str())) {
            return Err(self.err(k, "unknown field".to_string()));
        }
        Ok(())
    }
}

/// A short rendering of a JSON value for error messages.
fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        let head: String = s.chars().take(40).collect();
        format!("{head}...")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "format": "tinyfast-bundle",
            "format_version": 1,
            "architecture": {
                "type": "bert", "vocab_size": 50, "hidden_size": 16, "num_layers": 4,
                "num_heads": 2, "intermediate_size": 24, "max_position_embeddings": 32,
                "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"
            },
            "task": "classification",
            "labels": ["neg", "pos"],
            "max_length": 16,
            "quantization": "int8",
            "exits": [{"layer": 1, "kind": "fastbert"}, {"layer": 2, "kind": "linear"}],
            "branch": {"width": 8, "heads": 2},
            "source": {"model": "x", "anything": [1, 2]}
        })
    }

    fn parse(v: &Value) -> Result<BundleConfig> {
        BundleConfig::parse(&v.to_string(), Path::new("b/tinyfast.json"))
    }

    type Edit = Box<dyn Fn(&mut Value)>;

    fn err_of(v: &Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_documented_example() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.architecture.head_dim(), 8);
        assert_eq!(c.num_outputs(), 2);
        assert_eq!(c.exits.len(), 2);
        assert_eq!(c.exits[0].kind, ExitKind::FastBert);
        assert_eq!(c.branch, Some(BranchShape { width: 8, heads: 2 }));
        assert_eq!(c.architecture.layer_norm_eps, 1e-12f32);
    }

    #[test]
    fn masked_lm_bundles_have_no_labels_and_no_exits() {
        let mut v = base();
        v["task"] = "masked_lm".into();
        v["labels"] = serde_json::json!([]);
        v["exits"] = serde_json::json!([]);
        let c = parse(&v).unwrap();
        assert_eq!(c.task, Task::MaskedLm);
        assert_eq!(c.num_outputs(), 50, "vocabulary logits");
        let mut labelled = v.clone();
        labelled["labels"] = serde_json::json!(["a", "b"]);
        assert!(err_of(&labelled).contains("expected [] for masked_lm"));
        let mut exits = v.clone();
        exits["exits"] = serde_json::json!([{"layer": 1, "kind": "linear"}]);
        assert!(err_of(&exits).contains("field `exits`: expected none for a masked_lm bundle"));
    }

    #[test]
    fn rejections_name_the_field() {
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|v| v["format"] = "x".into()), "field `format`"),
            (
                Box::new(|v| v["format_version"] = 2.into()),
                "format_version",
            ),
            (
                Box::new(|v| v["architecture"]["num_heads"] = 3.into()),
                "architecture.num_heads",
            ),
            (
                Box::new(|v| v["architecture"]["hidden_size"] = (-1).into()),
                "architecture.hidden_size",
            ),
            (
                Box::new(|v| v["architecture"]["layer_norm_eps"] = 0.0.into()),
                "layer_norm_eps",
            ),
            (
                Box::new(|v| v["architecture"]["hidden_act"] = "relu".into()),
                "hidden_act",
            ),
            (Box::new(|v| v["max_length"] = 33.into()), "max_length"),
            (
                Box::new(|v| v["labels"] = serde_json::json!(["a"])),
                "labels",
            ),
            (
                Box::new(|v| v["exits"][1]["layer"] = 4.into()),
                "exits[1].layer",
            ),
            (
                Box::new(|v| v["exits"][1]["layer"] = 1.into()),
                "exits[1].layer",
            ),
            (
                Box::new(|v| v["exits"][0]["layer"] = 0.into()),
                "exits[0].layer",
            ),
            (
                Box::new(|v| v["exits"][0]["kind"] = "x".into()),
                "exits[0].kind",
            ),
            (
                Box::new(|v| v["branch"]["heads"] = 3.into()),
                "branch.heads",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("branch");
                }),
                "field `branch`",
            ),
            (
                Box::new(|v| v["extra"] = 1.into()),
                "field `extra`: unknown",
            ),
            (
                Box::new(|v| v["architecture"]["typo"] = 1.into()),
                "architecture.typo",
            ),
            (Box::new(|v| v["task"] = "regression".into()), "labels"),
            (
                Box::new(|v| v["quantization"] = "int4".into()),
                "quantization",
            ),
            (Box::new(|v| v["smoothing"] = "yes".into()), "smoothing"),
            (
                Box::new(|v| {
                    v["smoothing"] = true.into();
                    v["quantization"] = "none".into();
                }),
                "smoothing",
            ),
            (
                Box::new(|v| v["residual_layers"] = serde_json::json!([1, 0])),
                "`residual_layers[1]`: expected a layer index in 2..=3",
            ),
            (
                Box::new(|v| v["residual_layers"] = serde_json::json!([-1])),
                "residual_layers[0]",
            ),
            (
                Box::new(|v| v["residual_layers"] = serde_json::json!([99])),
                "residual_layers[0]",
            ),
            (
                Box::new(|v| v["residual_layers"] = serde_json::json!(2)),
                "residual_layers",
            ),
            (
                Box::new(|v| {
                    v["residual_layers"] = serde_json::json!([0]);
                    v["quantization"] = "none".into();
                }),
                "residual_layers",
            ),
        ];
        for (edit, want) in cases {
            let mut v = base();
            edit(&mut v);
            let e = err_of(&v);
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.contains("tinyfast.json"), "{e}");
        }
        let e = BundleConfig::parse("{not json", Path::new("tinyfast.json")).unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        let e = BundleConfig::parse("[1]", Path::new("tinyfast.json")).unwrap_err();
        assert!(e.to_string().contains("expected a JSON object"), "{e}");
    }

    #[test]
    fn optional_fields() {
        let mut v = base();
        let m = v.as_object_mut().unwrap();
        m.remove("exits");
        m.remove("branch");
        m.remove("source");
        let c = parse(&v).unwrap();
        assert!(c.exits.is_empty() && c.branch.is_none() && c.source.is_none());
        assert!(!c.smoothing);
        let mut v = base();
        v["smoothing"] = true.into();
        assert!(parse(&v).unwrap().smoothing);
        assert!(c.residual_layers.is_empty());
        let mut v = base();
        v["residual_layers"] = serde_json::json!([0, 2]);
        assert_eq!(parse(&v).unwrap().residual_layers, vec![0, 2]);
        let mut v = base();
        v["task"] = "regression".into();
        v["labels"] = serde_json::json!([]);
        assert_eq!(parse(&v).unwrap().num_outputs(), 1);
    }
}
