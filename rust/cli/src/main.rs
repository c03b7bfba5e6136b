//! `tinyfast-rt`: the tinyfast runtime as a standalone binary, for machines with no Python.
//!
//! Commands: `info`, `predict`, `bench`, `gemm-bench` (each with `--help`). Exit codes: 0 on
//! success, 1 when the work fails (a bundle that cannot be loaded, a bad input line, an I/O error),
//! 2 for a usage error (unknown option, invalid value). Errors go to standard error as one line
//! starting with `tinyfast-rt <command>:`; nothing a user can do makes the binary panic.

mod args;
mod bench;
mod gemm_bench;
mod predict;
mod shared;

use std::process::ExitCode;

use shared::CliError;
use tinyfast_core::cpu::CpuCapabilities;

const USAGE: &str = "tinyfast-rt: the tinyfast int8 early-exit runtime, without Python

usage: tinyfast-rt <command> [options]

commands:
  info        print the build version and the int8 kernels this CPU can run
  predict     classify lines of text from stdin or a file with a bundle, JSONL out
  bench       latency percentiles and throughput of a bundle on synthetic token ids
  gemm-bench  int8 GEMM GOPS of every kernel at the shapes of a tinybert4 model

options:
  -h, --help  print this message (or a command's: tinyfast-rt <command> --help)
  --version   print the version

exit codes: 0 success, 1 failure (bundle, input or I/O error), 2 usage error";

const INFO_HELP: &str = "usage: tinyfast-rt info

Prints the build version, the CPU features probed and the int8 kernels this CPU can run
(fastest first; the runtime uses the first unless --kernel or TINYFAST_KERNEL says otherwise).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("");
    // The default hook would print a message for every panic, also for those a library raises and
    // the runtime catches and turns into an error (the `tokenizers` crate panics on some malformed
    // files). So the hook is silent, and a panic that reaches this point (a bug) is reported here
    // as one line with a distinct exit code.
    std::panic::set_hook(Box::new(|_| {}));
    let result = match std::panic::catch_unwind(|| run(command, &args)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!("tinyfast-rt: internal error (please report it): {msg}");
            return ExitCode::from(70);
        }
    };
    match result {
        Ok(()) | Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            let prefix = command_prefix(command);
            let hint = if is_command(command) {
                format!("tinyfast-rt {command} --help")
            } else {
                "tinyfast-rt --help".to_string()
            };
            eprintln!("{prefix}: {msg}\nrun '{hint}' for usage");
            ExitCode::from(2)
        }
        Err(CliError::Failure(msg)) => {
            eprintln!("{}: {msg}", command_prefix(command));
            ExitCode::from(1)
        }
    }
}

fn is_command(name: &str) -> bool {
    matches!(name, "info" | "predict" | "bench" | "gemm-bench")
}

fn command_prefix(command: &str) -> String {
    if is_command(command) {
        format!("tinyfast-rt {command}")
    } else {
        "tinyfast-rt".to_string()
    }
}

fn run(command: &str, args: &[String]) -> Result<(), CliError> {
    let rest = args.get(1..).unwrap_or(&[]);
    match command {
        "info" => info(rest),
        "predict" => predict::run(rest),
        "bench" => bench::run(rest),
        "gemm-bench" => gemm_bench::run(rest),
        "--version" | "-V" => shared::print(&format!("tinyfast-rt {}", tinyfast_core::VERSION)),
        "--help" | "-h" | "help" => shared::print(USAGE),
        "" => Err(CliError::Usage("missing command".into())),
        other => Err(CliError::Usage(format!("unknown command '{other}'"))),
    }
}

fn info(args: &[String]) -> Result<(), CliError> {
    let parsed = args::parse(args, &[]).map_err(CliError::Usage)?;
    if parsed.help {
        return shared::print(INFO_HELP);
    }
    parsed.positionals(&[]).map_err(CliError::Usage)?;
    let caps = CpuCapabilities::detect();
    let mut text = format!(
        "tinyfast-rt {}\narch: {}\n",
        tinyfast_core::VERSION,
        caps.arch
    );
    for (name, on) in &caps.features {
        text.push_str(&format!("  {name}: {}\n", if *on { "yes" } else { "no" }));
    }
    let kernels: Vec<&str> = caps.kernels.iter().map(|k| k.name()).collect();
    text.push_str(&format!("int8 kernels: {}\n", kernels.join(", ")));
    text.push_str(&format!("default kernel: {}", caps.best()));
    shared::print(&text)
}
