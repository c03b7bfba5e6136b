//! `tinyfast-rt gemm-bench`: int8 GEMM throughput of each kernel at a model's shapes.
//!
//! For every shape `M x K x N` (M token rows, K input features, N outputs) and kernel it times
//! `gemm_dequant` (u8 activations x prepacked int8 weights, dequantized to f32 with a bias, as the
//! runtime calls it) and, separately, the per-token activation quantization that precedes it in
//! every int8 linear (the runtime's `model::quantize::quantize_rows`, at the fastest level). GOPS
//! counts `2 * M * K * N` operations per call; "linear GOPS" divides them by the time of both
//! steps, which is what one int8 linear of the encoder costs. Everything runs on one thread: the runtime splits
//! rows over its threads, so a linear on T threads is at best T times faster.

use std::time::Instant;

use serde_json::json;
use tinyfast_core::cpu::{CpuCapabilities, Isa, KernelKind};
use tinyfast_core::gemm::{gemm_dequant, PackedWeights, MAX_K};
use tinyfast_core::model::quantize::quantize_rows;
use tinyfast_core::quant::QuantizedMatrix;

use crate::args::{self, Flag};
use crate::shared::{self, CliError};
use tinyfast_core::rng::SplitMix64;

pub const HELP: &str = "usage: tinyfast-rt gemm-bench [options]

Int8 GEMM throughput (GOPS, 2*M*K*N operations per call) of gemm_dequant, one thread, and the
per-token activation quantization before it, reported separately and combined as the effective
GOPS of one int8 linear.

Default shapes: tinybert4's linears (K, N) = (312, 936) qkv, (312, 312) attn_out,
(312, 1200) ffn_in, (1200, 312) ffn_out at M = 32 (batch 1 x 32 tokens), 128 (batch 1 x 128)
and 1024 (batch 32 x 32) token rows.

options:
  --shapes 'M,K,N;...'  shapes to time instead of the defaults (K at most 65536)
  --kernel K|all        avx512-vnni, avx2, portable, or all this CPU runs (default: all)
  --iters N             timed calls per measurement (default: as many as fit in about 0.15 s,
                        at least 3); the median call is reported
  --json                print one JSON object instead of a table
  -h, --help            print this message";

const FLAGS: &[Flag] = &[
    Flag::value("shapes"),
    Flag::value("kernel"),
    Flag::value("iters"),
    Flag::switch("json"),
];

/// The time an automatic measurement aims at, in seconds.
const TARGET_S: f64 = 0.15;
/// Largest `M * K`, `M * N` or `N * K` accepted (bytes or elements of one buffer).
const MAX_ELEMENTS: usize = 1 << 28;

/// One GEMM shape to time.
#[derive(Clone, Debug, PartialEq)]
struct Shape {
    /// `qkv`, `ffn_in`, ... or `custom`.
    name: &'static str,
    /// What the rows are (`b1xs32`), or empty.
    rows: &'static str,
    m: usize,
    k: usize,
    n: usize,
}

fn default_shapes() -> Vec<Shape> {
    let mut out = Vec::new();
    for (rows, m) in [("b1xs32", 32), ("b1xs128", 128), ("b32xs32", 32 * 32)] {
        for (name, k, n) in [
            ("qkv", 312, 936),
            ("attn_out", 312, 312),
            ("ffn_in", 312, 1200),
            ("ffn_out", 1200, 312),
        ] {
            out.push(Shape {
                name,
                rows,
                m,
                k,
                n,
            });
        }
    }
    out
}

/// Parses `M,K,N;M,K,N;...`.
fn parse_shapes(text: &str) -> Result<Vec<Shape>, String> {
    let mut out = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let dims: Vec<&str> = part.split(',').map(str::trim).collect();
        let parsed: Vec<usize> = dims
            .iter()
            .filter_map(|d| d.parse::<usize>().ok().filter(|&v| v >= 1))
            .collect();
        let [m, k, n] = parsed[..] else {
            return Err(format!(
                "--shapes: expected M,K,N (three positive integers), got '{part}'"
            ));
        };
        if dims.len() != 3 {
            return Err(format!("--shapes: expected M,K,N, got '{part}'"));
        }
        if k > MAX_K {
            return Err(format!(
                "--shapes: K = {k} in '{part}' is larger than the kernels' maximum {MAX_K}"
            ));
        }
        let fits = |a: usize, b: usize| a.checked_mul(b).is_some_and(|v| v <= MAX_ELEMENTS);
        if !(fits(m, k) && fits(m, n) && fits(n, k)) {
            return Err(format!(
                "--shapes: '{part}' needs a buffer of more than {MAX_ELEMENTS} elements"
            ));
        }
        out.push(Shape {
            name: "custom",
            rows: "",
            m,
            k,
            n,
        });
    }
    if out.is_empty() {
        return Err("--shapes: no shape given (expected 'M,K,N;M,K,N;...')".into());
    }
    Ok(out)
}

/// The median seconds per call of `f` and the number of timed calls.
fn time_calls(
    iters: Option<usize>,
    mut f: impl FnMut() -> Result<(), String>,
) -> Result<(f64, usize), String> {
    // One untimed call (page faults, caches), then one to size the automatic count.
    f()?;
    let start = Instant::now();
    f()?;
    let once = start.elapsed().as_secs_f64().max(1e-9);
    let n = iters.unwrap_or_else(|| ((TARGET_S / once).ceil() as usize).clamp(3, 1_000_000));
    let mut times = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((shared::percentile(&times, 50.0), n))
}

/// One measured (kernel, shape).
struct Row {
    kernel: KernelKind,
    shape: Shape,
    gemm_iters: usize,
    gemm_s: f64,
    quant_s: f64,
}

impl Row {
    fn ops(&self) -> f64 {
        2.0 * self.shape.m as f64 * self.shape.k as f64 * self.shape.n as f64
    }

    fn gemm_gops(&self) -> f64 {
        self.ops() / self.gemm_s / 1e9
    }

    fn linear_gops(&self) -> f64 {
        self.ops() / (self.gemm_s + self.quant_s) / 1e9
    }
}

pub fn run(argv: &[String]) -> Result<(), CliError> {
    let p = args::parse(argv, FLAGS).map_err(CliError::Usage)?;
    if p.help {
        return shared::print(HELP);
    }
    p.positionals(&[]).map_err(CliError::Usage)?;
    let shapes = match p.value("shapes") {
        Some(text) => parse_shapes(text).map_err(CliError::Usage)?,
        None => default_shapes(),
    };
    let kernels = match p.value("kernel").map(str::trim) {
        None | Some("all") => CpuCapabilities::detect().kernels,
        Some(name) => vec![shared::kernel(Some(name))?.unwrap_or(KernelKind::Portable)],
    };
    let iters = match p
        .get::<usize>("iters", "a positive integer")
        .map_err(CliError::Usage)?
    {
        Some(n) => Some(shared::at_least("iters", n, 1)?),
        None => None,
    };

    let mut rng = SplitMix64::new(0x6765_6d6d);
    let mut rows = Vec::new();
    for shape in &shapes {
        let (m, k, n) = (shape.m, shape.k, shape.n);
        let x: Vec<f32> = (0..m * k).map(|_| 2.0 * rng.signed_unit()).collect();
        let mut q = vec![0u8; m * k];
        let mut scales = vec![0f32; m];
        let mut zps = vec![0u8; m];
        let (quant_s, _) = time_calls(iters, || {
            quantize_rows(Isa::best(), &x, m, k, &mut q, &mut scales, &mut zps)
                .map_err(|e| e.to_string())
        })
        .map_err(CliError::Failure)?;
        let weights: Vec<i8> = (0..n * k)
            .map(|_| (rng.below(255) as i32 - 127) as i8)
            .collect();
        let w_scales: Vec<f32> = (0..n)
            .map(|_| 0.001 + 0.01 * rng.signed_unit().abs())
            .collect();
        let matrix = QuantizedMatrix::from_parts(n, k, weights, w_scales)
            .map_err(|e| CliError::Failure(e.to_string()))?;
        let packed = PackedWeights::new(&matrix).map_err(|e| CliError::Failure(e.to_string()))?;
        let bias: Vec<f32> = (0..n).map(|_| rng.signed_unit()).collect();
        let mut out = vec![0f32; m * n];
        for &kernel in &kernels {
            let (gemm_s, gemm_iters) = time_calls(iters, || {
                gemm_dequant(
                    &q,
                    m,
                    k,
                    &packed,
                    &scales,
                    &zps,
                    Some(&bias),
                    &mut out,
                    kernel,
                )
                .map_err(|e| e.to_string())
            })
            .map_err(CliError::Failure)?;
            rows.push(Row {
                kernel,
                shape: shape.clone(),
                gemm_iters,
                gemm_s,
                quant_s,
            });
        }
    }
    // Kernel-major order reads best in a table.
    rows.sort_by_key(|r| r.kernel);

    if p.switch("json") {
        let results: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "kernel": r.kernel.name(),
                    "name": r.shape.name,
                    "rows": r.shape.rows,
                    "m": r.shape.m, "k": r.shape.k, "n": r.shape.n,
                    "iters": r.gemm_iters,
                    "gemm_us": r.gemm_s * 1e6,
                    "gemm_gops": r.gemm_gops(),
                    "quant_us": r.quant_s * 1e6,
                    "linear_us": (r.gemm_s + r.quant_s) * 1e6,
                    "linear_gops": r.linear_gops(),
                })
            })
            .collect();
        let value = json!({
            "threads": 1,
            "kernels": kernels.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "results": results,
        });
        return shared::print(&value.to_string());
    }
    let mut text = String::from(
        "int8 GEMM, one thread: gemm = gemm_dequant (u8 x i8 -> f32 + bias), quant = per-token \
         activation quantization,\nlinear = both (one int8 linear of the encoder); \
         GOPS = 2*M*K*N / median time\n\n",
    );
    text.push_str(&format!(
        "{:<12} {:<8} {:<9} {:>5} {:>5} {:>5} {:>10} {:>8} {:>9} {:>11}\n",
        "kernel", "rows", "linear", "M", "K", "N", "gemm us", "GOPS", "quant us", "linear GOPS"
    ));
    for r in &rows {
        text.push_str(&format!(
            "{:<12} {:<8} {:<9} {:>5} {:>5} {:>5} {:>10.1} {:>8.1} {:>9.1} {:>11.1}\n",
            r.kernel.name(),
            if r.shape.rows.is_empty() {
                "-"
            } else {
                r.shape.rows
            },
            r.shape.name,
            r.shape.m,
            r.shape.k,
            r.shape.n,
            r.gemm_s * 1e6,
            r.gemm_gops(),
            r.quant_s * 1e6,
            r.linear_gops()
        ));
    }
    shared::print(text.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_reject() {
        let s = parse_shapes("32,312,936; 1,2,3;").unwrap();
        assert_eq!((s[0].m, s[0].k, s[0].n), (32, 312, 936));
        assert_eq!((s[1].m, s[1].k, s[1].n), (1, 2, 3));
        for bad in [
            "",
            ";",
            "1,2",
            "1,2,3,4",
            "0,1,1",
            "a,b,c",
            "1,70000,1",
            "100000,100000,1",
        ] {
            assert!(parse_shapes(bad).is_err(), "{bad}");
        }
        assert_eq!(default_shapes().len(), 12);
    }
}
