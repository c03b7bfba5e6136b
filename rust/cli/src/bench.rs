//! `tinyfast-rt bench`: latency and throughput of a bundle on synthetic token-id batches.
//!
//! Every call runs `batch-size` rows of exactly `seq-len` tokens (`[CLS]`, random ids from the
//! vocabulary, `[SEP]`) through `Runtime::predict_ids`; the ids are redrawn before each call, outside
//! the timed region. Tokenization is not included (see `predict` for the text path).

use std::time::Instant;

use serde_json::json;
use tinyfast_core::config::Quantization;
use tinyfast_core::{Input, Runtime, TokenBatch};

use crate::args::{self, Flag};
use crate::shared::{self, CliError};
use tinyfast_core::rng::SplitMix64;

pub const HELP: &str = "usage: tinyfast-rt bench BUNDLE [options]

Times Runtime::predict_ids on synthetic batches of token ids ([CLS], random ids from the
vocabulary, [SEP]; exactly --seq-len tokens per row) and prints latency percentiles per call
(p50/p90/p99/mean, ms), rows/s and the histogram of exit layers.

options:
  --batch-size N  rows per call (default 1)
  --seq-len L     tokens per row, [CLS] and [SEP] included: 2..=max_length
                  (default: 128, or the bundle's max_length if smaller)
  --iters N       timed calls (default 100)
  --warmup N      untimed calls first (default 10)
  --speed S       early-exit threshold in [0, 1] (default 0: never exit early)
  --threads T     worker threads (default 0: one per core)
  --kernel K      int8 kernel: avx512-vnni, avx2 or portable (default: the fastest)
  --seed N        seed of the synthetic ids (default 0)
  --json          print one JSON object instead of text
  -h, --help      print this message";

const FLAGS: &[Flag] = &[
    Flag::value("batch-size"),
    Flag::value("seq-len"),
    Flag::value("iters"),
    Flag::value("warmup"),
    Flag::value("speed"),
    Flag::value("threads"),
    Flag::value("kernel"),
    Flag::value("seed"),
    Flag::switch("json"),
];

/// Most tokens (`batch-size * seq-len`) one synthetic batch may hold (64 MiB of ids).
const MAX_TOKENS: usize = 1 << 24;

pub fn run(argv: &[String]) -> Result<(), CliError> {
    let p = args::parse(argv, FLAGS).map_err(CliError::Usage)?;
    if p.help {
        return shared::print(HELP);
    }
    let count = |name: &str, default: usize, min: usize| -> Result<usize, CliError> {
        let v = p
            .get(name, "a non-negative integer")
            .map_err(CliError::Usage)?
            .unwrap_or(default);
        shared::at_least(name, v, min)
    };
    let bundle = p.positionals(&["BUNDLE"]).map_err(CliError::Usage)?[0];
    let batch_size = count("batch-size", 1, 1)?;
    let iters = count("iters", 100, 1)?;
    let warmup = count("warmup", 10, 0)?;
    let threads = count("threads", 0, 0)?;
    let seed: u64 = p
        .get("seed", "a non-negative integer")
        .map_err(CliError::Usage)?
        .unwrap_or(0);
    let speed = shared::check_speed(
        p.get("speed", "a number in [0, 1]")
            .map_err(CliError::Usage)?
            .unwrap_or(0.0),
    )?;
    let seq_len_flag: Option<usize> = p
        .get("seq-len", "a number of tokens")
        .map_err(CliError::Usage)?;
    let kernel = shared::kernel(p.value("kernel"))?;

    let rt = shared::load_runtime(bundle, threads, kernel)?;
    let max_length = rt.config().max_length;
    let seq_len = seq_len_flag.unwrap_or(max_length.min(128));
    if !(2..=max_length).contains(&seq_len) {
        return Err(CliError::Usage(format!(
            "--seq-len: expected 2..={max_length} (the bundle's max_length), got {seq_len}"
        )));
    }
    let tokens = batch_size
        .checked_mul(seq_len)
        .filter(|&t| t <= MAX_TOKENS)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--batch-size {batch_size} x --seq-len {seq_len} is more than the {MAX_TOKENS} \
                 tokens a synthetic batch may hold"
            ))
        })?;
    let (cls, sep) = special_ids(&rt)?;
    let vocab = rt.config().architecture.vocab_size as u64;

    let mut rng = SplitMix64::new(seed);
    let mut ids = vec![0u32; tokens];
    let lengths = vec![seq_len; batch_size];
    let num_layers = rt.config().architecture.num_layers;
    let mut histogram = vec![0usize; num_layers + 1];
    let mut latencies = Vec::with_capacity(iters.min(1 << 20));
    let mut total_s = 0.0f64;
    for i in 0..warmup + iters {
        for row in ids.chunks_exact_mut(seq_len) {
            for id in row.iter_mut() {
                *id = random_id(&mut rng, vocab, cls, sep);
            }
            row[0] = cls;
            row[seq_len - 1] = sep;
        }
        let batch = TokenBatch {
            ids: &ids,
            type_ids: None,
            lengths: &lengths,
            width: seq_len,
        };
        let start = Instant::now();
        let preds = rt
            .predict_ids(&batch, speed, batch_size)
            .map_err(|e| CliError::Failure(e.to_string()))?;
        let elapsed = start.elapsed().as_secs_f64();
        if i >= warmup {
            total_s += elapsed;
            latencies.push(elapsed * 1e3);
            for &layer in &preds.exit_layers {
                if let Some(slot) = histogram.get_mut(layer) {
                    *slot += 1;
                }
            }
        }
    }

    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let rows = (iters * batch_size) as f64;
    let report = Report {
        p50: shared::percentile(&sorted, 50.0),
        p90: shared::percentile(&sorted, 90.0),
        p99: shared::percentile(&sorted, 99.0),
        mean: shared::mean(&latencies),
        min: sorted.first().copied().unwrap_or(0.0),
        max: sorted.last().copied().unwrap_or(0.0),
        rows_per_s: if total_s > 0.0 { rows / total_s } else { 0.0 },
    };
    // Layers a row can leave after: every exit, and the head after the last layer.
    let mut exit_layers: Vec<usize> = rt.config().exits.iter().map(|e| e.layer).collect();
    exit_layers.push(num_layers);
    let hist: Vec<(usize, usize)> = exit_layers.iter().map(|&l| (l, histogram[l])).collect();

    if p.switch("json") {
        let value = json!({
            "bundle": bundle,
            "kernel": rt.kernel().name(),
            "threads": rt.threads(),
            "batch_size": batch_size,
            "seq_len": seq_len,
            "speed": speed,
            "iters": iters,
            "warmup": warmup,
            "num_layers": num_layers,
            "latency_ms": {
                "p50": report.p50, "p90": report.p90, "p99": report.p99,
                "mean": report.mean, "min": report.min, "max": report.max,
            },
            "rows_per_s": report.rows_per_s,
            "tokens_per_s": report.rows_per_s * seq_len as f64,
            "exit_layers": hist.iter().map(|&(layer, n)| json!({
                "layer": layer, "rows": n, "share": n as f64 / rows,
            })).collect::<Vec<_>>(),
        });
        return shared::print(&value.to_string());
    }
    let c = rt.config();
    let quantization = match c.quantization {
        Quantization::Int8 => "int8",
        Quantization::None => "f32",
    };
    let mut text = format!(
        "bundle {bundle}: {num_layers} layers, hidden {}, {quantization}, exits after {:?}\n",
        c.architecture.hidden_size,
        c.exits.iter().map(|e| e.layer).collect::<Vec<_>>()
    );
    text.push_str(&format!(
        "kernel {}, {} threads, batch {batch_size} x seq {seq_len}, speed {speed}, {iters} calls \
         ({warmup} warmup)\n",
        rt.kernel(),
        rt.threads()
    ));
    text.push_str(&format!(
        "latency ms/call: p50 {:.3}  p90 {:.3}  p99 {:.3}  mean {:.3}  (min {:.3}, max {:.3})\n",
        report.p50, report.p90, report.p99, report.mean, report.min, report.max
    ));
    text.push_str(&format!(
        "throughput: {:.1} rows/s, {:.0} tokens/s\nexit layers:",
        report.rows_per_s,
        report.rows_per_s * seq_len as f64
    ));
    for (layer, n) in hist {
        let head = if layer == num_layers { " (head)" } else { "" };
        text.push_str(&format!(
            "\n  layer {layer}{head}: {n} rows ({:.1}%)",
            100.0 * n as f64 / rows
        ));
    }
    shared::print(&text)
}

struct Report {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
    min: f64,
    max: f64,
    rows_per_s: f64,
}

/// `[CLS]` and `[SEP]`: the first and last ids the tokenizer gives an empty text, else the ids of
/// the tokens named `[CLS]` and `[SEP]`.
fn special_ids(rt: &Runtime) -> Result<(u32, u32), CliError> {
    if let Ok(enc) = rt.tokenize(&[Input::Single("")]) {
        if enc.rows() == 1 && enc.lengths[0] >= 2 {
            let row = enc.row_ids(0);
            return Ok((row[0], row[row.len() - 1]));
        }
    }
    let inner = rt.bundle().tokenizer.inner();
    match (inner.token_to_id("[CLS]"), inner.token_to_id("[SEP]")) {
        (Some(cls), Some(sep)) => Ok((cls, sep)),
        _ => Err(CliError::Failure(
            "cannot find the [CLS] and [SEP] ids: the tokenizer adds no special tokens to an \
             empty text and has no [CLS]/[SEP] tokens"
                .into(),
        )),
    }
}

/// A random id below `vocab`, avoiding the special ids when the vocabulary has other ids.
fn random_id(rng: &mut SplitMix64, vocab: u64, cls: u32, sep: u32) -> u32 {
    loop {
        let id = rng.below(vocab) as u32;
        if vocab <= 3 || (id != cls && id != sep) {
            return id;
        }
    }
}
