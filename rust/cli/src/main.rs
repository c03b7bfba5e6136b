//! `tinyfast-rt`: the tinyfast runtime as a standalone binary, for machines with no Python.

use std::process::ExitCode;
use tinyfast_core::cpu::CpuCapabilities;

const USAGE: &str = "usage: tinyfast-rt <command>

commands:
  info       print the build version and the int8 kernels this CPU can run
  --help     print this message
  --version  print the version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("info") if args.len() == 1 => {
            print_info();
            ExitCode::SUCCESS
        }
        Some("--version") => {
            println!("tinyfast-rt {}", tinyfast_core::VERSION);
            ExitCode::SUCCESS
        }
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("tinyfast-rt: unknown command or extra arguments: '{other}'\n\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn print_info() {
    let caps = CpuCapabilities::detect();
    println!("tinyfast-rt {}", tinyfast_core::VERSION);
    println!("arch: {}", caps.arch);
    for (name, on) in &caps.features {
        println!("  {name}: {}", if *on { "yes" } else { "no" });
    }
    let kernels: Vec<&str> = caps.kernels.iter().map(|k| k.name()).collect();
    println!("int8 kernels: {}", kernels.join(", "));
    println!("default kernel: {}", caps.best());
}
