//! `tinyfast-rt` end to end: the built binary on a tiny bundle written by the test.

mod common;

use common::{bundle, jsonl, ok, run, Kind, LABELS, LAYERS, MAX_LENGTH};
use serde_json::Value;

/// Texts of varied kinds; with `long`, also one of 100k characters (slow to tokenize in a debug
/// build, so only some runs include it).
fn sample_lines(long: bool) -> Vec<String> {
    let mut lines: Vec<String> = [
        "the movie is good",
        "",
        "i hate it , very dull !",
        "a film",
        "not fun . not fun . not fun . not fun . not fun . not fun . not fun",
        "ünïcödé 電影 😀",
        "   ",
        "love",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if long {
        lines.push("good ".repeat(20_000));
    }
    lines
}

fn stdin_of(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

/// Checks one classification row and returns (label_id, exit_layer).
fn check_row(row: &Value) -> (usize, usize) {
    let id = row["label_id"].as_u64().unwrap() as usize;
    assert_eq!(row["label"], LABELS[id], "{row}");
    let probs: Vec<f64> = row["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), LABELS.len());
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{row}");
    let best = (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .unwrap();
    assert!(
        probs[best] - probs[id] < 1e-6,
        "label_id is the argmax: {row}"
    );
    let exit = row["exit_layer"].as_u64().unwrap() as usize;
    assert!([1, 2, LAYERS].contains(&exit), "{row}");
    assert_eq!(row.as_object().unwrap().len(), 4, "{row}");
    (id, exit)
}

#[test]
fn help_for_every_command() {
    for (args, want) in [
        (vec!["--help"], "usage: tinyfast-rt <command>"),
        (vec!["-h"], "usage: tinyfast-rt <command>"),
        (vec!["info", "--help"], "usage: tinyfast-rt info"),
        (
            vec!["predict", "--help"],
            "usage: tinyfast-rt predict BUNDLE",
        ),
        (vec!["bench", "-h"], "usage: tinyfast-rt bench BUNDLE"),
        (
            vec!["gemm-bench", "--help"],
            "usage: tinyfast-rt gemm-bench",
        ),
        // --help wins over anything else on the line, even a missing bundle.
        (vec!["predict", "--speed", "0.5", "--help"], "--pairs"),
    ] {
        let out = ok(&args, b"");
        assert!(out.contains(want), "{args:?}: {out}");
    }
    assert!(ok(&["--version"], b"").starts_with("tinyfast-rt "));
    let info = ok(&["info"], b"");
    assert!(info.contains("int8 kernels:") && info.contains("portable"));
}

#[test]
fn usage_errors_exit_2() {
    for (args, want) in [
        (vec![], "missing command"),
        (vec!["frobnicate"], "unknown command 'frobnicate'"),
        (vec!["info", "extra"], "unexpected argument 'extra'"),
        (vec!["predict"], "missing argument BUNDLE"),
        (
            vec!["predict", "b", "--sped", "1"],
            "unknown option '--sped'",
        ),
        (vec!["predict", "b", "--speed"], "needs a value"),
        (vec!["predict", "b", "--batch-size", "0"], "--batch-size"),
        (vec!["predict", "b", "--batch-size", "-3"], "--batch-size"),
        (vec!["predict", "b", "--kernel", "sse9"], "--kernel"),
        (vec!["bench", "b", "--iters", "x"], "--iters"),
        (vec!["predict", "b", "--threads", "100000"], "--threads"),
        (vec!["gemm-bench", "--shapes", "1,2"], "--shapes"),
        (vec!["gemm-bench", "--kernel", "nope"], "--kernel"),
    ] {
        let out = run(&args, b"");
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("--help"), "{}", out.stderr);
        assert!(!out.stderr.contains("panicked at"), "{}", out.stderr);
    }
}

#[test]
fn predict_stdin_file_order_and_batching() {
    let dir = bundle(Kind::default());
    let b = dir.arg();
    let lines = sample_lines(true);
    let input = stdin_of(&lines);
    let out = ok(&["predict", &b], &input);
    let rows = jsonl(&out);
    assert_eq!(rows.len(), lines.len());
    for row in &rows {
        let (_, exit) = check_row(row);
        assert_eq!(exit, LAYERS, "speed 0 never exits early");
    }

    // A file, with CRLF line ends and no final newline, gives the same lines.
    let file = dir.join("input.txt");
    std::fs::write(&file, lines.join("\r\n")).unwrap();
    let from_file = ok(&["predict", &b, "--input", file.to_str().unwrap()], b"");
    assert_eq!(from_file, out);
    assert_eq!(ok(&["predict", &b, "--input", "-"], &input), out);

    // Input order: reversed input gives reversed output; batch size and threads change nothing.
    let lines = sample_lines(false);
    let input = stdin_of(&lines);
    let out = ok(&["predict", &b], &input);
    let reversed: Vec<String> = lines.iter().rev().cloned().collect();
    let back = ok(&["predict", &b], &stdin_of(&reversed));
    let mut back_lines: Vec<&str> = back.lines().collect();
    back_lines.reverse();
    assert_eq!(back_lines, out.lines().collect::<Vec<_>>());
    for args in [
        vec!["--batch-size", "1"],
        vec!["--batch-size", "3", "--threads", "1"],
        vec!["--batch-size", "1000000", "--threads", "2"],
        vec!["--kernel", "portable"],
    ] {
        let mut full = vec!["predict", b.as_str()];
        full.extend(args.iter());
        assert_eq!(ok(&full, &input), out, "{args:?}");
    }

    // Empty input: no output, success.
    assert_eq!(ok(&["predict", &b], b""), "");
}

#[test]
fn predict_streams_many_chunks_in_order() {
    let dir = bundle(Kind::default());
    let b = dir.arg();
    let words = ["good", "bad", "movie", "not", "fun", "dull", "plot", "love"];
    let lines: Vec<String> = (0..1500)
        .map(|i| {
            (0..1 + i % 7)
                .map(|j| words[(i * 3 + j * 5) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let input = stdin_of(&lines);
    // Batch 2 reads 16 lines per chunk: about 94 chunks.
    let chunked = ok(
        &["predict", &b, "--batch-size", "2", "--speed", "0.6"],
        &input,
    );
    let whole = ok(
        &["predict", &b, "--batch-size", "4096", "--speed", "0.6"],
        &input,
    );
    assert_eq!(chunked, whole);
    let rows = jsonl(&chunked);
    assert_eq!(rows.len(), lines.len());
    // Each line's result is that of the line alone (input order kept across chunks).
    for i in [0, 1, 17, 777, 1499] {
        let alone = ok(
            &["predict", &b, "--speed", "0.6"],
            format!("{}\n", lines[i]).as_bytes(),
        );
        assert_eq!(jsonl(&alone)[0], rows[i], "line {i}");
    }
}

/// A writer that sends one line and waits for its answer gets it before sending the next.
#[test]
fn predict_answers_each_line_as_it_arrives() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = bundle(Kind::default());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinyfast-rt"))
        .args(["predict", &dir.arg(), "--batch-size", "64"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut answers = Vec::new();
    for text in ["the movie is good", "", "i hate it"] {
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
        let answer = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("no answer to a line while the input stays open");
        answers.push(answer);
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    assert!(rx.try_recv().is_err(), "one answer per line");
    let all = ok(
        &["predict", &dir.arg()],
        b"the movie is good\n\ni hate it\n",
    );
    assert_eq!(answers, all.lines().collect::<Vec<_>>());
}

#[test]
fn predict_pairs() {
    let dir = bundle(Kind::default());
    let b = dir.arg();
    let input = "the movie\tis good\n\tdull\ngood\t\n\t\n";
    let rows = jsonl(&ok(&["predict", &b, "--pairs"], input.as_bytes()));
    assert_eq!(rows.len(), 4);
    rows.iter().for_each(|r| {
        check_row(r);
    });
    // The pair is not the concatenated text: the second text gets token type 1.
    let single = jsonl(&ok(&["predict", &b], b"the movie is good\n"));
    assert_ne!(single[0]["probabilities"], rows[0]["probabilities"]);

    // A line without a tab, or with two, names its line.
    let out = run(&["predict", &b, "--pairs"], b"a\tb\nc\td\nno tab here\n");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("<stdin> line 3"), "{}", out.stderr);
    assert!(out.stderr.contains("no tab"), "{}", out.stderr);
    let out = run(&["predict", &b, "--pairs"], b"a\tb\tc\n");
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("line 1") && out.stderr.contains("3 tab-separated"));
}

#[test]
fn predict_input_errors() {
    let dir = bundle(Kind::default());
    let b = dir.arg();
    // Invalid UTF-8 names the line.
    let out = run(&["predict", &b], b"fine\nbad \xc3\x28 bytes\n");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("line 2") && out.stderr.contains("invalid UTF-8"),
        "{}",
        out.stderr
    );
    // A missing input file names it.
    let out = run(&["predict", &b, "--input", "/nonexistent/in.txt"], b"");
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("/nonexistent/in.txt"), "{}", out.stderr);
    // Invalid speeds are usage errors, before anything is loaded.
    for speed in ["2", "-0.1", "nan", "inf", "fast"] {
        let out = run(&["predict", &b, "--speed", speed], b"good\n");
        assert_eq!(out.code, 2, "speed {speed}: {out:?}");
        assert!(out.stderr.contains("--speed"), "{}", out.stderr);
        assert_eq!(out.stdout, "");
    }
}

#[test]
fn predict_early_exit_and_regression() {
    let dir = bundle(Kind::default());
    let b = dir.arg();
    let input = stdin_of(&sample_lines(false));
    // speed 1: every branch answer with any confidence leaves at the first exit.
    let rows = jsonl(&ok(&["predict", &b, "--speed", "1"], &input));
    assert!(rows.iter().all(|r| check_row(r).1 == 1), "{rows:?}");
    // Intermediate speeds give exits in {1, 2, 3} (all checked by check_row).
    for speed in ["0.3", "0.7", "0.95"] {
        jsonl(&ok(&["predict", &b, "--speed", speed], &input))
            .iter()
            .for_each(|r| {
                check_row(r);
            });
    }
    // An f32 bundle works the same way.
    let f32_dir = bundle(Kind {
        int8: false,
        regression: false,
    });
    let rows = jsonl(&ok(&["predict", &f32_dir.arg()], &input));
    assert_eq!(rows.len(), sample_lines(false).len());

    let reg = bundle(Kind {
        int8: true,
        regression: true,
    });
    let rows = jsonl(&ok(&["predict", &reg.arg(), "--speed", "1"], &input));
    for row in &rows {
        let obj = row.as_object().unwrap();
        assert_eq!(obj.len(), 2, "{row}");
        assert!(row["score"].as_f64().unwrap().is_finite());
        assert_eq!(row["exit_layer"], LAYERS, "regression never exits early");
    }
}

/// Breaks a written bundle.
type Corruption<'a> = Box<dyn Fn() + 'a>;

#[test]
fn missing_and_corrupt_bundles() {
    let out = run(&["predict", "/nonexistent/bundle-dir"], b"good\n");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("/nonexistent/bundle-dir"),
        "{}",
        out.stderr
    );
    let out = run(&["bench", "/nonexistent/bundle-dir"], b"");
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("/nonexistent/bundle-dir"));

    let dir = bundle(Kind::default());
    let b = dir.arg();
    let weights = dir.join("model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    let cases: Vec<(&str, Corruption, &str)> = vec![
        (
            "truncated weights",
            Box::new(|| std::fs::write(&weights, &good[..good.len() / 2]).unwrap()),
            "model.safetensors",
        ),
        (
            "huge header length",
            Box::new(|| {
                let mut bad = good.clone();
                bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                std::fs::write(&weights, bad).unwrap();
            }),
            "model.safetensors",
        ),
        (
            "config not JSON",
            Box::new(|| std::fs::write(dir.join("tinyfast.json"), "{not json").unwrap()),
            "tinyfast.json",
        ),
        (
            // A syntax error inside `decoder` makes the tokenizers crate panic (an `expect` in its
            // decoder deserializer); the loader catches it, and the CLI shows only the error.
            "tokenizer with a broken decoder",
            Box::new(|| {
                let path = dir.join("tokenizer.json");
                let text = std::fs::read_to_string(&path).unwrap();
                let at = text.find("\"decoder\":{").unwrap() + "\"decoder\":{".len();
                let broken = format!("{}\"x\" {}", &text[..at], &text[at..]);
                std::fs::write(&path, broken).unwrap();
            }),
            "tokenizer.json",
        ),
        (
            "tokenizer missing",
            Box::new(|| std::fs::remove_file(dir.join("tokenizer.json")).unwrap()),
            "tokenizer.json",
        ),
    ];
    for (what, corrupt, file) in cases {
        common::write_bundle(dir.path(), Kind::default());
        corrupt();
        for cmd in ["predict", "bench"] {
            let out = run(&[cmd, &b], b"good\n");
            assert_eq!(out.code, 1, "{what}: {out:?}");
            assert!(out.stderr.contains(file), "{what}: {}", out.stderr);
            assert!(!out.stderr.contains("panicked at"), "{}", out.stderr);
            assert!(!out.stderr.contains("internal error"), "{}", out.stderr);
            assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
            assert_eq!(out.stdout, "");
        }
    }
}

#[test]
fn bench_json_and_text() {
    let dir = bundle(Kind::default());
    let b = dir.arg();
    let out = ok(
        &[
            "bench",
            &b,
            "--json",
            "--batch-size",
            "3",
            "--seq-len",
            "12",
            "--iters",
            "20",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--kernel",
            "portable",
        ],
        b"",
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["batch_size"], 3);
    assert_eq!(v["seq_len"], 12);
    assert_eq!(v["iters"], 20);
    assert_eq!(v["kernel"], "portable");
    assert_eq!(v["threads"], 1);
    assert_eq!(v["num_layers"], LAYERS);
    let lat = |k: &str| v["latency_ms"][k].as_f64().unwrap();
    assert!(lat("min") > 0.0);
    assert!(lat("min") <= lat("p50") && lat("p50") <= lat("p90"));
    assert!(lat("p90") <= lat("p99") && lat("p99") <= lat("max"));
    assert!(lat("min") <= lat("mean") && lat("mean") <= lat("max"));
    let rows_per_s = v["rows_per_s"].as_f64().unwrap();
    assert!(rows_per_s > 0.0);
    assert!((v["tokens_per_s"].as_f64().unwrap() / rows_per_s - 12.0).abs() < 1e-6);
    let hist = v["exit_layers"].as_array().unwrap();
    let layers: Vec<u64> = hist.iter().map(|h| h["layer"].as_u64().unwrap()).collect();
    assert_eq!(layers, vec![1, 2, LAYERS as u64]);
    let rows: u64 = hist.iter().map(|h| h["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, 60, "every timed row is counted once");
    assert_eq!(hist[2]["rows"], 60, "speed 0: every row reaches the head");

    // With speed 1 every row leaves at the first exit.
    let out = ok(
        &[
            "bench", &b, "--json", "--iters", "5", "--warmup", "0", "--speed", "1",
        ],
        b"",
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exit_layers"][0]["rows"], 5);
    assert_eq!(v["exit_layers"][0]["share"], 1.0);
    assert_eq!(v["seq_len"], MAX_LENGTH, "default: min(128, max_length)");

    let text = ok(&["bench", &b, "--iters", "3", "--warmup", "1"], b"");
    for want in ["p50", "p90", "p99", "mean", "rows/s", "layer 3 (head)"] {
        assert!(text.contains(want), "{want}: {text}");
    }
    for bad in ["1", "21", "0"] {
        let out = run(&["bench", &b, "--seq-len", bad], b"");
        assert_eq!(out.code, 2, "seq-len {bad}: {out:?}");
        assert!(out.stderr.contains("--seq-len"));
    }
    let out = run(&["bench", &b, "--speed", "2"], b"");
    assert_eq!(out.code, 2);
}

#[test]
fn gemm_bench_json_and_table() {
    let out = ok(
        &[
            "gemm-bench",
            "--json",
            "--iters",
            "2",
            "--shapes",
            "4,8,16;3,13,37",
        ],
        b"",
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let kernels = v["kernels"].as_array().unwrap();
    assert!(kernels.contains(&Value::from("portable")));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2 * kernels.len());
    for r in results {
        for key in [
            "gemm_us",
            "gemm_gops",
            "quant_us",
            "linear_us",
            "linear_gops",
        ] {
            let x = r[key].as_f64().unwrap();
            assert!(x.is_finite() && x > 0.0, "{key}: {r}");
        }
        assert!(r["linear_gops"].as_f64() <= r["gemm_gops"].as_f64());
        assert_eq!(r["iters"], 2);
    }
    assert_eq!(
        (&results[0]["m"], &results[0]["k"], &results[0]["n"]),
        (&Value::from(4), &Value::from(8), &Value::from(16))
    );
    let table = ok(
        &[
            "gemm-bench",
            "--iters",
            "1",
            "--kernel",
            "portable",
            "--shapes",
            "2,3,4",
        ],
        b"",
    );
    assert!(
        table.contains("GOPS") && table.contains("portable"),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.starts_with("portable")).count(),
        1
    );
}

/// Makes `path` a FIFO (named pipe).
#[cfg(unix)]
fn mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A bundle file that is a character device (through a symbolic link), a FIFO or a directory is
/// rejected at once with one line naming it, instead of being read forever or waited on.
#[cfg(unix)]
#[test]
fn bundle_files_that_are_not_regular_files() {
    use std::time::Duration;

    let dir = bundle(Kind::default());
    let b = dir.arg();
    for file in ["tinyfast.json", "model.safetensors", "tokenizer.json"] {
        for (kind, want) in [
            ("zero", "not a regular file (a character device)"),
            ("fifo", "not a regular file (a FIFO)"),
            ("dir", "not a regular file (a directory)"),
        ] {
            common::write_bundle(dir.path(), Kind::default());
            let path = dir.join(file);
            std::fs::remove_file(&path).unwrap();
            match kind {
                "zero" => std::os::unix::fs::symlink("/dev/zero", &path).unwrap(),
                "fifo" => mkfifo(&path),
                _ => std::fs::create_dir(&path).unwrap(),
            }
            let out = common::run_within(&["predict", &b], b"good\n", Duration::from_secs(60));
            assert_eq!(out.code, 1, "{file} {kind}: {out:?}");
            assert!(
                out.stderr.contains(&format!("{file}: {want}")),
                "{file} {kind}: {}",
                out.stderr
            );
            assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
            assert_eq!(out.stdout, "");
            if kind == "dir" {
                std::fs::remove_dir(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
}

/// `--input` may be a named pipe (streamed line by line) but not a directory, and no input grows
/// memory without bound: a line over the limit, even an endless one, is an error naming it.
#[cfg(unix)]
#[test]
fn predict_input_special_files() {
    use std::io::Write;
    use std::time::Duration;

    let dir = bundle(Kind::default());
    let b = dir.arg();
    let limit = Duration::from_secs(120);
    let text = b"the movie is good\n\ni hate it\n";
    let want = ok(&["predict", &b], text);

    let fifo = dir.join("input.fifo");
    mkfifo(&fifo);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            f.write_all(text).unwrap();
        })
    };
    let out = common::run_within(
        &["predict", &b, "--input", fifo.to_str().unwrap()],
        b"",
        limit,
    );
    writer.join().unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, want);

    let out = common::run_within(&["predict", &b, "--input", "/dev/zero"], b"", limit);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("/dev/zero line 1: longer than 1048576 bytes"),
        "{}",
        out.stderr
    );

    let out = common::run_within(&["predict", &b, "--input", &b], b"", limit);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("is a directory"), "{}", out.stderr);

    // The same limit holds on standard input.
    let mut input = b"good\n".to_vec();
    input.extend(vec![b'a'; (1 << 20) + 1]);
    input.extend_from_slice(b"\nbad\n");
    let out = common::run_within(&["predict", &b], &input, limit);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("<stdin> line 2: longer than"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}
