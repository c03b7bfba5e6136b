//! Loading a runtime bundle (docs/bundle.md): `tinyfast.json`, `model.safetensors` and
//! `tokenizer.json`, each validated completely before anything is used.
//!
//! Each of the three must be a regular file (a symbolic link to one is fine): a character device
//! reports a size of 0 and never ends (`/dev/zero`), and opening a FIFO blocks until a writer
//! comes, so [`crate::files::open_regular`] checks the type before opening, opens without blocking, and checks
//! the type again on the opened handle. The JSON files are read whole, at most [`MAX_CONFIG_BYTES`]
//! and [`crate::tokenize::MAX_TOKENIZER_BYTES`] ([`crate::files::read_limited`] stops one byte past
//! the limit, whatever size the file reports).
//!
//! `model.safetensors` is read in bounded steps, so that a hostile file cannot make the loader
//! allocate more than the file's real size:
//! 1. the 8-byte header length is checked against a cap and against the file length;
//! 2. the header (at most [`MAX_HEADER_BYTES`]) is parsed by the `safetensors` crate, which checks
//!    that the tensors' byte ranges are contiguous and match their dtypes and shapes;
//! 3. every tensor name, dtype and shape is checked against `tinyfast.json` (missing, wrong and
//!    extra tensors are errors), and the declared data size against the file's actual size;
//! 4. only then is the data read, tensor by tensor, and every f32 value checked to be finite and
//!    every int8 scale to be finite and positive;
//! 5. the int8 weights are packed for the GEMM kernels, the f32 ones into panels.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata};

use crate::config::{BundleConfig, ExitKind, Quantization, Task, MAX_CONFIG_BYTES};
use crate::error::{Error, Result};
use crate::files::{open_regular, read_utf8};
use crate::gemm::PackedWeights;
use crate::model::{
    Branch, BranchAttention, ClassifierHead, Dims, Embeddings, EncoderLayer, Exit, F32Linear,
    FastBertBranch, Head, Int8Linear, LayerNormWeights, Linear, MaskedLmHead, ModelWeights,
};
use crate::quant::{QuantError, QuantizedMatrix};
use crate::tokenize::TextTokenizer;

/// File names inside a bundle directory.
pub const CONFIG_FILE: &str = "tinyfast.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Largest safetensors header accepted (a 48-layer bundle's header is about 100 KiB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// A loaded, validated bundle.
#[derive(Debug)]
pub struct Bundle {
    /// The directory it was loaded from.
    pub dir: PathBuf,
    pub config: BundleConfig,
    pub weights: ModelWeights,
    pub tokenizer: TextTokenizer,
}

impl Bundle {
    /// Loads and validates the bundle in `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::bundle(
                dir,
                "a bundle is a directory (tinyfast.json, model.safetensors, tokenizer.json)",
            ));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config_text = read_utf8(&config_path, MAX_CONFIG_BYTES, "a bundle config")?;
        let config = BundleConfig::parse(&config_text, &config_path)?;
        drop(config_text);
        let tokenizer = TextTokenizer::load(&dir.join(TOKENIZER_FILE), &config)?;
        let weights = load_weights(&dir.join(WEIGHTS_FILE), &config)?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
        })
    }
}

/// One tensor the bundle must hold.
struct Spec {
    name: String,
    shape: Vec<usize>,
    dtype: Dtype,
}

/// Calls `f` on every tensor `config` implies, in the order of docs/bundle.md; stops at the first
/// error (so a config claiming a billion layers fails at the first missing one).
fn for_each_expected(config: &BundleConfig, f: &mut dyn FnMut(Spec) -> Result<()>) -> Result<()> {
    let a = &config.architecture;
    let (h, ff, c) = (a.hidden_size, a.intermediate_size, config.num_outputs());
    let mut t = |name: String, shape: &[usize], dtype: Dtype| {
        f(Spec {
            name,
            shape: shape.to_vec(),
            dtype,
        })
    };
    t("embeddings.word".into(), &[a.vocab_size, h], Dtype::F32)?;
    t(
        "embeddings.position".into(),
        &[a.max_position_embeddings, h],
        Dtype::F32,
    )?;
    t(
        "embeddings.token_type".into(),
        &[a.type_vocab_size, h],
        Dtype::F32,
    )?;
    t("embeddings.norm.weight".into(), &[h], Dtype::F32)?;
    t("embeddings.norm.bias".into(), &[h], Dtype::F32)?;
    let int8 = config.quantization == Quantization::Int8;
    for l in 0..a.num_layers {
        for (lin, n, k) in [
            ("qkv", 3 * h, h),
            ("attn_out", h, h),
            ("ffn_in", ff, h),
            ("ffn_out", h, ff),
        ] {
            let p = format!("layers.{l}.{lin}");
            if int8 {
                t(format!("{p}.weight"), &[n, k], Dtype::I8)?;
                t(format!("{p}.scale"), &[n], Dtype::F32)?;
                if config.smoothing {
                    t(format!("{p}.smooth"), &[k], Dtype::F32)?;
                }
                if config.residual_layers.contains(&l) {
                    t(format!("{p}.residual_weight"), &[n, k], Dtype::I8)?;
                    t(format!("{p}.residual_scale"), &[n], Dtype::F32)?;
                }
            } else {
                t(format!("{p}.weight"), &[n, k], Dtype::F32)?;
            }
            t(format!("{p}.bias"), &[n], Dtype::F32)?;
            if lin == "attn_out" || lin == "ffn_out" {
                let norm = if lin == "attn_out" {
                    "attn_norm"
                } else {
                    "ffn_norm"
                };
                t(format!("layers.{l}.{norm}.weight"), &[h], Dtype::F32)?;
                t(format!("layers.{l}.{norm}.bias"), &[h], Dtype::F32)?;
            }
        }
    }
    if config.task == Task::MaskedLm {
        t("head.transform.weight".into(), &[h, h], Dtype::F32)?;
        t("head.transform.bias".into(), &[h], Dtype::F32)?;
        t("head.norm.weight".into(), &[h], Dtype::F32)?;
        t("head.norm.bias".into(), &[h], Dtype::F32)?;
        // The decoder is stored like an encoder linear: int8 with scales, or f32.
        let v = a.vocab_size;
        if int8 {
            t("head.decoder.weight".into(), &[v, h], Dtype::I8)?;
            t("head.decoder.scale".into(), &[v], Dtype::F32)?;
        } else {
            t("head.decoder.weight".into(), &[v, h], Dtype::F32)?;
        }
        t("head.decoder.bias".into(), &[v], Dtype::F32)?;
    } else {
        t("head.pooler.weight".into(), &[h, h], Dtype::F32)?;
        t("head.pooler.bias".into(), &[h], Dtype::F32)?;
        t("head.classifier.weight".into(), &[c, h], Dtype::F32)?;
        t("head.classifier.bias".into(), &[c], Dtype::F32)?;
    }
    for exit in &config.exits {
        let p = format!("exits.{}", exit.layer);
        match exit.kind {
            ExitKind::Linear => {
                t(format!("{p}.classifier.weight"), &[c, h], Dtype::F32)?;
                t(format!("{p}.classifier.bias"), &[c], Dtype::F32)?;
            }
            ExitKind::FastBert => {
                // parse() guarantees a branch shape whenever an exit is fastbert.
                let w = config.branch.map_or(0, |b| b.width);
                t(format!("{p}.dense_in.weight"), &[w, h], Dtype::F32)?;
                t(format!("{p}.dense_in.bias"), &[w], Dtype::F32)?;
                for lin in ["query", "key", "value", "attn_out", "dense"] {
                    t(format!("{p}.{lin}.weight"), &[w, w], Dtype::F32)?;
                    t(format!("{p}.{lin}.bias"), &[w], Dtype::F32)?;
                }
                t(format!("{p}.classifier.weight"), &[c, w], Dtype::F32)?;
                t(format!("{p}.classifier.bias"), &[c], Dtype::F32)?;
            }
        }
    }
    Ok(())
}

/// Reads and validates `path` (a `model.safetensors`) against `config`.
pub fn load_weights(path: &Path, config: &BundleConfig) -> Result<ModelWeights> {
    let err = |m: String| Error::bundle(path, m);
    // A regular file: its length is real, and every read below is checked against it.
    let mut file = open_regular(path)?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();

    // 1. The header length.
    if file_len < 8 {
        return Err(err(format!(
            "file is {file_len} bytes; a safetensors file starts with an 8-byte header length"
        )));
    }
    let mut len8 = [0u8; 8];
    file.read_exact(&mut len8).map_err(|e| Error::io(path, e))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > MAX_HEADER_BYTES {
        return Err(err(format!(
            "declared header length {header_len} bytes exceeds the limit of {MAX_HEADER_BYTES}"
        )));
    }
    if header_len > file_len - 8 {
        return Err(err(format!(
            "declared header length {header_len} bytes, but only {} bytes follow (truncated file?)",
            file_len - 8
        )));
    }

    // 2. The header.
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let meta: Metadata = serde_json::from_slice(&header)
        .map_err(|e| err(format!("invalid safetensors header: {e}")))?;
    drop(header);

    // 3. Names, dtypes and shapes against tinyfast.json, then the data size against the file.
    let mut found: HashSet<String> = HashSet::new();
    for_each_expected(config, &mut |spec| {
        let Some(info) = meta.info(&spec.name) else {
            return Err(err(format!(
                "missing tensor `{}` (expected {:?} {:?})",
                spec.name, spec.dtype, spec.shape
            )));
        };
        if info.dtype != spec.dtype {
            return Err(err(format!(
                "tensor `{}`: expected dtype {:?}, got {:?}",
                spec.name, spec.dtype, info.dtype
            )));
        }
        if info.shape != spec.shape {
            return Err(err(format!(
                "tensor `{}`: expected shape {:?}, got {:?}",
                spec.name, spec.shape, info.shape
            )));
        }
        found.insert(spec.name);
        Ok(())
    })?;
    let names = meta.offset_keys();
    if let Some(extra) = names.iter().find(|n| !found.contains(*n)) {
        return Err(err(format!(
            "unexpected tensor `{extra}`: not part of the layout tinyfast.json describes \
             (quantization {:?}, exits {:?})",
            config.quantization,
            config.exits.iter().map(|e| e.layer).collect::<Vec<_>>()
        )));
    }
    let data_len = meta.data_len() as u64;
    let available = file_len - 8 - header_len;
    if data_len > available {
        return Err(err(format!(
            "the header declares {data_len} bytes of tensor data, but the file holds {available} \
             (truncated file)"
        )));
    }
    if data_len < available {
        return Err(err(format!(
            "{} unexpected bytes after the last tensor",
            available - data_len
        )));
    }

    // 4. The data, tensor by tensor (the byte ranges are contiguous from 0, in this order).
    let mut store = Store {
        path,
        tensors: HashMap::with_capacity(names.len()),
    };
    let mut buf = Vec::new();
    for name in names {
        let Some(info) = meta.info(&name) else {
            continue;
        };
        let (start, end) = info.data_offsets;
        buf.resize(end - start, 0);
        file.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
        let data = match info.dtype {
            Dtype::I8 => TensorData::I8(buf.iter().map(|&b| b as i8).collect()),
            _ => {
                let cols = info.shape.last().copied().unwrap_or(1).max(1);
                let values: Vec<f32> = buf
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    let at = if info.shape.len() >= 2 {
                        format!("[{}, {}]", i / cols, i % cols)
                    } else {
                        format!("[{i}]")
                    };
                    return Err(err(format!(
                        "tensor `{name}`: element {at} is {v}; every value must be finite"
                    )));
                }
                TensorData::F32(values)
            }
        };
        store.tensors.insert(name, data);
    }

    // 5. Typed, packed weights.
    build(config, &mut store)
}

enum TensorData {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

/// The validated tensors, taken out one by one while building the model.
struct Store<'a> {
    path: &'a Path,
    tensors: HashMap<String, TensorData>,
}

impl Store<'_> {
    fn err(&self, m: String) -> Error {
        Error::bundle(self.path, m)
    }

    fn f32(&mut self, name: &str) -> Result<Vec<f32>> {
        match self.tensors.remove(name) {
            Some(TensorData::F32(v)) => Ok(v),
            _ => Err(self.err(format!("tensor `{name}` missing or not F32"))),
        }
    }

    fn i8(&mut self, name: &str) -> Result<Vec<i8>> {
        match self.tensors.remove(name) {
            Some(TensorData::I8(v)) => Ok(v),
            _ => Err(self.err(format!("tensor `{name}` missing or not I8"))),
        }
    }

    fn norm(&mut self, prefix: &str) -> Result<LayerNormWeights> {
        Ok(LayerNormWeights {
            weight: self.f32(&format!("{prefix}.weight"))?,
            bias: self.f32(&format!("{prefix}.bias"))?,
        })
    }

    fn f32_linear(&mut self, prefix: &str, n: usize, k: usize) -> Result<F32Linear> {
        let w = self.f32(&format!("{prefix}.weight"))?;
        let b = self.f32(&format!("{prefix}.bias"))?;
        F32Linear::new(&w, n, k, b).map_err(|m| self.err(format!("`{prefix}`: {m}")))
    }

    /// The key and value projections of the fastbert branch `prefix` (the key bias is read,
    /// and its shape checked, but the folded attention does not need it).
    fn branch_attention(
        &mut self,
        prefix: &str,
        w: usize,
        heads: usize,
    ) -> Result<BranchAttention> {
        let key = self.f32(&format!("{prefix}.key.weight"))?;
        self.f32(&format!("{prefix}.key.bias"))?;
        let value = self.f32(&format!("{prefix}.value.weight"))?;
        let value_bias = self.f32(&format!("{prefix}.value.bias"))?;
        BranchAttention::new(key, &value, value_bias, w, heads)
            .map_err(|m| self.err(format!("`{prefix}` key and value: {m}")))
    }

    fn encoder_linear(
        &mut self,
        prefix: &str,
        n: usize,
        k: usize,
        q: Quantization,
        smoothing: bool,
        residual: bool,
    ) -> Result<Linear> {
        if q == Quantization::None {
            return Ok(Linear::F32(self.f32_linear(prefix, n, k)?));
        }
        // Checked, with the other parts, by `Int8Linear::with_smoothing`.
        let smooth = if smoothing {
            Some(self.f32(&format!("{prefix}.smooth"))?)
        } else {
            None
        };
        let packed = self.packed(
            &format!("{prefix}.weight"),
            &format!("{prefix}.scale"),
            n,
            k,
        )?;
        let residual = if residual {
            Some(self.packed(
                &format!("{prefix}.residual_weight"),
                &format!("{prefix}.residual_scale"),
                n,
                k,
            )?)
        } else {
            None
        };
        let bias = self.f32(&format!("{prefix}.bias"))?;
        let lin = Int8Linear::new(packed, bias)
            .and_then(|l| l.with_smoothing(smooth))
            .and_then(|l| l.with_residual(residual))
            .map_err(|m| self.err(format!("`{prefix}`: {m}")))?;
        Ok(Linear::Int8(lin))
    }

    /// The int8 codes `weight` `[n, k]` with their per-row `scale`, checked and prepacked.
    fn packed(&mut self, weight: &str, scale: &str, n: usize, k: usize) -> Result<PackedWeights> {
        let w = self.i8(weight)?;
        let scales = self.f32(scale)?;
        let m = QuantizedMatrix::from_parts(n, k, w, scales).map_err(|e| match e {
            QuantError::InvalidScale { row, value } => self.err(format!(
                "tensor `{scale}`: element [{row}] is {value}; scales must be finite and > 0"
            )),
            QuantError::WeightOutOfRange { row, col } => self.err(format!(
                "tensor `{weight}`: element [{row}, {col}] is -128; int8 weight codes must be in \
                 -127..=127"
            )),
            other => self.err(format!("`{weight}`: {other}")),
        })?;
        PackedWeights::new(&m).map_err(|e| self.err(format!("`{weight}`: {e}")))
    }
}

fn build(config: &BundleConfig, s: &mut Store) -> Result<ModelWeights> {
    let a = &config.architecture;
    let (h, ff, c) = (a.hidden_size, a.intermediate_size, config.num_outputs());
    let (q, sm) = (config.quantization, config.smoothing);
    let fastbert = config.exits.iter().any(|e| e.kind == ExitKind::FastBert);
    let branch = config.branch.filter(|_| fastbert);
    let dims = Dims {
        vocab: a.vocab_size,
        positions: a.max_position_embeddings,
        token_types: a.type_vocab_size,
        hidden: h,
        heads: a.num_heads,
        intermediate: ff,
        layers: a.num_layers,
        outputs: c,
        branch_width: branch.map_or(0, |b| b.width),
        branch_heads: branch.map_or(0, |b| b.heads),
        eps: a.layer_norm_eps,
        act: a.hidden_act,
        regression: config.task == Task::Regression,
    };
    let embeddings = Embeddings {
        word: s.f32("embeddings.word")?,
        position: s.f32("embeddings.position")?,
        token_type: s.f32("embeddings.token_type")?,
        norm: s.norm("embeddings.norm")?,
    };
    let mut layers = Vec::with_capacity(a.num_layers);
    for l in 0..a.num_layers {
        let p = format!("layers.{l}");
        let r = config.residual_layers.contains(&l);
        layers.push(EncoderLayer {
            qkv: s.encoder_linear(&format!("{p}.qkv"), 3 * h, h, q, sm, r)?,
            attn_out: s.encoder_linear(&format!("{p}.attn_out"), h, h, q, sm, r)?,
            attn_norm: s.norm(&format!("{p}.attn_norm"))?,
            ffn_in: s.encoder_linear(&format!("{p}.ffn_in"), ff, h, q, sm, r)?,
            ffn_out: s.encoder_linear(&format!("{p}.ffn_out"), h, ff, q, sm, r)?,
            ffn_norm: s.norm(&format!("{p}.ffn_norm"))?,
        });
    }
    let head = if config.task == Task::MaskedLm {
        Head::MaskedLm(Box::new(MaskedLmHead {
            transform: s.f32_linear("head.transform", h, h)?,
            norm: s.norm("head.norm")?,
            decoder: s.encoder_linear("head.decoder", a.vocab_size, h, q, false, false)?,
        }))
    } else {
        Head::Classifier(ClassifierHead {
            pooler: s.f32_linear("head.pooler", h, h)?,
            classifier: s.f32_linear("head.classifier", c, h)?,
        })
    };
    let mut exits = Vec::with_capacity(config.exits.len());
    for spec in &config.exits {
        let p = format!("exits.{}", spec.layer);
        let branch = match spec.kind {
            ExitKind::Linear => Branch::Linear {
                classifier: s.f32_linear(&format!("{p}.classifier"), c, h)?,
            },
            ExitKind::FastBert => {
                let w = dims.branch_width;
                Branch::FastBert(Box::new(FastBertBranch {
                    dense_in: s.f32_linear(&format!("{p}.dense_in"), w, h)?,
                    query: s.f32_linear(&format!("{p}.query"), w, w)?,
                    attention: s.branch_attention(&p, w, dims.branch_heads)?,
                    attn_out: s.f32_linear(&format!("{p}.attn_out"), w, w)?,
                    dense: s.f32_linear(&format!("{p}.dense"), w, w)?,
                    classifier: s.f32_linear(&format!("{p}.classifier"), c, w)?,
                }))
            }
        };
        exits.push(Exit {
            layer: spec.layer,
            branch,
        });
    }
    Ok(ModelWeights {
        dims,
        embeddings,
        layers,
        head,
        exits,
    })
}
