//! What the commands share: the error type, output helpers, flag values common to several
//! commands, loading a runtime, a small random generator and percentiles.

use std::io::{self, Write};

use tinyfast_core::cpu::{CpuCapabilities, KernelKind};
use tinyfast_core::gemm::kernel_available;
use tinyfast_core::{Runtime, RuntimeOptions};

/// How a command failed; `main` turns it into a message and an exit code.
#[derive(Debug)]
pub enum CliError {
    /// A bad command line (exit code 2).
    Usage(String),
    /// The work failed (exit code 1).
    Failure(String),
    /// Standard output was closed by its reader (`| head`): stop quietly.
    BrokenPipe,
}

/// Maps an error writing standard output.
pub fn stdout_error(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::BrokenPipe
    } else {
        CliError::Failure(format!("cannot write to standard output: {e}"))
    }
}

/// Prints `text` and a newline to standard output (no panic on a closed pipe, unlike `println!`).
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// The names of the kernels this CPU can run, for messages.
pub fn available_kernels() -> String {
    let caps = CpuCapabilities::detect();
    let names: Vec<&str> = caps.kernels.iter().map(|k| k.name()).collect();
    names.join(", ")
}

/// Parses `--kernel` (None: the runtime's default, `TINYFAST_KERNEL` or the fastest) and checks that
/// this CPU runs it.
pub fn kernel(value: Option<&str>) -> Result<Option<KernelKind>, CliError> {
    let Some(name) = value else {
        return Ok(None);
    };
    let kernel = KernelKind::from_name(name.trim()).ok_or_else(|| {
        CliError::Usage(format!(
            "--kernel: expected avx512-vnni, avx2 or portable, got '{name}'"
        ))
    })?;
    if !kernel_available(kernel) {
        return Err(CliError::Failure(format!(
            "the {kernel} kernel is not supported by this CPU (it has: {})",
            available_kernels()
        )));
    }
    Ok(Some(kernel))
}

/// Checks `--speed`: a finite number in `[0, 1]`.
pub fn check_speed(speed: f32) -> Result<f32, CliError> {
    if speed.is_finite() && (0.0..=1.0).contains(&speed) {
        Ok(speed)
    } else {
        Err(CliError::Usage(format!(
            "--speed: expected a number in [0, 1] (0 never exits early), got {speed}"
        )))
    }
}

/// Checks that a count flag is at least `min`.
pub fn at_least(name: &str, value: usize, min: usize) -> Result<usize, CliError> {
    if value >= min {
        Ok(value)
    } else {
        Err(CliError::Usage(format!(
            "--{name}: expected at least {min}, got {value}"
        )))
    }
}

/// Most worker threads `--threads` may ask for.
pub const MAX_THREADS: usize = 1024;

/// Loads the bundle in `dir` (the error names the file and field at fault).
pub fn load_runtime(
    dir: &str,
    threads: usize,
    kernel: Option<KernelKind>,
) -> Result<Runtime, CliError> {
    if threads > MAX_THREADS {
        return Err(CliError::Usage(format!(
            "--threads: expected 0 (one per core) to {MAX_THREADS}, got {threads}"
        )));
    }
    Runtime::load(dir, RuntimeOptions { threads, kernel })
        .map_err(|e| CliError::Failure(format!("cannot load the bundle '{dir}': {e}")))
}

/// The `p`-th percentile (nearest rank) of ascending `sorted`; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The mean of `values`; 0 when empty.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
    }

    #[test]
    fn speed_and_kernel_checks() {
        assert!(check_speed(0.0).is_ok() && check_speed(1.0).is_ok());
        for bad in [2.0, -0.1, f32::NAN, f32::INFINITY] {
            assert!(matches!(check_speed(bad), Err(CliError::Usage(_))));
        }
        assert!(matches!(kernel(Some("sse9")), Err(CliError::Usage(_))));
        assert_eq!(
            kernel(Some("portable")).unwrap(),
            Some(KernelKind::Portable)
        );
        assert_eq!(kernel(None).unwrap(), None);
    }
}
