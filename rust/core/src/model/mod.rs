//! The encoder, its exit branches and its head, as docs/bundle.md ("The forward pass the runtime
//! computes") defines them.
//!
//! - [`matmul`]: the f32 linear (f32 bundles, branches, heads).
//! - [`linear`]: an encoder linear, int8 or f32.
//! - [`ops`]: LayerNorm, GELU, softmax, normalized entropy.
//! - [`quantize`]: per-token u8 activation quantization (vectorized).
//! - [`vmath`]: vectorizable exp, erf and GELU (scalar, AVX2 and AVX-512, same bits).
//! - [`lanes`]: one f32 vector type over AVX2 and AVX-512, for kernels written once.
//! - [`attention`]: multi-head attention over packed (unpadded) sequences.
//! - [`branch`]: a FastBERT branch's attention, its key and value projections folded into the
//!   `[CLS]` query.
//! - [`workspace`]: the per-call scratch and its packed-sequence layout.
//! - [`encoder`]: the forward pass with early exit and batch compaction.
//! - [`masked_lm`]: a masked LM's best vocabulary ids at chosen positions.

pub mod attention;
pub mod branch;
pub mod encoder;
pub(crate) mod lanes;
pub mod linear;
pub mod masked_lm;
pub mod matmul;
pub mod ops;
pub mod quantize;
pub mod vmath;
pub mod workspace;

pub use branch::BranchAttention;
pub use linear::{Int8Linear, Linear};
pub use matmul::F32Linear;
pub use workspace::Workspace;

use crate::config::Activation;

/// The sizes the forward pass needs, from `tinyfast.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dims {
    pub vocab: usize,
    pub positions: usize,
    pub token_types: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub layers: usize,
    /// `C`: labels, 1 for regression, the vocabulary for a masked LM.
    pub outputs: usize,
    /// Width of the fastbert branches (0 when there are none).
    pub branch_width: usize,
    /// Heads of the fastbert branches' attention (0 when there are none).
    pub branch_heads: usize,
    pub eps: f32,
    pub act: Activation,
    /// Regression models never exit early.
    pub regression: bool,
}

/// A LayerNorm's affine parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormWeights {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Word, position and token type embeddings, and their LayerNorm.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// `[V, H]`.
    pub word: Vec<f32>,
    /// `[P, H]`.
    pub position: Vec<f32>,
    /// `[T, H]`.
    pub token_type: Vec<f32>,
    pub norm: LayerNormWeights,
}

/// One encoder layer.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderLayer {
    /// `[3H, H]`: query, key and value stacked along the output axis.
    pub qkv: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNormWeights,
    pub ffn_in: Linear,
    pub ffn_out: Linear,
    pub ffn_norm: LayerNormWeights,
}

/// A classifier's head: `classifier(tanh(pooler(x[CLS])))`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierHead {
    pub pooler: F32Linear,
    pub classifier: F32Linear,
}

/// A masked LM's head at one token: `decoder(LayerNorm(act(transform(x))))`, vocabulary logits.
/// (BERT ties the decoder's weight to the word embeddings; the bundle stores it again, quantized
/// like the encoder's linears.)
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedLmHead {
    pub transform: F32Linear,
    pub norm: LayerNormWeights,
    /// `[V, H]`.
    pub decoder: Linear,
}

/// The head after the last layer, by the bundle's task.
#[derive(Clone, Debug, PartialEq)]
pub enum Head {
    Classifier(ClassifierHead),
    MaskedLm(Box<MaskedLmHead>),
}

/// FastBERT's branch classifier (all f32).
#[derive(Clone, Debug, PartialEq)]
pub struct FastBertBranch {
    pub dense_in: F32Linear,
    pub query: F32Linear,
    /// The key and value projections, applied folded (see [`branch`]).
    pub attention: BranchAttention,
    pub attn_out: F32Linear,
    pub dense: F32Linear,
    pub classifier: F32Linear,
}

/// An exit branch.
#[derive(Clone, Debug, PartialEq)]
pub enum Branch {
    /// `classifier(x[CLS])`.
    Linear {
        classifier: F32Linear,
    },
    FastBert(Box<FastBertBranch>),
}

/// A branch and the 1-based layer after which it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    pub layer: usize,
    pub branch: Branch,
}

/// Every weight of a bundle, validated and prepacked.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelWeights {
    pub dims: Dims,
    pub embeddings: Embeddings,
    pub layers: Vec<EncoderLayer>,
    pub head: Head,
    /// Sorted by layer.
    pub exits: Vec<Exit>,
}
