//! Helpers of the CLI tests: a tiny bundle (written by `tinyfast_core::testing`) and a way to run
//! the binary.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
pub use tinyfast_core::testing::TempDir;
use tinyfast_core::testing::{Model, Spec};

/// The label names of a classification bundle.
pub const LABELS: &[&str] = &["label0", "label1", "label2"];
pub const LAYERS: usize = 3;
pub const MAX_LENGTH: usize = 20;

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

/// The test model: 3 layers of width 16, a linear exit after layer 1 and a fastbert exit after
/// layer 2.
fn model(kind: Kind) -> Model {
    Model::new(Spec {
        layers: LAYERS,
        max_length: MAX_LENGTH,
        labels: LABELS.len(),
        regression: kind.regression,
        exits: vec![(1, "linear"), (2, "fastbert")],
        ..Spec::default()
    })
}

/// Writes a bundle of `kind` into a new directory.
pub fn bundle(kind: Kind) -> TempDir {
    model(kind).write(kind.int8)
}

/// Writes (or overwrites) the bundle files of `kind` in `dir`.
pub fn write_bundle(dir: &Path, kind: Kind) {
    model(kind).write_to(dir, kind.int8);
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
    run_within(args, stdin, Duration::from_secs(600))
}

/// [`run`], killing the binary if it has not finished after `limit`: a hang fails the test.
pub fn run_within(args: &[&str], stdin: &[u8], limit: Duration) -> Output {
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
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = r.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tinyfast-rt {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    Output {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout.join().unwrap()).unwrap(),
        stderr: String::from_utf8(stderr.join().unwrap()).unwrap(),
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
