//! The loader accepts valid bundles and rejects every kind of broken one with an error naming the
//! file and the problem, never a panic.

mod common;

use std::path::Path;

use common::{write_safetensors, Data, Model, Spec, SplitMix64, TempDir, Tensor};
use tinyfast_core::{Error, Runtime, RuntimeOptions};

fn opts() -> RuntimeOptions {
    RuntimeOptions {
        threads: 1,
        kernel: None,
    }
}

fn load(dir: &Path) -> Result<Runtime, Error> {
    Runtime::load(dir, opts())
}

/// Loads and expects an error whose text contains every one of `want`.
fn expect_err(dir: &Path, want: &[&str]) -> Error {
    let err = load(dir).expect_err("the bundle should be rejected");
    let text = err.to_string();
    for w in want {
        assert!(text.contains(w), "expected {w:?} in: {text}");
    }
    err
}

fn rewrite_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<Tensor>)) {
    let model = Model::new(Spec::default());
    let mut tensors = model.tensors(true);
    edit(&mut tensors);
    write_safetensors(&dir.join("model.safetensors"), &tensors);
}

fn rewrite_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let model = Model::new(Spec::default());
    let mut cfg = model.config(true);
    edit(&mut cfg);
    std::fs::write(dir.join("tinyfast.json"), cfg.to_string()).unwrap();
}

type Edit = Box<dyn Fn(&mut serde_json::Value)>;

fn valid() -> TempDir {
    Model::new(Spec::default()).write(true)
}

#[test]
fn accepts_valid_bundles() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Runtime>();
    for int8 in [true, false] {
        let dir = Model::new(Spec::default()).write(int8);
        let rt = load(dir.path()).unwrap();
        let c = rt.config();
        assert_eq!(c.architecture.num_layers, 4);
        assert_eq!(c.num_outputs(), 3);
        assert_eq!(c.exits.len(), 3);
        assert_eq!(rt.threads(), 1);
    }
    // Regression, no exits, no branch.
    let spec = Spec {
        regression: true,
        exits: vec![],
        ..Spec::default()
    };
    let dir = Model::new(spec).write(true);
    load(dir.path()).unwrap();
}

#[test]
fn missing_files_and_directory() {
    for file in ["tinyfast.json", "model.safetensors", "tokenizer.json"] {
        let dir = valid();
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let err = expect_err(dir.path(), &[file]);
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }
    let dir = valid();
    expect_err(&dir.path().join("nope"), &["nope"]);
    expect_err(
        &dir.path().join("tinyfast.json"),
        &["a bundle is a directory"],
    );
}

#[test]
fn bad_config() {
    let dir = valid();
    std::fs::write(dir.path().join("tinyfast.json"), "{\"format\": ").unwrap();
    expect_err(dir.path(), &["tinyfast.json", "not valid JSON"]);

    let cases: Vec<(Edit, &[&str])> = vec![
        (
            Box::new(|c| c["exits"][2]["layer"] = 4.into()),
            &["exits[2].layer", "got 4"],
        ),
        (
            Box::new(|c| c["exits"][1]["layer"] = 1.into()),
            &["exits[1].layer", "strictly increasing"],
        ),
        (
            Box::new(|c| c["branch"]["heads"] = 3.into()),
            &["branch.heads", "not a multiple"],
        ),
        (
            Box::new(|c| c["architecture"]["num_heads"] = 5.into()),
            &["architecture.num_heads"],
        ),
        (
            Box::new(|c| c["max_length"] = 41.into()),
            &["max_length", "got 41"],
        ),
        (
            Box::new(|c| c["format_version"] = 7.into()),
            &["format_version", "got 7"],
        ),
        (
            Box::new(|c| c["architecture"]["layer_norm_eps"] = "small".into()),
            &["architecture.layer_norm_eps"],
        ),
    ];
    for (edit, want) in cases {
        let dir = valid();
        rewrite_config(dir.path(), edit);
        expect_err(dir.path(), want);
    }
}

#[test]
fn config_and_tensors_must_agree() {
    // Four labels but a three-row classifier.
    let dir = valid();
    rewrite_config(dir.path(), |c| {
        c["labels"] = serde_json::json!(["a", "b", "c", "d"]);
    });
    expect_err(
        dir.path(),
        &[
            "model.safetensors",
            "head.classifier.weight",
            "expected shape [4, 16]",
        ],
    );
    // An f32 config over int8 tensors.
    let dir = valid();
    rewrite_config(dir.path(), |c| c["quantization"] = "none".into());
    expect_err(
        dir.path(),
        &["layers.0.qkv.weight", "expected dtype F32, got I8"],
    );
    // Fewer exits in the config than in the file: the extra branch tensors are rejected.
    let dir = valid();
    rewrite_config(dir.path(), |c| {
        c["exits"] =
            serde_json::json!([{"layer": 1, "kind": "fastbert"}, {"layer": 2, "kind": "linear"}]);
    });
    expect_err(dir.path(), &["unexpected tensor `exits.3."]);
    // A claimed billion layers fails at the first missing one, quickly.
    let dir = valid();
    rewrite_config(dir.path(), |c| {
        c["architecture"]["num_layers"] = 1_000_000_000.into()
    });
    expect_err(dir.path(), &["missing tensor `layers.4.qkv.weight`"]);
}

#[test]
fn wrong_dtype_shape_missing_extra() {
    let dir = valid();
    rewrite_tensors(dir.path(), |t| {
        let i = t
            .iter()
            .position(|t| t.name == "layers.1.qkv.weight")
            .unwrap();
        let n: usize = t[i].shape.iter().product();
        t[i].data = Data::F32(vec![0.0; n]);
    });
    expect_err(
        dir.path(),
        &[
            "model.safetensors",
            "layers.1.qkv.weight",
            "expected dtype I8, got F32",
        ],
    );

    let dir = valid();
    rewrite_tensors(dir.path(), |t| {
        let x = t
            .iter_mut()
            .find(|t| t.name == "layers.0.ffn_in.weight")
            .unwrap();
        x.shape = vec![x.shape[1], x.shape[0]];
    });
    expect_err(
        dir.path(),
        &[
            "layers.0.ffn_in.weight",
            "expected shape [40, 16], got [16, 40]",
        ],
    );

    let dir = valid();
    rewrite_tensors(dir.path(), |t| {
        t.retain(|t| t.name != "layers.1.attn_norm.bias")
    });
    expect_err(dir.path(), &["missing tensor `layers.1.attn_norm.bias`"]);

    let dir = valid();
    rewrite_tensors(dir.path(), |t| t.retain(|t| t.name != "exits.3.key.weight"));
    expect_err(dir.path(), &["missing tensor `exits.3.key.weight`"]);

    let dir = valid();
    rewrite_tensors(dir.path(), |t| {
        t.push(Tensor {
            name: "layers.0.qkv.extra".into(),
            shape: vec![2],
            data: Data::F32(vec![1.0, 2.0]),
        })
    });
    expect_err(dir.path(), &["unexpected tensor `layers.0.qkv.extra`"]);
}

#[test]
fn non_finite_and_invalid_values() {
    for (name, bad, want) in [
        ("layers.0.qkv.scale", f32::NAN, "element [5] is NaN"),
        ("layers.2.ffn_out.scale", 0.0, "element [5] is 0"),
        ("layers.2.ffn_out.scale", -1.0, "element [5] is -1"),
        ("embeddings.word", f32::INFINITY, "element [0, 5] is inf"),
        ("exits.1.dense_in.bias", f32::NAN, "element [5] is NaN"),
        ("head.classifier.bias", f32::NEG_INFINITY, "is -inf"),
    ] {
        let dir = valid();
        rewrite_tensors(dir.path(), |t| {
            let x = t.iter_mut().find(|t| t.name == name).unwrap();
            let Data::F32(v) = &mut x.data else {
                panic!("{name} is not f32")
            };
            let i = 5.min(v.len() - 1);
            v[i] = bad;
        });
        expect_err(dir.path(), &[name, want]);
    }
}

#[test]
fn truncated_hostile_and_garbage_files() {
    let st = |dir: &TempDir| dir.path().join("model.safetensors");

    // Truncated data.
    let dir = valid();
    let bytes = std::fs::read(st(&dir)).unwrap();
    std::fs::write(st(&dir), &bytes[..bytes.len() - 10]).unwrap();
    expect_err(dir.path(), &["model.safetensors", "truncated"]);
    // Truncated inside the header.
    std::fs::write(st(&dir), &bytes[..100]).unwrap();
    expect_err(
        dir.path(),
        &["declared header length", "only 92 bytes follow"],
    );
    // Shorter than the length field.
    std::fs::write(st(&dir), &bytes[..5]).unwrap();
    expect_err(dir.path(), &["5 bytes", "8-byte header length"]);
    // Trailing garbage.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 12]);
    std::fs::write(st(&dir), &longer).unwrap();
    expect_err(dir.path(), &["12 unexpected bytes"]);
    // A huge declared header length.
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(st(&dir), &huge).unwrap();
    expect_err(
        dir.path(),
        &["declared header length 18446744073709551615", "limit"],
    );
    // A header that is not JSON.
    let mut bad = 16u64.to_le_bytes().to_vec();
    bad.extend_from_slice(b"{{{{{{{{{{{{{{{{");
    std::fs::write(st(&dir), &bad).unwrap();
    expect_err(dir.path(), &["invalid safetensors header"]);
    // A header with a tensor claiming a huge shape.
    let header = br#"{"embeddings.word":{"dtype":"F32","shape":[1000000000000,1000000000],"data_offsets":[0,4]}}"#;
    let mut bad = (header.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(header);
    bad.extend_from_slice(&[0; 4]);
    std::fs::write(st(&dir), &bad).unwrap();
    expect_err(dir.path(), &["invalid safetensors header"]);
    // Overlapping offsets.
    let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bad = (header.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(header);
    bad.extend_from_slice(&[0; 8]);
    std::fs::write(st(&dir), &bad).unwrap();
    expect_err(dir.path(), &["invalid safetensors header"]);
}

#[test]
fn bad_tokenizer() {
    let dir = valid();
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    expect_err(
        dir.path(),
        &["tokenizer.json", "not a valid tokenizers file"],
    );
    // A tokenizer whose ids do not fit the model's vocabulary.
    let spec = Spec {
        vocab: 30,
        ..Spec::default()
    };
    let dir = Model::new(spec).write(true);
    expect_err(
        dir.path(),
        &["tokenizer.json", "has id 30", "vocab_size is 30"],
    );
}

/// A small fuzz run: random byte flips and truncations of a valid bundle's files must load or fail
/// cleanly, never panic.
#[test]
fn random_corruptions_never_panic() {
    let dir = valid();
    let path = dir.path().join("model.safetensors");
    let good = std::fs::read(&path).unwrap();
    let cfg_path = dir.path().join("tinyfast.json");
    let good_cfg = std::fs::read(&cfg_path).unwrap();
    let mut rng = SplitMix64::new(5);
    let mut rejected = 0;
    for round in 0..120 {
        let mut bytes = good.clone();
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        match round % 4 {
            0 => {
                // Flip bytes in the header.
                for _ in 0..1 + rng.index(4) {
                    let i = rng.index(header_end);
                    bytes[i] ^= 1 << rng.index(8);
                }
            }
            1 => bytes.truncate(rng.index(bytes.len())),
            2 => {
                // Flip bytes anywhere (data too: may give NaN or a bad scale).
                for _ in 0..1 + rng.index(8) {
                    let i = rng.index(bytes.len());
                    bytes[i] = rng.index(256) as u8;
                }
            }
            _ => {
                let mut cfg = good_cfg.clone();
                let i = rng.index(cfg.len());
                cfg[i] = b"{}[]:,\"0123456789ax-"[rng.index(20)];
                std::fs::write(&cfg_path, &cfg).unwrap();
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let result = std::panic::catch_unwind(|| load(dir.path()).map(|_| ()));
        let result = result.unwrap_or_else(|_| panic!("round {round}: the loader panicked"));
        if let Err(e) = result {
            assert!(!e.to_string().is_empty());
            rejected += 1;
        }
        std::fs::write(&cfg_path, &good_cfg).unwrap();
    }
    assert!(
        rejected > 60,
        "only {rejected} of 120 corruptions were rejected"
    );
}

/// Loads `dir` on another thread and waits at most `limit`: a loader that hangs (on a FIFO) or
/// reads forever (from `/dev/zero`) fails the test instead of blocking it.
#[cfg(unix)]
fn load_within(dir: &Path, limit: std::time::Duration) -> Result<Runtime, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(load(&dir));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("loading did not finish within {limit:?}"))
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Every bundle file must be a regular file (a symbolic link to one is fine): a character device,
/// a FIFO or a directory in its place is rejected at once, naming the file and what it is.
#[cfg(unix)]
#[test]
fn special_files_are_rejected_without_reading() {
    let limit = std::time::Duration::from_secs(10);
    for file in ["tinyfast.json", "model.safetensors", "tokenizer.json"] {
        type Make = fn(&Path);
        let cases: [(&str, Make); 3] = [
            ("a character device", |p| {
                std::os::unix::fs::symlink("/dev/zero", p).unwrap()
            }),
            ("a FIFO", mkfifo),
            ("a directory", |p| std::fs::create_dir(p).unwrap()),
        ];
        for (kind, make) in cases {
            let dir = valid();
            let path = dir.path().join(file);
            std::fs::remove_file(&path).unwrap();
            make(&path);
            let err = load_within(dir.path(), limit).expect_err("the bundle should be rejected");
            let text = err.to_string();
            let want = format!("{file}: not a regular file ({kind})");
            assert!(text.ends_with(&want), "expected {want:?} in: {text}");
            assert!(matches!(err, Error::Bundle { .. }), "{err:?}");
            assert_eq!(text.lines().count(), 1);
        }
    }
    // A symbolic link to a regular file is fine.
    let dir = valid();
    let cfg = dir.path().join("tinyfast.json");
    let real = dir.path().join("real.json");
    std::fs::rename(&cfg, &real).unwrap();
    std::os::unix::fs::symlink(&real, &cfg).unwrap();
    load_within(dir.path(), limit).unwrap();
}

/// The JSON files are read up to a size limit (checked before reading; sparse files of the size
/// cost nothing to write).
#[test]
fn oversized_json_files_are_rejected() {
    use tinyfast_core::config::MAX_CONFIG_BYTES;
    use tinyfast_core::tokenize::MAX_TOKENIZER_BYTES;

    for (file, limit, what) in [
        ("tinyfast.json", MAX_CONFIG_BYTES, "a bundle config"),
        ("tokenizer.json", MAX_TOKENIZER_BYTES, "a tokenizer.json"),
    ] {
        let dir = valid();
        let path = dir.path().join(file);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(limit + 1).unwrap();
        drop(f);
        let want = format!(
            "{file}: file is {} bytes; {what} may have at most {limit}",
            limit + 1
        );
        expect_err(dir.path(), &[&want]);
    }
    // Exactly at the limit is accepted (JSON padded with spaces).
    let dir = valid();
    let mut text = Model::new(Spec::default()).config(true).to_string();
    text.push_str(&" ".repeat(MAX_CONFIG_BYTES as usize - text.len()));
    std::fs::write(dir.path().join("tinyfast.json"), text).unwrap();
    load(dir.path()).unwrap();
}

/// `tokenizer.json` that makes the `tokenizers` crate panic (a syntax error inside `decoder` hits
/// an `expect` in its deserializer) is reported as an error of that file, on one line.
#[test]
fn tokenizer_panics_become_errors() {
    let dir = valid();
    let path = dir.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find("\"decoder\":{").unwrap() + "\"decoder\":{".len();
    std::fs::write(&path, format!("{}\"x\" {}", &text[..at], &text[at..])).unwrap();
    let err = expect_err(
        dir.path(),
        &["tokenizer.json", "not a valid tokenizers file"],
    );
    assert!(matches!(err, Error::Bundle { .. }), "{err:?}");
    assert_eq!(err.to_string().lines().count(), 1, "{err}");
}
