"""benches/runtime_speed.py end to end on a tiny random BERT (seconds, not a measurement).

The first run uses whatever tinyfast has: until the runtime is built, both tinyfast contenders
must be recorded as skipped with the reason. The second run swaps in a stand-in runtime (the torch
model behind tinyfast's API) purely to drive the harness's tinyfast and early-exit code paths;
its numbers mean nothing and it never leaves this test.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import tinyfast  # noqa: E402
from bench_scripts import load_bench  # noqa: E402

WORKLOADS = [("b1_s32", 1, 32), ("b1_s128", 1, 128), ("b32_s32", 32, 32)]
FAST = ["--repeats", "2", "--calls", "2", "--warmup", "1", "--pool", "8", "--threads", "1"]
PEERS = ["torch_fp32", "torch_int8_dynamic", "ort_int8", "ort_int8_fused"]
LAYERS = 4  # as tinybert4: the forced-exit schedules of the issue (25% after each of 1, 2, 3)
POOL = 8
FORCED = [
    "none",
    "all_after_1",
    "half_after_1",
    "even_after_each",
    "all_after_2",
    "all_after_3",
    "branches_no_exit",
]


@pytest.fixture(scope="module")
def bench() -> types.ModuleType:
    return load_bench("runtime_speed.py")


def build_tokenizer() -> Any:
    """WordPiece over the bench's sentence words plus letters, so long words split into pieces."""
    import tokenizers

    bench = load_bench("runtime_speed.py")
    vocab: dict[str, int] = {}
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *letters]
    tokens += [f"##{c}" for c in letters] + [w for w in bench._WORDS if len(w) <= 5]
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    wordpiece = tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = build_tokenizer()
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=160,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("tiny-classifier")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def report(bench: types.ModuleType, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bench") / "speed.json"
    code = bench.main(["--model", str(tiny_model), "--out", str(out), *FAST])
    assert code == 0
    return json.loads(out.read_text())


def check_stats(res: dict[str, Any], batch: int) -> None:
    lat = res["latency_ms"]
    assert res["calls"] == 4  # 2 repeats x 2 calls
    assert all(lat[k] > 0 and np.isfinite(lat[k]) for k in ("p50", "p90", "p99", "mean", "min"))
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert res["throughput_rows_per_s"] == pytest.approx(batch * 1e3 / lat["mean"])
    assert res["effective_gops"] > 0


def test_every_contender_has_numbers_or_a_reason(report: dict[str, Any]) -> None:
    bench = load_bench("runtime_speed.py")
    assert list(report["contenders"]) == list(bench.CONTENDERS)
    for name in PEERS:
        assert "settings" in report["contenders"][name]
    if not hasattr(tinyfast, "Runtime"):
        for name in ("tinyfast_int8", "tinyfast_f32"):
            assert report["contenders"][name] == {"skipped": "runtime not built"}
    assert [(w["name"], w["batch"], w["seq_len"]) for w in report["settings"]["workloads"]] == [
        (n, b, s) for n, b, s in WORKLOADS
    ]
    for name, batch, seq in WORKLOADS:
        wl = report["workloads"][name]
        assert (wl["batch"], wl["seq_len"], wl["pool_rows"]) == (batch, seq, max(batch, 8))
        assert set(wl["results"]) == set(bench.CONTENDERS)
        for contender, res in wl["results"].items():
            if "latency_ms" in res:
                check_stats(res, batch)
            else:
                reason = res.get("skipped") or res.get("failed")
                assert isinstance(reason, str) and reason, (name, contender, res)
                assert contender.startswith("tinyfast")
        for peer in PEERS:
            assert "latency_ms" in wl["results"][peer]


def test_ratios_agree_with_the_latencies(report: dict[str, Any]) -> None:
    for wl in report["workloads"].values():
        ratios = wl["ratios_vs_ort_int8"]
        base = wl["results"]["ort_int8"]["latency_ms"]
        assert ratios["ort_int8"] == {"p50": 1.0, "mean": 1.0}
        for name, res in wl["results"].items():
            if "latency_ms" not in res:
                assert name not in ratios
                continue
            for stat in ("p50", "mean"):
                want = res["latency_ms"][stat] / base[stat]
                assert ratios[name][stat] == pytest.approx(want)
    goal = report["tinyfast_over_ort_int8"]
    assert goal["target"] == 0.7
    if not hasattr(tinyfast, "Runtime"):
        assert goal["goal_met"] is None and goal["per_workload"] == {}
        assert "runtime not built" in goal["reason"]


def test_label_agreement_is_recorded(report: dict[str, Any]) -> None:
    for wl in report["workloads"].values():
        rows = wl["pool_rows"]
        parity = wl["parity_vs_torch_fp32"]
        assert parity["torch_fp32"] == {
            "rows": rows,
            "label_agreement": 1.0,
            "max_abs_prob_diff": 0.0,
        }
        for name in PEERS:
            assert parity[name]["rows"] == rows
            assert 0.0 <= parity[name]["label_agreement"] <= 1.0
            assert 0.0 <= parity[name]["max_abs_prob_diff"] <= 1.0
        assert sum(wl["reference_label_counts"].values()) == rows


def test_machine_settings_and_ort_recipe(report: dict[str, Any]) -> None:
    machine = report["machine"]
    assert machine["threads_used"] == 1 and machine["logical_cores"] >= 1
    assert machine["versions"]["tinyfast"] == tinyfast.__version__
    assert machine["versions"]["onnxruntime"] and machine["versions"]["torch"]
    assert report["settings"]["threads"]["torch_num_threads"] == 1
    ort_plain = report["contenders"]["ort_int8"]["settings"]
    ort_fused = report["contenders"]["ort_int8_fused"]["settings"]
    assert ort_plain["graph_optimizer"] == "none"
    assert ort_plain["quantization"]["weight_type"] == "QInt8"
    assert ort_plain["int8_graph_ops"].get("MatMulInteger", 0) > 0
    assert ort_fused["graph_optimizer"]["fused_operators"].get("Attention") == LAYERS
    assert ort_fused["int8_graph_ops"].get("QAttention") == LAYERS
    for settings in (ort_plain, ort_fused):
        assert settings["export"]["fp32_onnx_max_abs_logit_diff_vs_torch"] < 1e-4
        assert settings["inference_options"]["intra_op_num_threads"] == 1
    if not hasattr(tinyfast, "Runtime"):
        assert report["early_exit"] == {
            "speed_sweep": {"skipped": "runtime not built"},
            "forced_exit": {"skipped": "runtime not built"},
        }


def test_texts_tokenize_to_the_exact_length(bench: types.ModuleType) -> None:
    tokenizer = build_tokenizer()
    source, _ = bench.load_source_texts(None, "sentence", 0)
    for seq in (5, 32, 128):
        texts = bench.exact_length_texts(tokenizer, source, seq, 6)
        assert len(set(texts)) == 6
        assert [len(tokenizer(t)["input_ids"]) for t in texts] == [seq] * 6


# ---------------------------------------------------------------------------------------------
# Forced early exit (the real runtime on the tiny model)


@pytest.mark.skipif(not hasattr(tinyfast, "Runtime"), reason="runtime not built")
def test_forced_exit_runs_every_schedule_as_planned(report: dict[str, Any]) -> None:
    forced = report["early_exit"]["forced_exit"]
    assert forced["num_layers"] == LAYERS
    assert forced["branches"] == [{"layer": k, "kind": "linear"} for k in range(1, LAYERS)]
    assert list(forced["schedules"]) == FORCED
    assert forced["schedules"]["even_after_each"]["intended_shares"] == {
        str(k): 0.25 for k in range(1, LAYERS + 1)
    }
    assert forced["schedules"]["none"]["speed"] == 0.0
    assert 0.0 < forced["schedules"]["all_after_1"]["speed"] < 0.01
    for name, batch, _ in WORKLOADS:
        rows = forced["workloads"][name]
        assert list(rows) == FORCED
        pool = max(batch, POOL)
        quarter = {str(k): pool // 4 for k in range(1, LAYERS + 1)}
        expected = {
            "none": {str(LAYERS): pool},
            "all_after_1": {"1": pool},
            "half_after_1": {"1": pool // 2, str(LAYERS): pool // 2},
            "even_after_each": quarter,
            "all_after_2": {"2": pool},
            "all_after_3": {"3": pool},
            "branches_no_exit": {str(LAYERS): pool},
        }
        for schedule, res in rows.items():
            # The exit layers the runtime reported are the planned ones, row by row.
            assert res["exit_layer_counts"] == expected[schedule], (name, schedule)
            assert res["intended_exit_layer_counts"] == expected[schedule]
            assert res["rows_off_plan"] == 0
            assert res["calls"] == 4
            lat = res["latency_ms"]
            assert 0 < lat["min"] <= lat["p50"] <= lat["max"]
            none = rows["none"]["latency_ms"]
            assert res["speedup_vs_none_p50"] == pytest.approx(none["p50"] / lat["p50"])
            assert res["speedup_vs_none_mean"] == pytest.approx(none["mean"] / lat["mean"])
            assert 1 <= res["mean_layers_run"] <= LAYERS
            assert res["expected_speedup_layers"] == pytest.approx(LAYERS / res["mean_layers_run"])
        assert rows["none"]["speedup_vs_none_p50"] == 1.0
        assert rows["all_after_1"]["expected_speedup_layers"] == LAYERS
        assert rows["all_after_3"]["mean_layers_run"] == 3
        for layer, sep in rows["even_after_each"]["separation"].items():
            assert sep["separable"] and sep["score_gap"] > 0, layer
            assert sep["rows_exiting"] == pool // 4
        assert "separation" not in rows["all_after_1"]  # a constant branch: nothing to separate
    goal = forced["goal"]
    assert goal["target"] == 3.0
    assert set(goal["per_workload"]) == {name for name, _, _ in WORKLOADS}
    for name, value in goal["per_workload"].items():
        assert value == forced["workloads"][name]["all_after_1"]["speedup_vs_none_p50"]
    assert goal["goal_met"] is (min(goal["per_workload"].values()) >= 3.0)


def test_forced_exit_schedules_and_counts(bench: types.ModuleType) -> None:
    names = [s.name for s in bench.exit_schedules(4)]
    assert names == FORCED
    assert [s.name for s in bench.exit_schedules(2)] == [
        "none",
        "all_after_1",
        "half_after_1",
        "branches_no_exit",
    ]
    even = bench.exit_schedules(3)[3]
    assert even.name == "even_after_each" and [k for k, _ in even.shares] == [1, 2]
    by_name = {s.name: s for s in bench.exit_schedules(4)}
    assert bench.planned_exit_counts(64, by_name["even_after_each"], 4) == {
        1: 16,
        2: 16,
        3: 16,
        4: 16,
    }
    assert bench.planned_exit_counts(6, by_name["even_after_each"], 4) == {1: 2, 2: 1, 3: 2, 4: 1}
    assert bench.planned_exit_counts(7, by_name["half_after_1"], 4) == {1: 4, 4: 3}
    assert bench.planned_exit_counts(5, by_name["all_after_2"], 4) == {2: 5}
    assert bench.planned_exit_counts(5, by_name["none"], 4) == {4: 5}


def test_uncertainty_matches_the_branches_definition(bench: types.ModuleType) -> None:
    from tinyfast.bundle import normalized_entropy as reference_entropy
    from tinyfast.models.branches import normalized_entropy

    for logits in ([8.0, 0.0], [0.0, 0.0], [3.0, -1.0, 0.5], [80.0, 0.0, 0.0]):
        ours = bench.normalized_uncertainty(logits)
        assert ours == pytest.approx(reference_entropy(np.array(logits)), abs=1e-12)
        torch_f32 = float(normalized_entropy(torch.tensor(logits)))  # computes in float32
        assert ours == pytest.approx(torch_f32, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("exiting", [1, 3, 5])
def test_slab_branch_separates_the_top_scores(bench: types.ModuleType, exiting: int) -> None:
    rng = np.random.default_rng(exiting)
    hidden, classes, probe_bias = 6, 2, 16.0
    direction = rng.normal(size=hidden)
    direction /= np.linalg.norm(direction)
    states = rng.normal(size=(9, hidden)) + 3.0  # a common offset, as [CLS] states have
    scores = states @ direction + probe_bias  # what the probe branch reports
    (weight, bias), order, info = bench._slab_branch(
        scores, exiting, direction, probe_bias, classes
    )
    z = states @ weight.T + bias  # what the forced branch answers
    assert np.all(z[:, 1] == 0.0)
    top = set(np.argsort(-scores)[:exiting].tolist())
    assert set(order[:exiting].tolist()) == top
    margin = bench.FORCED_MARGIN
    for row in range(len(scores)):
        if row in top:
            assert z[row, 0] > margin
        else:
            assert abs(z[row, 0]) < margin
    assert info["separable"] and info["rows_exiting"] == exiting and info["rows_reaching"] == 9
    # Every row sits at least half the score gap (scaled to logits) from the exit edge.
    gap_logits = info["score_gap"] / 2 * np.abs(weight[0]).sum() / np.abs(direction).sum()
    assert np.min(np.abs(np.abs(z[:, 0]) - margin)) >= gap_logits * (1 - 1e-9)


def test_forced_goal_needs_batch_1_and_32_and_planned_exits(bench: types.ModuleType) -> None:
    def rows(speedup: float, off: int = 0) -> dict[str, Any]:
        return {"all_after_1": {"speedup_vs_none_p50": speedup, "rows_off_plan": off}}

    batches = {"b1_s32": 1, "b1_s128": 1, "b32_s32": 32}
    results = {"b1_s32": rows(3.5), "b1_s128": rows(3.1), "b32_s32": rows(4.0)}
    goal = bench.forced_goal(results, batches)
    assert goal["goal_met"] is True and goal["per_workload"]["b1_s128"] == 3.1
    results["b1_s128"] = rows(2.9)
    assert bench.forced_goal(results, batches)["goal_met"] is False
    results["b1_s128"] = rows(3.5, off=2)
    goal = bench.forced_goal(results, batches)
    assert goal["goal_met"] is None and "2 rows did not leave after layer 1" in goal["reason"]
    results["b1_s128"] = {"skipped": "bundle max_length 64 < sequence 128: it would truncate"}
    goal = bench.forced_goal(results, batches)
    assert goal["goal_met"] is None and goal["reason"].startswith("b1_s128: bundle max_length")
    goal = bench.forced_goal({"b1_s32": rows(3.5)}, batches)
    assert goal["goal_met"] is None and "batch 1 and batch 32" in goal["reason"]


# ---------------------------------------------------------------------------------------------
# The harness's tinyfast paths, driven by a stand-in runtime


class StandInResult:
    def __init__(self, labels: np.ndarray, probs: np.ndarray, exits: np.ndarray) -> None:
        self.labels, self.probabilities, self.exit_layers = labels, probs, exits


class StandInRuntime:
    """tinyfast.Runtime's Python API over the torch model: the bundle dir holds a copy of it."""

    def __init__(self, bundle: Path) -> None:
        meta = json.loads((bundle / "tinyfast.json").read_text())
        self.layers = meta["architecture"]["num_layers"]
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(bundle / "model")
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(
            bundle / "model"
        ).eval()

    @classmethod
    def load(cls, bundle: str | Path, threads: int = 1) -> StandInRuntime:
        return cls(Path(bundle))

    def predict(self, texts: list[str], speed: float = 0.0, batch_size: int = 32):
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            probs = torch.softmax(self.model(**enc).logits, -1).numpy()
        exits = np.full(len(texts), 1 if speed > 0.5 else self.layers)  # "exits" after layer 1
        return StandInResult(probs.argmax(-1), probs, exits)


def stand_in_export(model_dir: str | Path, out_dir: str | Path, dtype: str = "int8") -> None:
    out = Path(out_dir)
    shutil.copytree(model_dir, out / "model")
    shutil.copy(out / "model" / "tokenizer.json", out / "tokenizer.json")
    meta = {
        "architecture": {"num_layers": 2},
        "max_length": 64,  # shorter than the 1x128 workload: that one must be skipped
        "quantization": "none" if dtype == "f32" else "int8",
        "exits": [{"layer": 1, "kind": "linear"}],
    }
    (out / "tinyfast.json").write_text(json.dumps(meta))


def test_tinyfast_paths_with_a_stand_in_runtime(
    bench: types.ModuleType,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tinyfast, "Runtime", StandInRuntime, raising=False)
    export_module = types.ModuleType("tinyfast.export")
    export_module.export = stand_in_export  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tinyfast.export", export_module)

    out = tmp_path / "speed.json"
    argv = ["--model", str(tiny_model), "--out", str(out), "--contenders", "torch_fp32,ort_int8,"]
    argv[-1] += "tinyfast_int8,tinyfast_f32"
    assert bench.main([*argv, "--exit-speeds", "0,1", *FAST]) == 0
    report = json.loads(out.read_text())

    assert list(report["contenders"]) == ["torch_fp32", "ort_int8", "tinyfast_int8", "tinyfast_f32"]
    assert report["contenders"]["tinyfast_int8"]["settings"]["quantization"] == "int8"
    assert report["contenders"]["tinyfast_f32"]["settings"]["quantization"] == "none"
    for dtype in ("int8", "f32"):  # built in the temporary --work-dir
        bundle_dir = report["contenders"][f"tinyfast_{dtype}"]["settings"]["bundle_dir"]
        assert bundle_dir == f"<WORK>/bundle-{dtype}"
    too_long = report["workloads"]["b1_s128"]["results"]["tinyfast_int8"]
    assert "max_length 64 < sequence 128" in too_long["skipped"]
    for name in ("b1_s32", "b32_s32"):
        wl = report["workloads"][name]
        check_stats(wl["results"]["tinyfast_int8"], wl["batch"])
        assert wl["parity_vs_torch_fp32"]["tinyfast_int8"]["label_agreement"] == 1.0
    goal = report["tinyfast_over_ort_int8"]
    s32 = report["workloads"]["b1_s32"]["results"]
    assert goal["per_workload"]["b1_s32"]["vs"] == "ort_int8"
    assert goal["per_workload"]["b1_s32"]["ratio"] == pytest.approx(
        s32["tinyfast_int8"]["latency_ms"]["p50"] / s32["ort_int8"]["latency_ms"]["p50"]
    )
    assert goal["goal_met"] is None and "b1_s128" in goal["reason"]

    early = report["early_exit"]["speed_sweep"]
    assert early["exits"] == [{"layer": 1, "kind": "linear"}] and early["speeds"] == [0.0, 1.0]
    assert "branches_dir" in report["early_exit"]["forced_exit"]["skipped"]
    row = early["workloads"]["b32_s32"]
    assert row["speed=0"]["mean_exit_layer"] == 2.0 and row["speed=1"]["mean_exit_layer"] == 1.0
    assert row["speed=1"]["exit_layer_counts"] == {"1": 32}
    assert row["speed=1"]["label_agreement_vs_speed0"] == 1.0
    assert row["speed=0"]["speedup_vs_speed0_p50"] == pytest.approx(1.0)


def test_goal_summary_takes_the_faster_ort_recipe(bench: types.ModuleType) -> None:
    def res(p50: float) -> dict[str, Any]:
        return {"latency_ms": {"p50": p50}}

    workloads = {
        "b1_s32": {
            "batch": 1,
            "results": {
                "tinyfast_int8": res(3.0),
                "ort_int8": res(6.0),
                "ort_int8_fused": res(4.0),
            },
        },
        "b32_s32": {"batch": 32, "results": {"tinyfast_int8": res(99.0), "ort_int8": res(1.0)}},
    }
    goal = bench.goal_summary(workloads, 0.7)
    assert goal["per_workload"]["b1_s32"]["vs"] == "ort_int8_fused"
    assert goal["per_workload"]["b1_s32"]["ratio"] == 0.75
    assert goal["per_workload"]["b1_s32"]["ratio_vs_ort_int8"] == 0.5
    assert goal["goal_met"] is False  # batch 32 does not count; 0.75 > 0.7
    assert bench.goal_summary(workloads, 0.8)["goal_met"] is True
    workloads["b1_s32"]["results"]["tinyfast_int8"] = {"skipped": "runtime not built"}
    goal = bench.goal_summary(workloads, 0.8)
    assert goal["goal_met"] is None and goal["reason"] == "b1_s32: runtime not built"
