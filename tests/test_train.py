"""The shared training loop: schedule, accumulation, evaluation, exact resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinyfast import train
from tinyfast.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from toy_training import ToyClassifier, toy_dataset  # noqa: E402


def _config(**kw) -> train.TrainConfig:
    base = dict(epochs=2, lr=1e-2, batch_size=8, warmup=0.1, progress=False, save_every=0,
                device="cpu", log_every=1)
    base.update(kw)
    return train.TrainConfig(**base)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_trains_and_logs(tmp_path):
    module = ToyClassifier()
    items, lengths = toy_dataset()
    before = _weights(module)
    result = train.run(module, items, lengths, _config(), tmp_path)
    assert result.steps == 2 * 96 // 8
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert len(losses) == result.steps
    assert sum(losses[-4:]) < sum(losses[:4])  # it learns the toy task
    assert all("ce" in r and r["rows_per_s"] > 0 for r in log if r["event"] == "train")


def test_warmup_then_linear_decay(tmp_path):
    items, lengths = toy_dataset()
    train.run(ToyClassifier(), items, lengths, _config(warmup=0.25, lr=1.0), tmp_path)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    # 24 steps, 6 of warmup: step s (1-based) uses s/6, then the rate falls linearly to 0
    # (1/18 at the last step), so no step is wasted at a rate of 0.
    assert lrs[:6] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])
    assert lrs[6:8] == pytest.approx([1.0, 17 / 18])
    assert lrs[-1] == pytest.approx(1 / 18)


def test_accumulation_matches_one_large_batch(tmp_path):
    """2 accumulated micro-batches of 8 take the same step as one batch of 16 (same rows)."""
    items, lengths = toy_dataset(rows=64)
    a, b = ToyClassifier(dropout=0.0), ToyClassifier(dropout=0.0)
    train.run(a, items, lengths, _config(batch_size=16, grad_accum=1), tmp_path / "a")
    train.run(b, items, lengths, _config(batch_size=16, grad_accum=2), tmp_path / "b")
    for k, v in _weights(a).items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_evaluation_keeps_best_and_calls_on_best(tmp_path):
    items, lengths = toy_dataset()
    scores = iter([0.5, 0.9, 0.7, 0.8])
    saved = []
    result = train.run(ToyClassifier(), items, lengths, _config(eval_every=6), tmp_path,
                       evaluate=lambda m: {"accuracy": next(scores)}, metric="accuracy",
                       on_best=lambda m: saved.append(m["step"]))
    assert [h["accuracy"] for h in result.history] == [0.5, 0.9, 0.7, 0.8]
    assert result.best["accuracy"] == 0.9 and result.best["step"] == 12
    assert saved == [6, 12]


def test_without_evaluation_the_final_weights_are_the_result(tmp_path):
    items, lengths = toy_dataset()
    module = ToyClassifier()
    saved = []
    result = train.run(module, items, lengths, _config(), tmp_path,
                       on_best=lambda m: saved.append((m, _weights(module))))
    assert result.best is None and len(saved) == 1 and saved[0][0] == {}
    for name, tensor in _weights(module).items():  # saved after the last step, not before
        assert torch.equal(saved[0][1][name], tensor)


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    """A run killed mid-epoch and resumed ends bit-identical to one never interrupted, dropout
    included (the RNG is reseeded per step)."""
    items, lengths = toy_dataset()
    config = _config(epochs=3, save_every=5, keep_checkpoints=2)
    full = ToyClassifier()
    full_result = train.run(full, items, lengths, config, tmp_path / "full",
                            evaluate=lambda m: {"x": float(m.out.weight.sum())}, metric="x")

    class Crash(RuntimeError):
        pass

    crashing = ToyClassifier()
    calls = {"n": 0}
    original = crashing.forward

    def forward(batch):
        calls["n"] += 1
        if calls["n"] == 23:  # step 23 of 36, mid epoch 2, after the checkpoint at step 20
            raise Crash()
        return original(batch)

    crashing.forward = forward
    with pytest.raises(Crash):
        train.run(crashing, items, lengths, config, tmp_path / "resumed",
                  evaluate=lambda m: {"x": float(m.out.weight.sum())}, metric="x")
    kept = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert kept == ["step-00000015", "step-00000020"]  # epoch end at 12 rotated out

    resumed = ToyClassifier()  # a fresh process would start from scratch like this
    result = train.run(resumed, items, lengths, config, tmp_path / "resumed", resume=True,
                       evaluate=lambda m: {"x": float(m.out.weight.sum())}, metric="x")
    assert result.steps == full_result.steps == 36
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert result.history == full_result.history


def test_resume_refuses_changed_settings(tmp_path):
    items, lengths = toy_dataset()
    train.run(ToyClassifier(), items, lengths, _config(save_every=3, max_steps=3), tmp_path)
    with pytest.raises(ConfigError, match="lr: 0.01 -> 0.02"):
        train.run(ToyClassifier(), items, lengths, _config(lr=2e-2, max_steps=3), tmp_path,
                  resume=True)


def test_resume_reports_a_damaged_checkpoint(tmp_path):
    items, lengths = toy_dataset()
    train.run(ToyClassifier(), items, lengths, _config(max_steps=3), tmp_path)
    (tmp_path / "checkpoints" / "step-00000003" / "module.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="step-00000003: cannot resume"):
        train.run(ToyClassifier(), items, lengths, _config(max_steps=3), tmp_path, resume=True)


@pytest.mark.parametrize("bad, message", [
    (dict(batch_size=10, grad_accum=3), "multiple of 3"),
    (dict(lr=0.0), "learning rate"),
    (dict(warmup=1.5), "warmup"),
    (dict(epochs=0.0), "epochs"),
])
def test_bad_settings(tmp_path, bad, message):
    items, lengths = toy_dataset()
    with pytest.raises(ConfigError, match=message):
        train.run(ToyClassifier(), items, lengths, _config(**bad), tmp_path)


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) and global batch 8 ends where one process with batch 8
    ends: same rows per step, gradients averaged by DDP."""
    items, lengths = toy_dataset()
    single = ToyClassifier(dropout=0.0)
    train.run(single, items, lengths,
              train.TrainConfig(epochs=2, lr=1e-2, batch_size=8, warmup=0.1, progress=False,
                                save_every=0, device="cpu"), tmp_path / "single")
    out = tmp_path / "ddp.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = Path(__file__).parent / "toy_training.py"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
         str(script), "--out", str(out), "--work", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = load_file(str(out))
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6)
    # Only rank 0 wrote the log: one line per step, not two.
    log = (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == len((tmp_path / "single" / "train_log.jsonl").read_text().splitlines())


def test_fresh_run_discards_an_older_runs_checkpoints(tmp_path):
    items, lengths = toy_dataset()
    train.run(ToyClassifier(), items, lengths, _config(epochs=3), tmp_path)  # steps up to 36
    train.run(ToyClassifier(), items, lengths, _config(epochs=1), tmp_path)  # 12 steps, fresh
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-00000012"]
    log = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 12
