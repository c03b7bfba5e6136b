//! The runtime against a literal padded forward pass, batch independence with early exit, exit
//! behaviour, edge-case inputs, argument errors and sharing across threads.

mod common;

use std::sync::Arc;

use common::{texts, uncertainty, Model, Reference, Spec};
use tinyfast_core::cpu::KernelKind;
use tinyfast_core::gemm::kernel_available;
use tinyfast_core::{Input, Predictions, Runtime, RuntimeOptions, TokenBatch};

fn runtime(dir: &common::TempDir, threads: usize) -> Runtime {
    Runtime::load(
        dir.path(),
        RuntimeOptions {
            threads,
            kernel: None,
        },
    )
    .unwrap()
}

fn inputs(texts: &[String]) -> Vec<Input<'_>> {
    texts.iter().map(|t| Input::Single(t)).collect()
}

fn bits(p: &Predictions) -> (Vec<u32>, Vec<usize>, Vec<usize>) {
    (
        p.logits.iter().map(|v| v.to_bits()).collect(),
        p.exit_layers.clone(),
        p.labels.clone(),
    )
}

/// Rows as (ids, types) from the runtime's tokenizer.
fn rows_of(rt: &Runtime, inputs: &[Input]) -> Vec<(Vec<u32>, Vec<u32>)> {
    let enc = rt.tokenize(inputs).unwrap();
    (0..enc.rows())
        .map(|i| {
            let s = i * enc.width;
            let n = enc.lengths[i];
            (enc.ids[s..s + n].to_vec(), enc.type_ids[s..s + n].to_vec())
        })
        .collect()
}

/// Checks the runtime's logits and exit layers against the reference at several speeds.
fn check_against_reference(model: &Model, int8: bool, tol: f32) {
    let dir = model.write(int8);
    let rt = runtime(&dir, 2);
    let texts = texts();
    let mut inp = inputs(&texts);
    inp.push(Input::Pair("the movie", "was not good , but fun"));
    inp.push(Input::Pair("", "boring"));
    let reference = model.reference(&rows_of(&rt, &inp), int8);
    let mut exit_layers_seen = std::collections::BTreeSet::new();
    for speed in [0.0f32, 0.3, 0.6, 0.9, 1.0] {
        let p = rt.predict(&inp, speed, 5).unwrap();
        for (i, (exits, head)) in reference.iter().enumerate() {
            // The first branch under `speed` answers; unless one is within rounding of the threshold.
            let mut want = (model.spec.layers, head);
            let mut ambiguous = false;
            if speed > 0.0 && !model.spec.regression {
                for (layer, logits) in exits {
                    let u = uncertainty(logits);
                    ambiguous |= (u - f64::from(speed)).abs() < 1e-3;
                    if u < f64::from(speed) {
                        want = (*layer, logits);
                        break;
                    }
                }
            }
            if ambiguous {
                continue;
            }
            assert_eq!(p.exit_layers[i], want.0, "row {i} speed {speed}");
            exit_layers_seen.insert(p.exit_layers[i]);
            let got = &p.logits[i * p.num_outputs..(i + 1) * p.num_outputs];
            for (g, w) in got.iter().zip(want.1) {
                assert!(
                    (g - w).abs() <= tol * (1.0 + w.abs()),
                    "row {i} speed {speed} int8 {int8}: {got:?} vs {:?}",
                    want.1
                );
            }
        }
    }
    if !model.spec.regression {
        assert!(
            exit_layers_seen.len() >= 3,
            "the speeds should exercise several exits: {exit_layers_seen:?}"
        );
    }
}

#[test]
fn f32_matches_the_literal_forward_pass() {
    check_against_reference(&Model::new(Spec::default()), false, 2e-5);
    let gelu_new = Spec {
        act: "gelu_new",
        seed: 7,
        ..Spec::default()
    };
    check_against_reference(&Model::new(gelu_new), false, 2e-5);
}

#[test]
fn int8_matches_the_literal_forward_pass() {
    // Same quantization formulas; only f32 rounding elsewhere differs, which can move an activation
    // across a rounding boundary now and then.
    check_against_reference(&Model::new(Spec::default()), true, 2e-3);
}

/// Int8 against f32 on the same weights: the gap is the quantization noise, which on random
/// (untrained) weights with sharp attention grows layer by layer (about 2% relative RMS on the
/// logits after 1 or 2 layers, 6% after 4, at width 64). The int8 arithmetic itself is checked
/// exactly against the literal int8 forward pass above.
#[test]
fn f32_and_int8_bundles_are_close() {
    let spec = Spec {
        hidden: 64,
        heads: 4,
        intermediate: 128,
        layers: 2,
        exits: vec![],
        ..Spec::default()
    };
    let model = Model::new(spec);
    let (d32, d8) = (model.write(false), model.write(true));
    let (r32, r8) = (runtime(&d32, 2), runtime(&d8, 2));
    let texts = texts();
    let inp = inputs(&texts);
    let (a, b) = (
        r32.predict(&inp, 0.0, 8).unwrap(),
        r8.predict(&inp, 0.0, 8).unwrap(),
    );
    let (mut err2, mut ref2, mut max) = (0f64, 0f64, 0f32);
    for (x, y) in a.logits.iter().zip(&b.logits) {
        err2 += f64::from(x - y).powi(2);
        ref2 += f64::from(*x).powi(2);
        max = max.max((x - y).abs());
    }
    let rel = (err2 / ref2).sqrt();
    eprintln!("int8 vs f32: relative RMS {rel:.4}, max abs {max:.4}");
    assert!(rel < 0.05, "relative RMS error {rel}");
    let agree = a
        .labels
        .iter()
        .zip(&b.labels)
        .filter(|(x, y)| x == y)
        .count();
    assert!(
        agree * 10 >= a.labels.len() * 9,
        "labels agree on {agree}/{}",
        a.labels.len()
    );
    // Probabilities too.
    for (p, q) in a.probabilities.iter().zip(&b.probabilities) {
        assert!((p - q).abs() < 0.1, "{p} vs {q}");
    }
}

#[test]
fn batched_equals_batch_size_one_with_early_exit() {
    for int8 in [true, false] {
        let model = Model::new(Spec::default());
        let dir = model.write(int8);
        let rt = runtime(&dir, 2);
        let texts = texts();
        let mut inp = inputs(&texts);
        inp.push(Input::Pair("i love it", "the plot is bad"));
        let mut mixed = false;
        for speed in [0.0f32, 0.2, 0.5, 0.8, 1.0] {
            let one = rt.predict(&inp, speed, 1).unwrap();
            mixed |= one
                .exit_layers
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= 2;
            for bs in [2, 3, 7, 64, usize::MAX] {
                let many = rt.predict(&inp, speed, bs).unwrap();
                assert_eq!(
                    bits(&many),
                    bits(&one),
                    "int8 {int8} speed {speed} batch {bs}"
                );
                assert_eq!(many.probabilities, one.probabilities);
            }
        }
        assert!(mixed, "some speed should mix exit layers within a batch");
    }
}

#[test]
fn threads_and_kernels_do_not_change_results() {
    let model = Model::new(Spec::default());
    let dir = model.write(true);
    let texts = texts();
    let inp = inputs(&texts);
    let want = bits(&runtime(&dir, 1).predict(&inp, 0.5, 6).unwrap());
    assert_eq!(bits(&runtime(&dir, 2).predict(&inp, 0.5, 6).unwrap()), want);
    for kernel in [
        KernelKind::Portable,
        KernelKind::Avx2,
        KernelKind::Avx512Vnni,
    ] {
        let opts = RuntimeOptions {
            threads: 2,
            kernel: Some(kernel),
        };
        match Runtime::load(dir.path(), opts) {
            Ok(rt) => {
                assert!(kernel_available(kernel));
                assert_eq!(bits(&rt.predict(&inp, 0.5, 6).unwrap()), want, "{kernel}");
            }
            Err(e) => {
                assert!(!kernel_available(kernel));
                assert!(e.to_string().contains("not supported"), "{e}");
            }
        }
    }
}

#[test]
fn speed_zero_runs_every_layer() {
    let dir = Model::new(Spec::default()).write(true);
    let rt = runtime(&dir, 2);
    let texts = texts();
    let p = rt.predict(&inputs(&texts), 0.0, 4).unwrap();
    assert!(p.exit_layers.iter().all(|&l| l == 4), "{:?}", p.exit_layers);
    assert_eq!(p.len(), texts.len());
    for i in 0..p.len() {
        let row = p.row(i);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let best = row.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(row[p.labels[i]], best);
    }
}

#[test]
fn a_confident_branch_exits_everything_at_its_layer() {
    let mut model = Model::new(Spec::default());
    // Exit 1 (fastbert) answers uniformly: uncertainty 1, never exits below speed 1.
    model.set("exits.1.classifier.weight", vec![0.0; 3 * 8]);
    model.set("exits.1.classifier.bias", vec![0.0; 3]);
    // Exit 2 (linear) is certain of label 2.
    model.set("exits.2.classifier.weight", vec![0.0; 3 * 16]);
    model.set("exits.2.classifier.bias", vec![0.0, 0.0, 40.0]);
    for int8 in [true, false] {
        let dir = model.write(int8);
        let rt = runtime(&dir, 2);
        let texts = texts();
        let p = rt.predict(&inputs(&texts), 0.5, 7).unwrap();
        assert!(p.exit_layers.iter().all(|&l| l == 2), "{:?}", p.exit_layers);
        assert!(p.labels.iter().all(|&l| l == 2));
        assert!(p.probabilities.chunks(3).all(|r| r[2] > 0.999));
        // At speed 0 nothing exits.
        let p = rt.predict(&inputs(&texts), 0.0, 7).unwrap();
        assert!(p.exit_layers.iter().all(|&l| l == 4));
    }
}

#[test]
fn regression_never_exits_early() {
    let spec = Spec {
        regression: true,
        exits: vec![(1, "linear"), (2, "fastbert")],
        ..Spec::default()
    };
    let mut model = Model::new(spec);
    model.set("exits.1.classifier.bias", vec![100.0]);
    let dir = model.write(true);
    let rt = runtime(&dir, 2);
    let texts = texts();
    let p = rt.predict(&inputs(&texts), 1.0, 4).unwrap();
    assert_eq!(p.num_outputs, 1);
    assert!(p.exit_layers.iter().all(|&l| l == 4));
    assert_eq!(p.probabilities, p.logits);
    assert!(p.labels.iter().all(|&l| l == 0));
}

#[test]
fn empty_long_and_pair_inputs() {
    let dir = Model::new(Spec::default()).write(true);
    let rt = runtime(&dir, 2);
    let long: String = "the movie was boring and ".repeat(4000); // 100k characters
    assert_eq!(long.len(), 100_000);
    let nospace = "x".repeat(100_000);
    let inp = vec![
        Input::Single(""),
        Input::Single(&long),
        Input::Pair("", ""),
        Input::Pair(&long, &long),
        Input::Pair("good", &long),
        Input::Single(&nospace),
        Input::Single("   \t\n "),
    ];
    let enc = rt.tokenize(&inp).unwrap();
    assert_eq!(enc.row_ids(0), &[2, 3]); // [CLS] [SEP]
    assert_eq!(enc.lengths[1], 24);
    assert_eq!(enc.row_ids(2), &[2, 3, 3]);
    assert_eq!(enc.lengths[3], 24);
    // Longest first: the short text keeps its token.
    assert_eq!(&enc.row_ids(4)[..3], &[2, 9, 3]);
    assert_eq!(enc.lengths[4], 24);
    assert_eq!(enc.row_ids(5), &[2, 1, 3]); // one over-long word is [UNK]
    assert_eq!(enc.row_ids(6), &[2, 3]);
    // Pair type ids: 0 for [CLS] a [SEP], 1 for b [SEP].
    let w = enc.width;
    assert_eq!(&enc.type_ids[4 * w..4 * w + 4], &[0, 0, 0, 1]);
    for speed in [0.0, 0.7] {
        let p = rt.predict(&inp, speed, 3).unwrap();
        assert_eq!(p.len(), inp.len());
        assert!(p.probabilities.iter().all(|v| v.is_finite()));
        // Same as one at a time.
        assert_eq!(bits(&rt.predict(&inp, speed, 1).unwrap()), bits(&p));
    }
    // No inputs at all.
    let p = rt.predict(&[], 0.5, 8).unwrap();
    assert!(p.is_empty());
}

#[test]
fn invalid_arguments_are_errors() {
    let dir = Model::new(Spec::default()).write(true);
    let rt = runtime(&dir, 1);
    let inp = [Input::Single("good")];
    for speed in [-0.01f32, 1.01, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = rt.predict(&inp, speed, 1).unwrap_err();
        assert!(e.to_string().contains("speed"), "{e}");
    }
    let e = rt.predict(&inp, 0.5, 0).unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");

    let ids = [2u32, 9, 3, 0, 2, 3, 0, 0];
    let types = [0u32; 8];
    let lengths = [3usize, 2];
    let ok = TokenBatch {
        ids: &ids,
        type_ids: Some(&types),
        lengths: &lengths,
        width: 4,
    };
    let by_ids = rt.predict_ids(&ok, 0.0, 2).unwrap();
    let by_text = rt
        .predict(&[Input::Single("good"), Input::Single("")], 0.0, 2)
        .unwrap();
    assert_eq!(bits(&by_ids), bits(&by_text));
    let no_types = TokenBatch {
        type_ids: None,
        ..ok
    };
    assert_eq!(
        bits(&rt.predict_ids(&no_types, 0.0, 1).unwrap()),
        bits(&by_text)
    );

    let bad_id = [2u32, 48, 3, 0, 2, 3, 0, 0];
    let bad_type = [0u32, 0, 2, 0, 0, 0, 0, 0];
    let cases: Vec<(TokenBatch, &str)> = vec![
        (
            TokenBatch { ids: &bad_id, ..ok },
            "row 0, position 1: token id 48",
        ),
        (
            TokenBatch {
                type_ids: Some(&bad_type),
                ..ok
            },
            "row 0, position 2: token type 2",
        ),
        (
            TokenBatch {
                lengths: &[3, 0],
                ..ok
            },
            "row 1: length 0",
        ),
        (
            TokenBatch {
                lengths: &[5, 1],
                ..ok
            },
            "row 0: length 5",
        ),
        (
            TokenBatch {
                ids: &ids[..7],
                ..ok
            },
            "ids: expected",
        ),
        (
            TokenBatch {
                type_ids: Some(&types[..4]),
                ..ok
            },
            "type_ids",
        ),
    ];
    for (batch, want) in cases {
        let e = rt.predict_ids(&batch, 0.0, 1).unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    // Longer than max_length (24).
    let long_ids = vec![5u32; 30];
    let e = rt
        .predict_ids(
            &TokenBatch {
                ids: &long_ids,
                type_ids: None,
                lengths: &[30],
                width: 30,
            },
            0.0,
            1,
        )
        .unwrap_err();
    assert!(e.to_string().contains("max_length"), "{e}");
}

#[test]
fn shared_across_threads_matches_serial() {
    let dir = Model::new(Spec::default()).write(true);
    let rt = Arc::new(runtime(&dir, 2));
    let texts = Arc::new(texts());
    let serial: Vec<_> = (0..8)
        .map(|i| bits(&rt.predict(&inputs(&texts), 0.1 * i as f32, 1 + i).unwrap()))
        .collect();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (rt, texts) = (Arc::clone(&rt), Arc::clone(&texts));
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| bits(&rt.predict(&inputs(&texts), 0.1 * i as f32, 1 + i).unwrap()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        for got in h.join().unwrap() {
            assert_eq!(got, serial[i], "thread {i}");
        }
    }
}

#[test]
fn truncation_matches_the_tokenizers_library() {
    let dir = Model::new(Spec::default()).write(true);
    let rt = runtime(&dir, 2);
    let mut reference =
        tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    reference
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: 24,
            ..Default::default()
        }))
        .unwrap();
    let texts = texts();
    let mut pairs = Vec::new();
    for (i, a) in texts.iter().enumerate() {
        pairs.push(Input::Single(a));
        for b in texts.iter().skip(i % 3).step_by(3) {
            pairs.push(Input::Pair(a, b));
        }
    }
    let ours = rt.tokenize(&pairs).unwrap();
    for (i, input) in pairs.iter().enumerate() {
        let enc = match *input {
            Input::Single(a) => reference.encode(a, true),
            Input::Pair(a, b) => reference.encode((a, b), true),
        }
        .unwrap();
        let n = ours.lengths[i];
        let s = i * ours.width;
        assert_eq!(&ours.ids[s..s + n], enc.get_ids(), "{input:?}");
        assert_eq!(&ours.type_ids[s..s + n], enc.get_type_ids(), "{input:?}");
    }
}
