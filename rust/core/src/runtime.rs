//! The runtime: a loaded bundle, a thread pool and an instruction-set level, answering
//! predictions.
//!
//! # Calls
//! [`Runtime::predict`] tokenizes texts or pairs and runs them; [`Runtime::predict_ids`] runs
//! pre-tokenized ids. Inputs are processed in chunks of `batch_size` rows (at most
//! [`MAX_CHUNK_TOKENS`] / `max_length`), in input order; each
//! chunk is packed without padding (see [`crate::model::workspace`]), run through the encoder with
//! early exit, and its results written at the rows' input positions. A row's result never depends
//! on the other rows of its chunk, so any `batch_size` gives the same bits.
//!
//! A `masked_lm` bundle answers [`Runtime::masked_lm_top_k`] instead: the best vocabulary ids at
//! chosen token positions of pre-tokenized rows, in chunks bounded by rows and by tokens.
//!
//! # Threads and memory
//! All computation runs on the runtime's own rayon pool (`threads` workers; 0 = one per core),
//! split over token rows (linears, LayerNorm, GELU, attention queries) and sequences. A `Runtime` is
//! `Send + Sync`: concurrent calls share the pool and the weights. Each call takes a
//! [`Workspace`] from a pool of them (or makes one) and returns it afterwards, so repeated calls of
//! the same size allocate nothing but their results.
//!
//! A process forked from the one that loaded the runtime (a pre-forking server, a `fork`
//! multiprocessing pool) inherits the pool but not its threads: the first call in the child builds
//! a new pool of the same size for it (see `Runtime::pool`).

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use crate::bundle::Bundle;
use crate::config::{BundleConfig, Task};
use crate::cpu::{Isa, KernelKind};
use crate::error::{Error, Result};
use crate::model::encoder::forward;
use crate::model::masked_lm::{self, AllowedDecoder, Position};
use crate::model::ops::{argmax, softmax};
use crate::model::{Head, Workspace};
use crate::tokenize::{Encoded, Input, TokenBatch};

/// The most tokens (`rows * max_length`) one chunk may hold: a larger `batch_size` is run as
/// several chunks, which bounds the workspace (about 60 bytes per token per unit of hidden width)
/// whatever the caller asks for. Rows are independent, so this never changes a result.
pub const MAX_CHUNK_TOKENS: usize = 16384;

/// The environment variable that overrides the kernel when [`RuntimeOptions::kernel`] is `None`.
pub const KERNEL_ENV: &str = "TINYFAST_KERNEL";

/// How to run a bundle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Worker threads; 0 uses one per core.
    pub threads: usize,
    /// The instruction-set level of every kernel (int8 GEMM and f32 kernels alike); `None` takes
    /// `TINYFAST_KERNEL` when set, else the fastest this CPU has.
    pub kernel: Option<KernelKind>,
}

/// Results of a prediction, one row per input, in input order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Predictions {
    /// `C`: labels, or 1 for regression.
    pub num_outputs: usize,
    /// Index of the most probable label (0 for regression).
    pub labels: Vec<usize>,
    /// `[rows, C]`: softmax of the logits; for regression, the raw value.
    pub probabilities: Vec<f32>,
    /// `[rows, C]`: the logits of the branch or head that answered.
    pub logits: Vec<f32>,
    /// 1-based layer after which each row was answered (`num_layers` for the head).
    pub exit_layers: Vec<usize>,
}

impl Predictions {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The probabilities (or regression value) of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.probabilities[i * self.num_outputs..(i + 1) * self.num_outputs]
    }
}

/// A bundle ready to predict. `Send + Sync`: share it across threads (for instance in an `Arc`).
pub struct Runtime {
    bundle: Bundle,
    pool: RwLock<Pool>,
    /// Chosen once, here, and passed to every kernel of every call.
    isa: Isa,
    workspaces: Mutex<Vec<Workspace>>,
    /// A masked LM's decoder cut down to the ids of the last `allowed` mask: callers ask with the
    /// same mask again and again, and cutting copies the whole decoder.
    allowed_decoder: Mutex<Option<Arc<AllowedDecoder>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("dir", &self.bundle.dir)
            .field("kernel", &self.isa.kind())
            .field("threads", &self.threads())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Loads and validates the bundle in `dir` and sets up threads and kernel.
    pub fn load(dir: impl AsRef<Path>, options: RuntimeOptions) -> Result<Self> {
        Self::new(Bundle::load(dir)?, options)
    }

    /// Wraps an already loaded bundle.
    pub fn new(bundle: Bundle, options: RuntimeOptions) -> Result<Self> {
        let kernel = match options.kernel {
            Some(k) => k,
            None => match std::env::var(KERNEL_ENV) {
                Ok(name) if !name.is_empty() => KernelKind::from_name(&name).ok_or_else(|| {
                    Error::input(format!(
                        "{KERNEL_ENV}={name:?}: expected avx512-vnni, avx2 or portable"
                    ))
                })?,
                _ => Isa::best().kind(),
            },
        };
        let isa = Isa::new(kernel).ok_or_else(|| {
            Error::input(format!("the {kernel} kernel is not supported by this CPU"))
        })?;
        let pool = Pool::build(options.threads)?;
        Ok(Runtime {
            bundle,
            pool: RwLock::new(pool),
            isa,
            workspaces: Mutex::new(Vec::new()),
            allowed_decoder: Mutex::new(None),
        })
    }

    /// The loaded bundle.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The bundle's `tinyfast.json`.
    pub fn config(&self) -> &BundleConfig {
        &self.bundle.config
    }

    /// The instruction-set level every kernel runs at.
    pub fn kernel(&self) -> KernelKind {
        self.isa.kind()
    }

    /// Worker threads of the pool.
    pub fn threads(&self) -> usize {
        self.pool.read().unwrap_or_else(|e| e.into_inner()).threads
    }

    /// The thread pool of this process. A forked child inherits the parent's pool without its
    /// worker threads (fork copies only the calling thread), so work sent to it would wait forever:
    /// when the process id is not the one that built the pool, a pool of the same size is built
    /// and used from then on. The inherited one is leaked, not dropped: dropping it would signal
    /// threads that do not exist, through locks one of them may have held when the process forked.
    ///
    /// A one-thread runtime runs each call on the calling thread instead ([`caller_pool`]).
    fn pool(&self) -> Result<Arc<rayon::ThreadPool>> {
        let pid = std::process::id();
        {
            let current = self.pool.read().unwrap_or_else(|e| e.into_inner());
            if current.threads == 1 {
                if let Some(pool) = caller_pool() {
                    return Ok(pool);
                }
            }
            if current.pid == pid {
                return Ok(Arc::clone(&current.pool));
            }
        }
        let mut current = self.pool.write().unwrap_or_else(|e| e.into_inner());
        if current.pid != pid {
            let fresh = Pool::build(current.threads)?;
            std::mem::forget(std::mem::replace(&mut *current, fresh));
        }
        Ok(Arc::clone(&current.pool))
    }

    /// Tokenizes inputs as [`Runtime::predict`] does (truncated to the bundle's `max_length`).
    pub fn tokenize(&self, inputs: &[Input]) -> Result<Encoded> {
        self.pool()?
            .install(|| self.bundle.tokenizer.encode_batch(inputs))
    }

    /// Predicts texts or pairs. `speed` in `[0, 1]`: a row leaves after a branch whose normalized
    /// entropy is `< speed` (0 runs every layer); `batch_size >= 1` rows run together.
    pub fn predict(&self, inputs: &[Input], speed: f32, batch_size: usize) -> Result<Predictions> {
        self.classifier()?;
        check_args(speed, batch_size)?;
        let batch_size = self.chunk_rows(batch_size);
        let c = self.bundle.weights.dims.outputs;
        let mut logits = vec![0f32; inputs.len() * c];
        let mut exits = vec![0usize; inputs.len()];
        self.with_workspace(|ws| {
            for (ci, chunk) in inputs.chunks(batch_size).enumerate() {
                let base = ci * batch_size;
                let enc = self.bundle.tokenizer.encode_batch(chunk)?;
                let batch = enc.as_batch();
                self.validate(&batch).map_err(|e| {
                    Error::input(format!("inputs {base}..{}: {e}", base + chunk.len()))
                })?;
                let rows = base..base + chunk.len();
                self.run_chunk(
                    ws,
                    &batch,
                    0..chunk.len(),
                    speed,
                    &mut logits[rows.start * c..rows.end * c],
                    &mut exits[rows],
                )?;
            }
            Ok(())
        })?;
        self.finish(logits, exits)
    }

    /// Predicts pre-tokenized rows (ids including the special tokens, at most `max_length` each);
    /// `speed` and `batch_size` as in [`Runtime::predict`].
    pub fn predict_ids(
        &self,
        batch: &TokenBatch,
        speed: f32,
        batch_size: usize,
    ) -> Result<Predictions> {
        self.classifier()?;
        check_args(speed, batch_size)?;
        self.validate(batch)?;
        let batch_size = self.chunk_rows(batch_size);
        let c = self.bundle.weights.dims.outputs;
        let n = batch.rows();
        let mut logits = vec![0f32; n * c];
        let mut exits = vec![0usize; n];
        self.with_workspace(|ws| {
            for start in (0..n).step_by(batch_size) {
                let end = n.min(start.saturating_add(batch_size));
                self.run_chunk(
                    ws,
                    batch,
                    start..end,
                    speed,
                    &mut logits[start * c..end * c],
                    &mut exits[start..end],
                )?;
            }
            Ok(())
        })?;
        self.finish(logits, exits)
    }

    /// The `k` best vocabulary ids of a `masked_lm` bundle at each `(row, position)` of `at`
    /// (positions count the row's tokens from 0, special tokens included), best first, flattened
    /// `[at.len(), k]`; `-1` fills the end of a list when fewer than `k` ids are allowed.
    /// `allowed[id]` restricts the ids returned (all of them when `None`). Rows run in chunks of
    /// at most `batch_size` rows and [`MAX_CHUNK_TOKENS`] tokens; a position's ids never depend on
    /// the chunking.
    pub fn masked_lm_top_k(
        &self,
        batch: &TokenBatch,
        at: &[(usize, usize)],
        allowed: Option<&[bool]>,
        k: usize,
        batch_size: usize,
    ) -> Result<Vec<i64>> {
        if self.bundle.config.task != Task::MaskedLm {
            return Err(Error::input(
                "masked-LM candidates need a masked_lm bundle; this one is a classifier",
            ));
        }
        check_args(0.0, batch_size)?;
        self.validate(batch)?;
        let vocab = self.bundle.weights.dims.vocab;
        if k == 0 || k > vocab {
            return Err(Error::input(format!(
                "k must be in 1..={vocab} (the vocabulary), got {k}"
            )));
        }
        if let Some(a) = allowed {
            if a.len() != vocab {
                return Err(Error::input(format!(
                    "allowed has {} entries; the vocabulary has {vocab}",
                    a.len()
                )));
            }
        }
        let n = batch.rows();
        // Positions by row, in their order within `at`: (row, position, index into `at`).
        let mut by_row: Vec<(usize, usize, usize)> = Vec::with_capacity(at.len());
        for (i, &(row, pos)) in at.iter().enumerate() {
            if row >= n || pos >= batch.lengths[row] {
                let len = batch.lengths.get(row).copied();
                return Err(Error::input(match len {
                    None => format!("position {i}: row {row} does not exist ({n} rows)"),
                    Some(len) => {
                        format!("position {i}: token {pos} is outside row {row} ({len} tokens)")
                    }
                }));
            }
            by_row.push((row, pos, i));
        }
        by_row.sort_unstable();
        // Chunks of at most `batch_size` rows and MAX_CHUNK_TOKENS tokens: the rows' own lengths
        // bound the workspace, so short masked inputs run in large chunks.
        let mut chunks = Vec::new();
        let (mut start, mut tokens) = (0, 0);
        for (row, &len) in batch.lengths.iter().enumerate() {
            if row > start && (row - start == batch_size || tokens + len > MAX_CHUNK_TOKENS) {
                chunks.push(start..row);
                (start, tokens) = (row, 0);
            }
            tokens += len;
        }
        if n > start {
            chunks.push(start..n);
        }
        let cut = allowed.and_then(|a| self.allowed_decoder(a));
        let mut out = vec![-1i64; at.len() * k];
        self.with_workspace(|ws| {
            let mut next = 0;
            for std::ops::Range { end, .. } in chunks {
                let first = next;
                while next < by_row.len() && by_row[next].0 < end {
                    next += 1;
                }
                let chunk = &by_row[first..next];
                if chunk.is_empty() {
                    continue;
                }
                // Only the rows with chosen positions run.
                ws.begin();
                let mut positions = Vec::with_capacity(chunk.len());
                let mut last_row = None;
                for &(row, pos, _) in chunk {
                    if last_row != Some(row) {
                        let (ids, types) = batch.row(row);
                        ws.push_seq(ids, types);
                        last_row = Some(row);
                    }
                    positions.push(Position {
                        seq: ws.seq_row.len() - 1,
                        pos,
                    });
                }
                let mut ids = vec![-1i64; chunk.len() * k];
                masked_lm::top_k(
                    &self.bundle.weights,
                    ws,
                    &positions,
                    allowed,
                    cut.as_deref(),
                    k,
                    self.isa,
                    &mut ids,
                )?;
                for (&(_, _, i), found) in chunk.iter().zip(ids.chunks_exact(k)) {
                    out[i * k..(i + 1) * k].copy_from_slice(found);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The masked LM's decoder cut down to `allowed`, made once per mask (see
    /// [`AllowedDecoder`]); `None` when cutting gains nothing.
    fn allowed_decoder(&self, allowed: &[bool]) -> Option<Arc<AllowedDecoder>> {
        let Head::MaskedLm(head) = &self.bundle.weights.head else {
            return None;
        };
        let mut kept = self
            .allowed_decoder
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(cut) = kept.as_ref().filter(|c| c.allows(allowed)) {
            return Some(Arc::clone(cut));
        }
        let cut = AllowedDecoder::new(head, allowed).map(Arc::new);
        kept.clone_from(&cut);
        cut
    }

    /// An error for calls a `masked_lm` bundle cannot answer.
    fn classifier(&self) -> Result<()> {
        if self.bundle.config.task == Task::MaskedLm {
            return Err(Error::input(
                "this is a masked_lm bundle: it gives masked-LM candidates, not predictions",
            ));
        }
        Ok(())
    }

    /// `batch_size` capped to [`MAX_CHUNK_TOKENS`].
    fn chunk_rows(&self, batch_size: usize) -> usize {
        batch_size.min((MAX_CHUNK_TOKENS / self.bundle.config.max_length).max(1))
    }

    fn validate(&self, batch: &TokenBatch) -> Result<()> {
        let d = &self.bundle.weights.dims;
        batch.validate(d.vocab, d.token_types, self.bundle.config.max_length)
    }

    /// Runs `f` on the pool with a pooled workspace.
    fn with_workspace(&self, f: impl FnOnce(&mut Workspace) -> Result<()> + Send) -> Result<()> {
        let pool = self.pool()?;
        let mut ws = self
            .workspaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let result = pool.install(|| f(&mut ws));
        self.workspaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ws);
        result
    }

    /// Runs rows `rows` of a validated `batch`; outputs are indexed from `rows.start`.
    fn run_chunk(
        &self,
        ws: &mut Workspace,
        batch: &TokenBatch,
        rows: std::ops::Range<usize>,
        speed: f32,
        logits: &mut [f32],
        exits: &mut [usize],
    ) -> Result<()> {
        ws.begin();
        for i in rows {
            let (ids, types) = batch.row(i);
            ws.push_seq(ids, types);
        }
        forward(&self.bundle.weights, ws, speed, self.isa, logits, exits)
    }

    fn finish(&self, logits: Vec<f32>, exit_layers: Vec<usize>) -> Result<Predictions> {
        let c = self.bundle.weights.dims.outputs;
        let regression = self.bundle.config.task == Task::Regression;
        let mut probabilities = logits.clone();
        let mut labels = Vec::with_capacity(exit_layers.len());
        for (i, (lg, p)) in logits
            .chunks_exact(c)
            .zip(probabilities.chunks_exact_mut(c))
            .enumerate()
        {
            if lg.iter().any(|v| !v.is_finite()) {
                return Err(Error::compute(format!(
                    "input {i}: the model produced non-finite logits {lg:?} (exit layer {})",
                    exit_layers[i]
                )));
            }
            if regression {
                labels.push(0);
            } else {
                softmax(p);
                labels.push(argmax(lg));
            }
        }
        Ok(Predictions {
            num_outputs: c,
            labels,
            probabilities,
            logits,
            exit_layers,
        })
    }
}

thread_local! {
    /// The calling thread's own one-thread pool ([`caller_pool`]); `None` when that thread
    /// cannot be one (it already works for another rayon pool).
    static CALLER_POOL: std::cell::OnceCell<Option<Arc<rayon::ThreadPool>>> =
        const { std::cell::OnceCell::new() };
}

/// A pool whose one worker is the calling thread, made on its first call. Work installed on it
/// runs right there: handing each call to a pool thread and waiting for it costs a one-thread
/// runtime tens of microseconds a call (thread wake-ups), most of a small model's batch-1 time.
/// No thread is started, so a forked child has nothing missing. Each calling thread keeps its
/// pool until the process ends (rayon does not release a pool that adopted a thread).
fn caller_pool() -> Option<Arc<rayon::ThreadPool>> {
    CALLER_POOL.with(|cell| {
        cell.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .use_current_thread()
                .build()
                .ok()
                .map(Arc::new)
        })
        .clone()
    })
}

/// A rayon pool and the process it was built in.
struct Pool {
    pool: Arc<rayon::ThreadPool>,
    /// Its worker threads (`threads: 0` resolved to the number of cores).
    threads: usize,
    pid: u32,
}

impl Pool {
    /// `threads` workers; 0 = one per core.
    fn build(threads: usize) -> Result<Pool> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tinyfast-{i}"))
            .build()
            .map_err(|e| Error::compute(format!("cannot start the thread pool: {e}")))?;
        Ok(Pool {
            threads: pool.current_num_threads(),
            pool: Arc::new(pool),
            pid: std::process::id(),
        })
    }
}

fn check_args(speed: f32, batch_size: usize) -> Result<()> {
    if !(speed.is_finite() && (0.0..=1.0).contains(&speed)) {
        return Err(Error::input(format!(
            "speed must be a finite number in [0, 1], got {speed}"
        )));
    }
    if batch_size == 0 {
        return Err(Error::input("batch_size must be at least 1, got 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{write_safetensors, Data, Model, Spec, Tensor};

    fn texts() -> Vec<Input<'static>> {
        [
            "the movie was fun",
            "boring",
            "not good , but fun",
            "",
            "the the the movie",
        ]
        .into_iter()
        .map(Input::Single)
        .collect()
    }

    fn load(dir: &Path, kernel: KernelKind) -> Result<Runtime> {
        Runtime::load(
            dir,
            RuntimeOptions {
                threads: 2,
                kernel: Some(kernel),
            },
        )
    }

    /// A one-thread runtime computes on the calling thread; a larger one on its pool's threads.
    #[test]
    fn a_one_thread_runtime_computes_on_the_calling_thread() {
        let model = Model::new(Spec::default());
        let dir = model.write(true);
        for (threads, here) in [(1, true), (2, false)] {
            let rt = Runtime::load(
                dir.path(),
                RuntimeOptions {
                    threads,
                    kernel: None,
                },
            )
            .unwrap();
            let caller = std::thread::current().id();
            let mut ran_on = None;
            rt.with_workspace(|_| {
                ran_on = Some(std::thread::current().id());
                Ok(())
            })
            .unwrap();
            assert_eq!(ran_on == Some(caller), here, "threads {threads}");
            // The same bits whichever thread computes them.
            let got = rt.predict(&texts(), 0.5, 2).unwrap();
            let want = load(dir.path(), KernelKind::Portable)
                .unwrap()
                .predict(&texts(), 0.5, 2)
                .unwrap();
            assert_eq!(got, want, "threads {threads}");
        }
    }

    /// Every level gives the same predictions bit for bit, whatever the batch size.
    #[test]
    fn every_level_gives_the_same_bits() {
        let model = Model::new(Spec::default());
        let dir = model.write(true);
        let inputs = texts();
        let bits = |p: &Predictions| p.logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for speed in [0.0, 0.5] {
            let portable = load(dir.path(), KernelKind::Portable).unwrap();
            let want = portable.predict(&inputs, speed, 2).unwrap();
            for isa in Isa::available() {
                let rt = load(dir.path(), isa.kind()).unwrap();
                assert_eq!(rt.kernel(), isa.kind());
                for batch_size in [1, 2, 5] {
                    let got = rt.predict(&inputs, speed, batch_size).unwrap();
                    assert_eq!(bits(&got), bits(&want), "{isa}, speed {speed}");
                    assert_eq!(got, want, "{isa}, speed {speed}");
                }
            }
        }
    }

    /// The loader rejects a -128 weight code (docs/bundle.md, "Int8 scheme"), naming the tensor and element.
    #[test]
    fn a_weight_code_of_minus_128_is_rejected() {
        let model = Model::new(Spec::default());
        let dir = model.write(true);
        assert!(load(dir.path(), KernelKind::Portable).is_ok());
        let mut tensors = model.tensors(true);
        let t = tensors
            .iter_mut()
            .find(|t| t.name == "layers.1.ffn_in.weight")
            .unwrap();
        let Data::I8(codes) = &mut t.data else {
            panic!("int8 bundles store encoder linears as I8")
        };
        codes[7] = -128;
        write_safetensors(&dir.path().join("model.safetensors"), &tensors);
        let err = load(dir.path(), KernelKind::Portable)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor `layers.1.ffn_in.weight`: element [0, 7] is -128"),
            "{err}"
        );
    }

    /// A smoothed bundle: the encoder linears' `.smooth` tensors, declared by `"smoothing":
    /// true`. Factors of 1 give the plain bundle's bits; bad or missing factors are load errors
    /// naming the linear.
    #[test]
    fn smoothing_factors_load_and_are_checked() {
        let model = Model::new(Spec::default());
        let dir = model.write(true);
        let inputs = texts();
        let want = load(dir.path(), KernelKind::Portable)
            .unwrap()
            .predict(&inputs, 0.5, 2)
            .unwrap();
        let mut config = model.config(true);
        config["smoothing"] = true.into();
        std::fs::write(dir.path().join("tinyfast.json"), config.to_string()).unwrap();
        let err = load(dir.path(), KernelKind::Portable)
            .unwrap_err()
            .to_string();
        assert!(err.contains("layers.0.qkv.smooth"), "{err}");
        let mut tensors = model.tensors(true);
        for l in 0..model.spec.layers {
            let (h, f) = (model.spec.hidden, model.spec.intermediate);
            for (name, k) in [("qkv", h), ("attn_out", h), ("ffn_in", h), ("ffn_out", f)] {
                tensors.push(Tensor {
                    name: format!("layers.{l}.{name}.smooth"),
                    shape: vec![k],
                    data: Data::F32(vec![1.0; k]),
                });
            }
        }
        write_safetensors(&dir.path().join("model.safetensors"), &tensors);
        for isa in Isa::available() {
            let got = load(dir.path(), isa.kind())
                .unwrap()
                .predict(&inputs, 0.5, 2)
                .unwrap();
            let portable = load(dir.path(), KernelKind::Portable).unwrap();
            assert_eq!(got, portable.predict(&inputs, 0.5, 2).unwrap(), "{isa}");
        }
        let got = load(dir.path(), KernelKind::Portable).unwrap();
        assert_eq!(got.predict(&inputs, 0.5, 2).unwrap(), want);
        let t = tensors
            .iter_mut()
            .find(|t| t.name == "layers.2.ffn_out.smooth")
            .unwrap();
        t.data = Data::F32(
            (0..model.spec.intermediate)
                .map(|j| if j == 5 { 0.0 } else { 1.0 })
                .collect(),
        );
        write_safetensors(&dir.path().join("model.safetensors"), &tensors);
        let err = load(dir.path(), KernelKind::Portable)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "`layers.2.ffn_out`: smoothing factor [5] is 0; it must be finite and > 0"
            ),
            "{err}"
        );
    }

    /// A bundle with residual layers (docs/bundle.md, "Residual layers"): the residual codes of
    /// the f32 weights load, give the same bits on every kernel and batch size, bring the
    /// logits closer to the f32 bundle's, and a bad residual scale is a load error naming it.
    #[test]
    fn residual_layers_load_and_approach_the_float_bundle() {
        use crate::testing::weight_residual;

        let model = Model::new(Spec::default());
        let inputs = texts();
        let logits = |dir: &Path| {
            load(dir, KernelKind::Portable)
                .unwrap()
                .predict(&inputs, 0.0, 2)
        };
        let float = logits(model.write(false).path()).unwrap().logits;
        let plain = logits(model.write(true).path()).unwrap().logits;
        let dir = model.write(true);
        let mut config = model.config(true);
        config["residual_layers"] = (0..model.spec.layers).collect::<Vec<_>>().into();
        std::fs::write(dir.path().join("tinyfast.json"), config.to_string()).unwrap();
        let err = load(dir.path(), KernelKind::Portable)
            .unwrap_err()
            .to_string();
        assert!(err.contains("layers.0.qkv.residual_weight"), "{err}");
        let mut tensors = model.tensors(true);
        for t in &model.f32 {
            let Some(prefix) = t.name.strip_suffix(".weight") else {
                continue;
            };
            if !(prefix.starts_with("layers.")
                && tensors.iter().any(|i| i.name == format!("{prefix}.scale")))
            {
                continue;
            }
            let Data::F32(w) = &t.data else {
                unreachable!()
            };
            let (n, k) = (t.shape[0], t.shape[1]);
            let r = weight_residual(w, n, k);
            tensors.push(Tensor {
                name: format!("{prefix}.residual_weight"),
                shape: vec![n, k],
                data: Data::I8(r.data().to_vec()),
            });
            tensors.push(Tensor {
                name: format!("{prefix}.residual_scale"),
                shape: vec![n],
                data: Data::F32(r.scales().to_vec()),
            });
        }
        write_safetensors(&dir.path().join("model.safetensors"), &tensors);
        let want = logits(dir.path()).unwrap();
        for isa in Isa::available() {
            let rt = load(dir.path(), isa.kind()).unwrap();
            for batch_size in [1, 3] {
                assert_eq!(rt.predict(&inputs, 0.0, batch_size).unwrap(), want, "{isa}");
            }
        }
        let err = |a: &[f32]| {
            a.iter()
                .zip(&float)
                .map(|(x, y)| (x - y).abs())
                .sum::<f32>()
        };
        assert!(
            err(&want.logits) < err(&plain) / 10.0,
            "{} vs {}",
            err(&want.logits),
            err(&plain)
        );
        let t = tensors
            .iter_mut()
            .find(|t| t.name == "layers.1.ffn_in.residual_scale")
            .unwrap();
        let Data::F32(v) = &mut t.data else {
            unreachable!()
        };
        v[2] = f32::NAN;
        write_safetensors(&dir.path().join("model.safetensors"), &tensors);
        let err = load(dir.path(), KernelKind::Portable)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor `layers.1.ffn_in.residual_scale`: element [2] is NaN"),
            "{err}"
        );
    }
}
