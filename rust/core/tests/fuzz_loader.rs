//! Property-based fuzzing of the bundle loader and of the prediction entry points (proptest; cargo
//! fuzz needs a nightly toolchain).
//!
//! `loader_never_panics`: start from valid bundles (int8, f32, regression), apply 1 to 3 random
//! mutations — bit flips, byte edits, truncations, deletions, insertions of hostile JSON tokens,
//! splices within and across files, files removed or replaced by another bundle's, JSON edits of
//! `tinyfast.json` and `tokenizer.json` at any path (hostile values of every JSON type, huge
//! numbers, removals, unknown keys), edits of the safetensors header as JSON (re-serialized with a
//! correct or a wrong length), self-consistent headers declaring huge tensors or other dtypes, and
//! NaN, infinite, zero or negative values written into the tensor data — then load. The load must
//! return `Ok` or `Err`, never panic, and never make an allocation or hold memory beyond
//! [`SOFT_LIMIT`]; a bundle that loads must then predict texts, pairs and ids without a panic.
//!
//! `predict_never_panics`: random token-id batches (any ids, types, lengths, widths, buffer sizes,
//! speeds including NaN and out-of-range values, batch sizes including 0 and `usize::MAX`) and
//! random texts through `predict_ids` and `predict` on every kernel this CPU has.
//!
//! Case counts: `TINYFAST_FUZZ_CASES` (default 150 per test); the generator's seed:
//! `TINYFAST_FUZZ_SEED` (default 0, so CI is deterministic). A failure reports the seed and the
//! smallest failing case proptest shrank it to. Every allocation is counted by this test binary's
//! global allocator; one above [`HARD_LIMIT`] is refused with a message naming the case (the
//! process then aborts, as it would on a real allocation failure).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::{Model, Spec, TempDir};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use serde_json::{json, Map, Value};
use tinyfast_core::cpu::CpuCapabilities;
use tinyfast_core::{Bundle, Input, Predictions, Runtime, RuntimeOptions, TokenBatch};

// ---- Allocation accounting ----

/// Largest allocation, and largest growth of live memory, one case may make.
const SOFT_LIMIT: usize = 64 << 20;
/// Allocations above this are refused (the process aborts after naming the case).
const HARD_LIMIT: usize = 1 << 32;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// The case being run, for the message of a refused allocation.
static CURRENT: Mutex<String> = Mutex::new(String::new());

struct Counting;

fn admit(size: usize) -> bool {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    if size <= HARD_LIMIT {
        return true;
    }
    // Nothing here may allocate: digits into a stack buffer, bytes straight to stderr.
    let mut digits = [0u8; 20];
    let mut n = size;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"\nfuzz_loader: refused an allocation of ");
    let _ = err.write_all(&digits[i..]);
    let _ = err.write_all(b" bytes in case: ");
    if let Ok(case) = CURRENT.try_lock() {
        let _ = err.write_all(case.as_bytes());
    }
    let _ = err.write_all(b"\n");
    false
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call forwards to `System` with the caller's layout; the counters are side effects.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !admit(new_size) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The two tests share the counters: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` as one case: no panic, and no allocation or memory growth beyond [`SOFT_LIMIT`].
fn guarded(
    description: String,
    f: impl FnOnce() -> Result<(), String>,
) -> Result<(), TestCaseError> {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = description;
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    let outcome = catch_unwind(AssertUnwindSafe(f));
    let largest = LARGEST.load(Ordering::Relaxed);
    let growth = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    match outcome {
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!("panicked: {msg}")))
        }
        Ok(Err(msg)) => Err(TestCaseError::fail(msg)),
        Ok(Ok(())) if largest > SOFT_LIMIT => Err(TestCaseError::fail(format!(
            "allocated {largest} bytes at once (limit {SOFT_LIMIT})"
        ))),
        Ok(Ok(())) if growth > SOFT_LIMIT => Err(TestCaseError::fail(format!(
            "live memory grew by {growth} bytes (limit {SOFT_LIMIT})"
        ))),
        Ok(Ok(())) => Ok(()),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a non-negative integer")),
        Err(_) => default,
    }
}

/// Runs `strategy` through `test` for `TINYFAST_FUZZ_CASES` cases from seed `TINYFAST_FUZZ_SEED`.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = env_u64("TINYFAST_FUZZ_CASES", 150).clamp(1, u64::from(u32::MAX)) as u32;
    let seed = env_u64("TINYFAST_FUZZ_SEED", 0);
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let start = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    match runner.run(&strategy, test) {
        Ok(()) => eprintln!(
            "{name}: {cases} cases passed in {:.1} s (TINYFAST_FUZZ_SEED={seed})",
            start.elapsed().as_secs_f64()
        ),
        Err(TestError::Fail(reason, case)) => panic!(
            "{name} failed with TINYFAST_FUZZ_SEED={seed} TINYFAST_FUZZ_CASES={cases}: {reason}\n\
             smallest failing case: {case:#?}"
        ),
        Err(TestError::Abort(reason)) => panic!("{name} aborted (seed {seed}): {reason}"),
    }
}

// ---- The bundles mutated ----

/// The three files of a bundle; `None` is a missing file.
#[derive(Clone, Debug)]
struct Files {
    config: Option<Vec<u8>>,
    weights: Option<Vec<u8>>,
    tokenizer: Option<Vec<u8>>,
}

impl Files {
    fn of(model: &Model, int8: bool) -> Self {
        let dir = TempDir::new("fuzz-base");
        model.write_to(dir.path(), int8);
        let read = |name: &str| Some(std::fs::read(dir.path().join(name)).unwrap());
        Files {
            config: read("tinyfast.json"),
            weights: read("model.safetensors"),
            tokenizer: read("tokenizer.json"),
        }
    }

    fn get(&mut self, file: File) -> &mut Option<Vec<u8>> {
        match file {
            File::Config => &mut self.config,
            File::Weights => &mut self.weights,
            File::Tokenizer => &mut self.tokenizer,
        }
    }

    fn write(&self, dir: &Path) {
        for (name, data) in [
            ("tinyfast.json", &self.config),
            ("model.safetensors", &self.weights),
            ("tokenizer.json", &self.tokenizer),
        ] {
            let path = dir.join(name);
            match data {
                Some(bytes) => std::fs::write(&path, bytes).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

/// The valid bundles mutations start from (and splice in, for mismatched files).
struct Bases {
    variants: Vec<Files>,
}

impl Bases {
    fn new() -> Self {
        let int8 = Model::new(Spec::default());
        let regression = Model::new(Spec {
            regression: true,
            labels: 1,
            exits: vec![(2, "linear")],
            seed: 3,
            ..Spec::default()
        });
        let other = Model::new(Spec {
            hidden: 12,
            heads: 3,
            intermediate: 20,
            layers: 2,
            exits: vec![(1, "fastbert")],
            branch: (6, 3),
            seed: 4,
            ..Spec::default()
        });
        Bases {
            variants: vec![
                Files::of(&int8, true),
                Files::of(&int8, false),
                Files::of(&regression, true),
                Files::of(&other, true),
            ],
        }
    }
}

// ---- Mutations ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum File {
    Config,
    Weights,
    Tokenizer,
}

/// An edit at one JSON path.
#[derive(Clone, Debug)]
enum JsonOp {
    Replace(Value),
    Remove,
    /// Numbers: add (integers) or scale (floats); strings, booleans, containers: small changes.
    Tweak(i64),
    /// Into the parent: a new key of an object, a new element of an array.
    Add(String, Value),
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit {
        file: File,
        at: Index,
        bit: u8,
    },
    SetByte {
        file: File,
        at: Index,
        value: u8,
    },
    Truncate {
        file: File,
        at: Index,
    },
    Delete {
        file: File,
        at: Index,
        len: usize,
    },
    Insert {
        file: File,
        at: Index,
        bytes: Vec<u8>,
    },
    /// A JSON-ish token (`1e999`, `NaN`, `{`, ...) inserted or written over the bytes at `at`.
    Token {
        file: File,
        at: Index,
        token: &'static str,
        overwrite: bool,
    },
    Splice {
        from: File,
        start: Index,
        len: usize,
        to: File,
        at: Index,
    },
    /// The file of another valid bundle (mismatched files).
    Foreign {
        file: File,
        variant: Index,
    },
    Replace {
        file: File,
        bytes: Vec<u8>,
    },
    Remove(File),
    /// `tinyfast.json` (config) or `tokenizer.json`, edited as JSON at the path `path` selects.
    Json {
        file: File,
        path: Index,
        op: JsonOp,
    },
    /// The safetensors header edited as JSON, written back with a correct length prefix.
    Header {
        path: Index,
        op: JsonOp,
    },
    /// The header length prefix set to a value or moved by a delta.
    HeaderLen {
        value: Option<u64>,
        delta: i64,
    },
    /// A self-consistent header whose tensor declares `rows` rows (a huge data size).
    HugeTensor {
        tensor: Index,
        rows: u64,
    },
    /// A self-consistent header with another dtype for one tensor.
    Dtype {
        tensor: Index,
        dtype: &'static str,
    },
    /// A value written into a tensor's data (F32 tensors: the float; I8: its low byte as i8).
    Poison {
        tensor: Index,
        element: Index,
        value: f32,
    },
}

const TOKENS: &[&str] = &[
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "-0",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "-9223372036854775809",
    "1e-400",
    "0.5",
    "null",
    "true",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\u0000",
    "\\ud800",
    "\u{feff}",
    "\u{0}",
    "\"__metadata__\"",
    "{\"a\":",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

const DTYPES: &[&str] = &[
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
    "F8_E4M3", "F8_E5M2", "X",
];

const KEYS: &[&str] = &[
    "extra",
    "__metadata__",
    "embeddings.word",
    "layers.99.qkv.weight",
    "exits.0.classifier.weight",
    "type",
    "dtype",
    "shape",
    "data_offsets",
    "layer",
    "",
];

fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![
            0u64,
            1,
            2,
            3,
            4,
            7,
            8,
            12,
            16,
            48,
            127,
            128,
            255,
            256,
            512,
            65535,
            65536,
            65537,
            1 << 31,
            1 << 32,
            1 << 53,
            1 << 62,
            u64::MAX,
        ])
        .prop_map(Value::from),
        prop::sample::select(vec![
            -1.0f64, -0.0, 0.5, 1.5, 1e-12, 1e-50, 3.5e38, 1e300, -1e300
        ])
        .prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "bert",
            "gelu",
            "gelu_new",
            "relu",
            "int8",
            "none",
            "fastbert",
            "linear",
            "classification",
            "regression",
            "tinyfast-bundle",
            "[CLS]",
            "[SEP]",
            "[UNK]",
            "F32",
            "I8",
            "WordPiece",
            "BPE",
            "TemplateProcessing",
            "\u{0}",
        ])
        .prop_map(Value::from),
        Just(Value::from("x".repeat(2000))),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..3).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn json_op() -> impl Strategy<Value = JsonOp> {
    prop_oneof![
        4 => hostile_value().prop_map(JsonOp::Replace),
        2 => Just(JsonOp::Remove),
        3 => prop_oneof![-3i64..=3, any::<i64>()].prop_map(JsonOp::Tweak),
        1 => (prop::sample::select(KEYS), hostile_value())
            .prop_map(|(k, v)| JsonOp::Add(k.to_string(), v)),
    ]
}

fn file() -> impl Strategy<Value = File> {
    prop_oneof![
        Just(File::Config),
        Just(File::Weights),
        Just(File::Tokenizer)
    ]
}

fn json_file() -> impl Strategy<Value = File> {
    prop_oneof![Just(File::Config), Just(File::Tokenizer)]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<Index>;
    prop_oneof![
        3 => (file(), idx(), 0u8..8).prop_map(|(file, at, bit)| Mutation::FlipBit { file, at, bit }),
        2 => (file(), idx(), any::<u8>())
            .prop_map(|(file, at, value)| Mutation::SetByte { file, at, value }),
        2 => (file(), idx()).prop_map(|(file, at)| Mutation::Truncate { file, at }),
        1 => (file(), idx(), 1usize..64)
            .prop_map(|(file, at, len)| Mutation::Delete { file, at, len }),
        1 => (file(), idx(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(file, at, bytes)| Mutation::Insert { file, at, bytes }),
        2 => (file(), idx(), prop::sample::select(TOKENS), any::<bool>()).prop_map(
            |(file, at, token, overwrite)| Mutation::Token { file, at, token, overwrite }
        ),
        1 => (file(), idx(), 1usize..256, file(), idx()).prop_map(
            |(from, start, len, to, at)| Mutation::Splice { from, start, len, to, at }
        ),
        1 => (file(), idx()).prop_map(|(file, variant)| Mutation::Foreign { file, variant }),
        1 => (file(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(file, bytes)| Mutation::Replace { file, bytes }),
        1 => file().prop_map(Mutation::Remove),
        8 => (json_file(), idx(), json_op())
            .prop_map(|(file, path, op)| Mutation::Json { file, path, op }),
        6 => (idx(), json_op()).prop_map(|(path, op)| Mutation::Header { path, op }),
        2 => (
            prop::option::of(prop_oneof![
                any::<u64>(),
                Just(u64::MAX),
                Just(1 << 24),
                Just((16 << 20) + 1),
                Just(0)
            ]),
            -16i64..=16
        )
            .prop_map(|(value, delta)| Mutation::HeaderLen { value, delta }),
        2 => (
            idx(),
            prop_oneof![
                Just(0u64),
                1u64..100,
                Just(1 << 20),
                Just(1 << 40),
                Just(u64::MAX / 4),
                Just(u64::MAX)
            ]
        )
            .prop_map(|(tensor, rows)| Mutation::HugeTensor { tensor, rows }),
        2 => (idx(), prop::sample::select(DTYPES))
            .prop_map(|(tensor, dtype)| Mutation::Dtype { tensor, dtype }),
        3 => (
            idx(),
            idx(),
            prop_oneof![
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(f32::NEG_INFINITY),
                Just(0.0f32),
                Just(-0.0f32),
                Just(-1.0f32),
                Just(-128.0f32),
                Just(f32::MAX),
                Just(1e-45f32),
                Just(1e30f32),
                any::<f32>()
            ]
        )
            .prop_map(|(tensor, element, value)| Mutation::Poison { tensor, element, value }),
    ]
}

#[derive(Clone, Debug)]
struct LoaderCase {
    base: Index,
    mutations: Vec<Mutation>,
}

fn loader_case() -> impl Strategy<Value = LoaderCase> {
    (any::<Index>(), prop::collection::vec(mutation(), 1..=3))
        .prop_map(|(base, mutations)| LoaderCase { base, mutations })
}

// ---- Applying mutations ----

/// An index into `len` items, or `None` when there are none.
fn pick(at: &Index, len: usize) -> Option<usize> {
    (len > 0).then(|| at.index(len))
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    At(usize),
}

/// Every path below the root, parents before children.
fn json_paths(v: &Value, current: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    let children: Vec<(Step, &Value)> = match v {
        Value::Object(m) => m.iter().map(|(k, c)| (Step::Key(k.clone()), c)).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, c)| (Step::At(i), c))
            .collect(),
        _ => return,
    };
    for (step, child) in children {
        current.push(step);
        out.push(current.clone());
        json_paths(child, current, out);
        current.pop();
    }
}

fn walk<'a>(mut v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    for step in path {
        v = match (v, step) {
            (Value::Object(m), Step::Key(k)) => m.get_mut(k)?,
            (Value::Array(a), Step::At(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn tweak(v: &mut Value, d: i64) {
    *v = match v.take() {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let x = i128::from(u) + i128::from(d);
                u64::try_from(x)
                    .map(Value::from)
                    .or_else(|_| i64::try_from(x).map(Value::from))
                    .unwrap_or(Value::from(d))
            } else if let Some(i) = n.as_i64() {
                Value::from(i.wrapping_add(d))
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                Value::from(f * (1.0 + d as f64))
            }
        }
        Value::String(mut s) => {
            if d >= 0 {
                s.push(char::from_u32(0x41 + (d % 26) as u32).unwrap_or('x'));
            } else {
                s.pop();
            }
            Value::String(s)
        }
        Value::Bool(b) => Value::Bool(!b),
        Value::Null => Value::from(d),
        Value::Array(mut a) => {
            if d >= 0 {
                a.push(Value::from(d));
            } else {
                a.pop();
            }
            Value::Array(a)
        }
        Value::Object(mut m) => {
            m.insert("tweak".into(), Value::from(d));
            Value::Object(m)
        }
    };
}

/// Applies `op` at the `path`-th path of `root`; false when there is nothing to edit.
fn edit_json(root: &mut Value, path: &Index, op: &JsonOp) -> bool {
    let mut paths = Vec::new();
    json_paths(root, &mut Vec::new(), &mut paths);
    let Some(i) = pick(path, paths.len()) else {
        return false;
    };
    let (last, parent_path) = paths[i].split_last().expect("paths are non-empty");
    let Some(parent) = walk(root, parent_path) else {
        return false;
    };
    match (op, parent, last) {
        (JsonOp::Add(k, v), Value::Object(m), _) => {
            m.insert(k.clone(), v.clone());
        }
        (JsonOp::Add(_, v), Value::Array(a), _) => a.push(v.clone()),
        (JsonOp::Remove, Value::Object(m), Step::Key(k)) => {
            m.remove(k);
        }
        (JsonOp::Remove, Value::Array(a), Step::At(j)) => {
            a.remove(*j);
        }
        (op, parent, last) => {
            let child = match (parent, last) {
                (Value::Object(m), Step::Key(k)) => m.get_mut(k),
                (Value::Array(a), Step::At(j)) => a.get_mut(*j),
                _ => None,
            };
            let Some(child) = child else {
                return false;
            };
            match op {
                JsonOp::Replace(v) => *child = v.clone(),
                JsonOp::Tweak(d) => tweak(child, *d),
                JsonOp::Remove | JsonOp::Add(..) => return false,
            }
        }
    }
    true
}

/// A safetensors file split into its header (as JSON) and its data.
struct Safetensors {
    header: Map<String, Value>,
    data: Vec<u8>,
}

impl Safetensors {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let end = 8usize.checked_add(usize::try_from(len).ok()?)?;
        let header = serde_json::from_slice::<Value>(bytes.get(8..end)?).ok()?;
        let Value::Object(header) = header else {
            return None;
        };
        Some(Safetensors {
            header,
            data: bytes[end..].to_vec(),
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = Value::Object(self.header.clone()).to_string().into_bytes();
        head.resize(head.len().div_ceil(8) * 8, b' ');
        let mut out = (head.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.data);
        out
    }

    /// Names of the tensor entries that are JSON objects (hostile edits may have made others
    /// anything), in data order. Indexing these entries with `[..]` cannot panic.
    fn tensors(&self) -> Vec<String> {
        let mut names: Vec<(u64, String)> = self
            .header
            .iter()
            .filter(|(k, v)| *k != "__metadata__" && v.is_object())
            .map(|(k, v)| (v["data_offsets"][0].as_u64().unwrap_or(u64::MAX), k.clone()))
            .collect();
        names.sort();
        names.into_iter().map(|(_, n)| n).collect()
    }

    /// Rewrites every `data_offsets` back to back in data order, from each tensor's dtype and shape
    /// (saturating: a huge shape declares a huge, self-consistent size).
    fn relayout(&mut self) {
        let mut offset = 0u64;
        for name in self.tensors() {
            let t = &self.header[&name];
            let elems = t["shape"].as_array().map_or(0, |dims| {
                dims.iter()
                    .fold(1u64, |acc, d| acc.saturating_mul(d.as_u64().unwrap_or(0)))
            });
            let size = elems.saturating_mul(dtype_size(t["dtype"].as_str().unwrap_or("")));
            let end = offset.saturating_add(size);
            self.header[&name]["data_offsets"] = json!([offset, end]);
            offset = end;
        }
    }
}

fn dtype_size(dtype: &str) -> u64 {
    match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

/// Applies `m` to `files`; mutations that find nothing to act on do nothing.
fn apply(m: &Mutation, files: &mut Files, bases: &Bases) {
    let bytes_of =
        |files: &mut Files, file: File| files.get(file).get_or_insert_with(Vec::new).len();
    match m {
        Mutation::FlipBit { file, at, bit } => {
            if let Some(b) = files.get(*file).as_mut() {
                if let Some(i) = pick(at, b.len()) {
                    b[i] ^= 1 << bit;
                }
            }
        }
        Mutation::SetByte { file, at, value } => {
            if let Some(b) = files.get(*file).as_mut() {
                if let Some(i) = pick(at, b.len()) {
                    b[i] = *value;
                }
            }
        }
        Mutation::Truncate { file, at } => {
            if let Some(b) = files.get(*file).as_mut() {
                let n = pick(at, b.len() + 1).unwrap_or(0);
                b.truncate(n);
            }
        }
        Mutation::Delete { file, at, len } => {
            if let Some(b) = files.get(*file).as_mut() {
                if let Some(i) = pick(at, b.len()) {
                    let end = (i + len).min(b.len());
                    b.drain(i..end);
                }
            }
        }
        Mutation::Insert { file, at, bytes } => {
            let n = bytes_of(files, *file);
            let i = pick(at, n + 1).unwrap_or(0);
            let b = files.get(*file).as_mut().expect("inserted above");
            b.splice(i..i, bytes.iter().copied());
        }
        Mutation::Token {
            file,
            at,
            token,
            overwrite,
        } => {
            let n = bytes_of(files, *file);
            let i = pick(at, n + 1).unwrap_or(0);
            let b = files.get(*file).as_mut().expect("inserted above");
            let end = if *overwrite {
                (i + token.len()).min(b.len())
            } else {
                i
            };
            b.splice(i..end, token.bytes());
        }
        Mutation::Splice {
            from,
            start,
            len,
            to,
            at,
        } => {
            let piece: Vec<u8> = match files.get(*from).as_ref() {
                Some(src) if !src.is_empty() => {
                    let s = start.index(src.len());
                    src[s..(s + len).min(src.len())].to_vec()
                }
                _ => return,
            };
            let n = bytes_of(files, *to);
            let i = pick(at, n + 1).unwrap_or(0);
            let b = files.get(*to).as_mut().expect("inserted above");
            b.splice(i..i, piece);
        }
        Mutation::Foreign { file, variant } => {
            let mut other = variant.get(&bases.variants).clone();
            *files.get(*file) = other.get(*file).clone();
        }
        Mutation::Replace { file, bytes } => *files.get(*file) = Some(bytes.clone()),
        Mutation::Remove(file) => *files.get(*file) = None,
        Mutation::Json { file, path, op } => {
            let Some(b) = files.get(*file).as_mut() else {
                return;
            };
            let Ok(mut v) = serde_json::from_slice::<Value>(b) else {
                return;
            };
            if edit_json(&mut v, path, op) {
                *b = v.to_string().into_bytes();
            }
        }
        Mutation::Header { path, op } => {
            with_safetensors(files, |st| {
                let mut v = Value::Object(std::mem::take(&mut st.header));
                edit_json(&mut v, path, op);
                if let Value::Object(m) = v {
                    st.header = m;
                }
            });
        }
        Mutation::HeaderLen { value, delta } => {
            if let Some(b) = files.weights.as_mut() {
                if b.len() >= 8 {
                    let old = u64::from_le_bytes(b[..8].try_into().unwrap());
                    let new = value.unwrap_or_else(|| old.wrapping_add_signed(*delta));
                    b[..8].copy_from_slice(&new.to_le_bytes());
                }
            }
        }
        Mutation::HugeTensor { tensor, rows } => {
            with_safetensors(files, |st| {
                let names = st.tensors();
                let Some(i) = pick(tensor, names.len()) else {
                    return;
                };
                if let Some(dims) = st.header[&names[i]]["shape"].as_array_mut() {
                    match dims.first_mut() {
                        Some(first) => *first = Value::from(*rows),
                        None => dims.push(Value::from(*rows)),
                    }
                }
                st.relayout();
            });
        }
        Mutation::Dtype { tensor, dtype } => {
            with_safetensors(files, |st| {
                let names = st.tensors();
                if let Some(i) = pick(tensor, names.len()) {
                    st.header[&names[i]]["dtype"] = Value::from(*dtype);
                    st.relayout();
                }
            });
        }
        Mutation::Poison {
            tensor,
            element,
            value,
        } => {
            with_safetensors(files, |st| {
                let names = st.tensors();
                let Some(i) = pick(tensor, names.len()) else {
                    return;
                };
                let t = &st.header[&names[i]];
                let (Some(start), Some(end)) = (
                    t["data_offsets"][0]
                        .as_u64()
                        .and_then(|v| usize::try_from(v).ok()),
                    t["data_offsets"][1]
                        .as_u64()
                        .and_then(|v| usize::try_from(v).ok()),
                ) else {
                    return;
                };
                let end = end.min(st.data.len());
                if t["dtype"] == "I8" {
                    if let Some(j) = pick(element, end.saturating_sub(start)) {
                        st.data[start + j] = (*value as i32 as i8) as u8;
                    }
                } else if let Some(j) = pick(element, end.saturating_sub(start) / 4) {
                    st.data[start + 4 * j..start + 4 * j + 4].copy_from_slice(&value.to_le_bytes());
                }
            });
        }
    }
}

/// Edits the weights file as a parsed safetensors file (nothing when it does not parse).
fn with_safetensors(files: &mut Files, f: impl FnOnce(&mut Safetensors)) {
    let Some(bytes) = files.weights.as_mut() else {
        return;
    };
    if let Some(mut st) = Safetensors::parse(bytes) {
        f(&mut st);
        *bytes = st.to_bytes();
    }
}

// ---- Using what loads ----

/// Predictions of `n` rows must be well-formed.
fn check_predictions(p: &Predictions, n: usize, rt: &Runtime) -> Result<(), String> {
    let config = rt.config();
    let c = config.num_outputs();
    let layers = config.architecture.num_layers;
    if p.len() != n || p.probabilities.len() != n * c || p.exit_layers.len() != n {
        return Err(format!("{n} rows gave {} results", p.len()));
    }
    for i in 0..n {
        let exit = p.exit_layers[i];
        if exit != layers && !config.exits.iter().any(|e| e.layer == exit) {
            return Err(format!("row {i}: exit layer {exit} is no exit"));
        }
        let row = p.row(i);
        if row.iter().any(|v| !v.is_finite()) {
            return Err(format!("row {i}: non-finite output {row:?}"));
        }
        if config.task == tinyfast_core::config::Task::Classification {
            let sum: f32 = row.iter().sum();
            if (sum - 1.0).abs() > 1e-3 || p.labels[i] >= c {
                return Err(format!(
                    "row {i}: probabilities {row:?}, label {}",
                    p.labels[i]
                ));
            }
        }
    }
    Ok(())
}

/// A bundle that loaded: predictions of texts, pairs and ids must not panic.
fn exercise(bundle: Bundle) -> Result<(), String> {
    let rt = match Runtime::new(
        bundle,
        RuntimeOptions {
            threads: 1,
            kernel: None,
        },
    ) {
        Ok(rt) => rt,
        Err(_) => return Ok(()),
    };
    let long = "good film ".repeat(200);
    let inputs = [
        Input::Single(""),
        Input::Single("the movie is good"),
        Input::Pair("i love it", "boring"),
        Input::Single(&long),
        Input::Pair(&long, ""),
    ];
    for speed in [0.0, 0.5, 1.0] {
        if let Ok(p) = rt.predict(&inputs, speed, 2) {
            check_predictions(&p, inputs.len(), &rt)?;
        }
    }
    let vocab = rt.config().architecture.vocab_size as u32;
    let max_len = rt.config().max_length;
    let width = max_len.min(8);
    let ids: Vec<u32> = (0..2 * width as u32)
        .map(|i| (i * 7 + 2) % vocab.max(1))
        .collect();
    let lengths = [width, 1];
    let batch = TokenBatch {
        ids: &ids,
        type_ids: None,
        lengths: &lengths,
        width,
    };
    if let Ok(p) = rt.predict_ids(&batch, 0.5, 1) {
        check_predictions(&p, 2, &rt)?;
    }
    Ok(())
}

#[test]
fn loader_never_panics() {
    let bases = Bases::new();
    let dir = TempDir::new("fuzz-loader");
    let loaded = AtomicUsize::new(0);
    fuzz("loader_never_panics", loader_case(), |case| {
        let mut files = case.base.get(&bases.variants).clone();
        for m in &case.mutations {
            apply(m, &mut files, &bases);
        }
        files.write(dir.path());
        guarded(format!("{case:?}"), || {
            match Bundle::load(dir.path()) {
                Ok(bundle) => {
                    loaded.fetch_add(1, Ordering::Relaxed);
                    exercise(bundle)?;
                }
                Err(e) if e.to_string().is_empty() => return Err("an empty error message".into()),
                Err(_) => {}
            }
            Ok(())
        })
    });
    eprintln!(
        "loader_never_panics: {} mutated bundles still loaded (and were run)",
        loaded.load(Ordering::Relaxed)
    );
}

// ---- Prediction inputs ----

#[derive(Clone, Debug)]
struct IdsCase {
    runtime: Index,
    lengths: Vec<usize>,
    width: usize,
    /// Whether `ids` (and `type_ids`) have exactly `rows * width` values.
    exact: bool,
    ids: Vec<u32>,
    types: Option<Vec<u32>>,
    speed: f32,
    batch_size: usize,
    texts: Vec<(String, Option<String>)>,
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        4 => prop::collection::vec(
            prop::sample::select(vec![
                "the", "movie", "good", "bad", "!", ",", "##s", "[CLS]", "[SEP]", "[PAD]",
                "[MASK]", "\u{0}", "\t", "é", "電影", "😀", "\u{200b}", "a\u{301}"
            ]),
            0..30
        )
        .prop_map(|w| w.join(" ")),
        1 => (1usize..1000).prop_map(|n| "good ".repeat(n)),
        1 => (1usize..2000).prop_map(|n| "x".repeat(n)),
    ]
}

fn ids_case() -> impl Strategy<Value = IdsCase> {
    let length = prop_oneof![8 => 0usize..30, 1 => Just(usize::MAX), 1 => Just(1usize << 40)];
    let width = prop_oneof![8 => 0usize..30, 1 => Just(usize::MAX), 1 => Just(1usize << 40)];
    let id = prop_oneof![8 => 0u32..48, 1 => 48u32..64, 1 => any::<u32>()];
    let ty = prop_oneof![8 => 0u32..2, 1 => any::<u32>()];
    let speed = prop_oneof![
        6 => 0.0f32..=1.0,
        1 => prop::sample::select(vec![
            0.0f32, 1.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1e-9, 1.000_001,
            f32::MIN_POSITIVE, 1e-45
        ]),
        1 => any::<f32>(),
    ];
    let batch = prop_oneof![Just(0usize), 1usize..10, Just(usize::MAX)];
    (
        any::<Index>(),
        prop::collection::vec(length, 0..6),
        width,
        prop::bool::weighted(0.8),
        prop::collection::vec(id, 0..200),
        prop::option::weighted(0.7, prop::collection::vec(ty, 0..200)),
        speed,
        batch,
        prop::collection::vec((text(), prop::option::of(text())), 0..5),
    )
        .prop_map(
            |(runtime, lengths, width, exact, ids, types, speed, batch_size, texts)| IdsCase {
                runtime,
                lengths,
                width,
                exact,
                ids,
                types,
                speed,
                batch_size,
                texts,
            },
        )
}

/// `v` resized to `n` values (cycling), when `n` is small.
fn fit(v: &[u32], n: usize) -> Vec<u32> {
    if v.is_empty() {
        return vec![2; n.min(4096)];
    }
    v.iter().copied().cycle().take(n.min(4096)).collect()
}

#[test]
fn predict_never_panics() {
    let model = Model::new(Spec::default());
    let regression = Model::new(Spec {
        regression: true,
        labels: 1,
        seed: 9,
        ..Spec::default()
    });
    let dirs = [
        model.write(true),
        model.write(false),
        regression.write(true),
    ];
    let mut runtimes = Vec::new();
    for kernel in CpuCapabilities::detect().kernels {
        for (i, dir) in dirs.iter().enumerate() {
            // Every bundle on the default kernel, the int8 one on every kernel.
            if i == 0 || kernel == CpuCapabilities::detect().best() {
                let opts = RuntimeOptions {
                    threads: 1 + i % 2,
                    kernel: Some(kernel),
                };
                runtimes.push(Runtime::load(dir.path(), opts).unwrap());
            }
        }
    }
    fuzz("predict_never_panics", ids_case(), |case| {
        let rt = case.runtime.get(&runtimes);
        let rows = case.lengths.len();
        let total = rows.checked_mul(case.width).filter(|&t| t <= 4096);
        let (ids, types) = match (case.exact, total) {
            (true, Some(n)) => (fit(&case.ids, n), case.types.as_ref().map(|t| fit(t, n))),
            _ => (case.ids.clone(), case.types.clone()),
        };
        guarded(format!("{case:?}"), || {
            let batch = TokenBatch {
                ids: &ids,
                type_ids: types.as_deref(),
                lengths: &case.lengths,
                width: case.width,
            };
            if let Ok(p) = rt.predict_ids(&batch, case.speed, case.batch_size) {
                check_predictions(&p, rows, rt)?;
            }
            let inputs: Vec<Input> = case
                .texts
                .iter()
                .map(|(a, b)| match b {
                    Some(b) => Input::Pair(a, b),
                    None => Input::Single(a),
                })
                .collect();
            let valid_args =
                case.speed.is_finite() && (0.0..=1.0).contains(&case.speed) && case.batch_size > 0;
            match rt.predict(&inputs, case.speed, case.batch_size) {
                Ok(p) => check_predictions(&p, inputs.len(), rt)?,
                Err(e) if valid_args => return Err(format!("valid texts were rejected: {e}")),
                Err(_) => {}
            }
            Ok(())
        })
    });
}
