"""The one training loop every trainer shares (finetune, distill general, distill task, ...).

A trainer hands over a module whose ``forward(batch)`` returns ``(loss, logs)`` and holds every
parameter to train (a student, its projections), plus a dataset and the config; a module whose
forward uses every one of its parameters may say so with ``uses_every_parameter = True``. The
loop owns the rest: AdamW with warmup and linear decay, gradient clipping and accumulation, AMP on
CUDA, DDP under torchrun, a progress bar, periodic evaluation, and atomic checkpoints that
``resume`` continues from to the same result as an uninterrupted run.

Exact resume rests on two rules: the data order is a pure function of (seed, epoch) (see
``BucketBatchSampler``), and the torch RNG is reseeded from (seed, rank, step) before every
optimizer step, so no RNG state has to be carried in a checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tinyfast.data.batching import BucketBatchSampler, collate
from tinyfast.errors import ConfigError
from tinyfast.train import distributed

Batch = dict[str, torch.Tensor]
Metrics = dict[str, float]


@dataclass
class TrainConfig:
    """Settings of one training run. ``batch_size`` counts rows per optimizer step over all
    processes and accumulation steps, so a run means the same on 1 or N processes."""

    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32
    grad_accum: int = 1
    warmup: float = 0.1  # share of optimizer steps with a linear warmup
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # 0 switches clipping off
    seed: int = 42
    eval_every: int = 0  # optimizer steps between evaluations; 0: at every epoch's end
    save_every: int = 200  # optimizer steps between resumable checkpoints; 0: at epoch ends only
    keep_checkpoints: int = 2
    log_every: int = 20
    amp: bool = True  # autocast on CUDA only; the CPU path stays fp32
    max_steps: int = 0  # stop after this many optimizer steps; 0: epochs decide
    progress: bool = True
    device: str | None = None  # "cpu" or "cuda"; default: CUDA when available

    def validate(self, world_size: int = 1) -> int:
        """Checks the settings and returns the per-process micro-batch size."""
        for name in ("epochs", "lr", "warmup", "weight_decay", "max_grad_norm"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number (got {getattr(self, name)})")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in 0..2**63-1 (got {self.seed})")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError(f"epochs must be > 0 (got {self.epochs})")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be > 0 (got {self.lr})")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup is a share of the steps in [0, 1) (got {self.warmup})")
        for name in ("batch_size", "grad_accum", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("eval_every", "save_every", "max_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ConfigError("max_grad_norm and weight_decay must be >= 0")
        parts = world_size * self.grad_accum
        if self.batch_size % parts:
            raise ConfigError(
                f"batch size {self.batch_size} does not split into {world_size} process(es) x "
                f"{self.grad_accum} accumulation step(s); pick a multiple of {parts}"
            )
        return self.batch_size // parts


# Settings that change the trajectory: a checkpoint only resumes under the same values.
_TRAJECTORY_KEYS = ("epochs", "lr", "batch_size", "grad_accum", "warmup", "weight_decay",
                    "max_grad_norm", "seed", "max_steps")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    best: Metrics | None  # the evaluation that was best by the chosen metric
    history: list[Metrics] = field(default_factory=list)  # every evaluation, in order


@dataclass
class _State:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps of this epoch already taken
    seconds: float = 0.0
    best: Metrics | None = None
    history: list[Metrics] = field(default_factory=list)


def run(
    module: nn.Module,
    dataset: Sequence[dict[str, Any]],
    lengths: Sequence[int],
    config: TrainConfig,
    work_dir: str | Path,
    *,
    evaluate: Callable[[nn.Module], Metrics] | None = None,
    metric: str | None = None,
    greater_is_better: bool = True,
    on_best: Callable[[Metrics], None] | None = None,
    resume: bool = False,
    pad_id: int = 0,
    desc: str = "train",
    ctx: distributed.DistContext | None = None,
) -> TrainResult:
    """Trains ``module`` in place and returns what happened.

    ``evaluate(module)`` runs on rank 0 with the unwrapped module in eval mode; when ``metric`` of
    its result improves, ``on_best(metrics)`` is called there (trainers save the model in it).
    Without ``evaluate`` the trained weights are the result: ``on_best({})`` is called once, on
    rank 0, when training ends.
    ``work_dir`` receives ``checkpoints/`` and ``train_log.jsonl``.
    """
    ctx = ctx or distributed.setup(config.device)
    micro_batch = config.validate(ctx.world_size)
    if evaluate is not None and metric is None:
        raise ConfigError("an evaluation needs the name of the metric that picks the best model")
    work_dir = Path(work_dir)
    ckpt_root = work_dir / "checkpoints"
    if ctx.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            # A fresh run must not leave an older run's checkpoints for a later --resume to find.
            shutil.rmtree(ckpt_root, ignore_errors=True)
            (work_dir / "train_log.jsonl").unlink(missing_ok=True)
    ctx.barrier()
    module.to(ctx.device)

    # The sampler hands each process its share of one optimizer step's rows, which the loop cuts
    # into micro-batches: the rows of a step are the same whatever the processes and accumulation.
    sampler = BucketBatchSampler(list(lengths), micro_batch * config.grad_accum, shuffle=True,
                                 seed=config.seed, num_replicas=ctx.world_size, rank=ctx.rank)
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ConfigError(f"{desc}: no training batches (dataset has {len(dataset)} rows)")
    total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)

    optimizer = _adamw(module, config)
    scheduler = _warmup_linear(optimizer, round(config.warmup * total_steps), total_steps)
    amp_dtype, scaler = _amp(config, ctx.device)

    state = _State()
    if resume:
        loaded = _load_latest(ckpt_root, module, optimizer, scheduler, scaler, config)
        if loaded is not None:
            state = loaded
            _say(ctx, f"{desc}: resuming at step {state.step}/{total_steps}")
    train_module: nn.Module = module
    if ctx.is_distributed:
        train_module = DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            # DDP must look for parameters a step leaves out (a student's classifier head in
            # the intermediate step); a step that uses every one says so and saves that search.
            find_unused_parameters=not getattr(module, "uses_every_parameter", False),
        )
    module.train()

    bar = tqdm(total=total_steps, initial=state.step, desc=desc, unit="step", dynamic_ncols=True,
               disable=not (config.progress and ctx.is_main), mininterval=0.5 if _tty() else 10.0)
    window = _Window()
    started = time.perf_counter() - state.seconds
    while state.step < total_steps:
        sampler.set_epoch(state.epoch)
        for rows in list(sampler)[state.step_in_epoch:]:
            torch.manual_seed(config.seed + 1_000_003 * ctx.rank + state.step)
            micro = [rows[i:i + micro_batch] for i in range(0, len(rows), micro_batch)]
            for i, indices in enumerate(micro):
                batch = _to_device(collate([dataset[j] for j in indices], pad_id), ctx.device)
                last = i == len(micro) - 1
                sync = nullcontext() if last or not ctx.is_distributed else train_module.no_sync()
                with sync, _autocast(ctx.device, amp_dtype):
                    loss, logs = train_module(batch)
                    # Weighted by rows, so a step's gradient is the mean over all its rows.
                    scaled = loss * (len(indices) / len(rows))
                (scaler.scale(scaled) if scaler else scaled).backward()
                window.add(loss, logs, len(indices) * ctx.world_size)
            step_lr = scheduler.get_last_lr()[0]  # the rate this step used
            _optimizer_step(module, optimizer, scaler, config.max_grad_norm)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.step_in_epoch += 1
            epoch_done = state.step_in_epoch >= steps_per_epoch
            if epoch_done:
                state.epoch += 1
                state.step_in_epoch = 0
            finished = state.step >= total_steps

            bar.update(1)
            if state.step % config.log_every == 0 or finished:
                record = window.flush(state.step, step_lr)
                bar.set_postfix(loss=f"{record['loss']:.4f}", rows_s=f"{record['rows_per_s']:.0f}")
                _append_log(ctx, work_dir, {"event": "train", "epoch": state.epoch, **record})

            due_eval = (state.step % config.eval_every == 0) if config.eval_every else epoch_done
            if evaluate is not None and (due_eval or finished):
                _evaluate(ctx, module, evaluate, metric, greater_is_better, on_best, state)
                _append_log(ctx, work_dir, {"event": "eval", **state.history[-1]})
            due_save = (state.step % config.save_every == 0) if config.save_every else False
            if due_save or epoch_done or finished:
                state.seconds = time.perf_counter() - started
                _save_checkpoint(ctx, ckpt_root, module, optimizer, scheduler, scaler, config,
                                 state)
            if finished or epoch_done:
                break
    bar.close()
    state.seconds = time.perf_counter() - started
    if evaluate is None and on_best is not None and ctx.is_main:
        on_best({})
    ctx.barrier()
    return TrainResult(steps=state.step, seconds=state.seconds, best=state.best,
                       history=state.history)


def _adamw(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # Biases and LayerNorm weights get no weight decay, as in BERT's recipe.
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    if not decay and not no_decay:
        raise ConfigError("nothing to train: the module has no trainable parameters")
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _warmup_linear(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _amp(config: TrainConfig, device: torch.device):
    if not config.amp or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _optimizer_step(module, optimizer, scaler, max_grad_norm: float) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        params = [p for p in module.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _evaluate(ctx, module, evaluate, metric, greater_is_better, on_best, state: _State) -> None:
    """Rank 0 evaluates; every rank then records the same metrics, so their states (history,
    best, what they log and return) stay identical."""
    metrics = None
    if ctx.is_main:
        module.eval()
        with torch.no_grad():
            metrics = dict(evaluate(module))
        module.train()
        if metric not in metrics:
            raise ConfigError(f"evaluation returned no '{metric}' (it gave {sorted(metrics)})")
        metrics["step"] = state.step
    metrics = ctx.from_main(metrics)
    state.history.append(metrics)
    best = state.best
    better = best is None or (
        metrics[metric] > best[metric] if greater_is_better else metrics[metric] < best[metric]
    )
    if better:
        state.best = metrics
        if on_best is not None and ctx.is_main:
            on_best(metrics)
    ctx.barrier()


class _Window:
    """Loss and throughput averaged over the steps since the last log line."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.losses: list[float] = []
        self.parts: dict[str, list[float]] = {}
        self.rows = 0
        self.since = time.perf_counter()

    def add(self, loss: torch.Tensor, logs: dict[str, Any], rows: int) -> None:
        self.losses.append(float(loss.detach()))
        for key, value in logs.items():
            self.parts.setdefault(key, []).append(float(value))
        self.rows += rows

    def flush(self, step: int, lr: float) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        record = {"step": step, "lr": lr, "loss": _mean(self.losses),
                  "rows_per_s": self.rows / elapsed}
        record.update({k: _mean(v) for k, v in self.parts.items()})
        self._reset()
        return record


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _append_log(ctx, work_dir: Path, record: dict[str, Any]) -> None:
    if ctx.is_main:
        with open(work_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _say(ctx, message: str) -> None:
    if ctx.is_main:
        print(message, file=sys.stderr, flush=True)


def _tty() -> bool:
    return sys.stderr.isatty()


# --- checkpoints --------------------------------------------------------------------------------

def _save_checkpoint(ctx, root: Path, module, optimizer, scheduler, scaler, config, state) -> None:
    """Writes ``root/step-NNNNNNNN`` through a temporary directory and a rename, so a run killed
    mid-write leaves the previous checkpoint intact. Rank 0 writes; the others wait."""
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{state.step:08d}"
        tmp = root / f".tmp-step-{state.step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(module, str(tmp / "module.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
            },
            tmp / "optimizer.pt",
        )
        progress = asdict(state)
        progress["config"] = {k: getattr(config, k) for k in _TRAJECTORY_KEYS}
        (tmp / "state.json").write_text(json.dumps(progress, indent=1), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(root)[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()


def _checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def _load_latest(root: Path, module, optimizer, scheduler, scaler, config) -> _State | None:
    found = _checkpoints(root)
    if not found:
        return None
    latest = found[-1]
    try:
        progress = json.loads((latest / "state.json").read_text(encoding="utf-8"))
        saved = progress.pop("config")
        changed = {k: (saved.get(k), getattr(config, k)) for k in _TRAJECTORY_KEYS
                   if saved.get(k) != getattr(config, k)}
        if changed:
            detail = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
            raise ConfigError(f"{latest}: cannot resume with different settings ({detail})")
        load_model(module, str(latest / "module.safetensors"))
        opt = torch.load(latest / "optimizer.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        if scaler is not None and opt["scaler"]:
            scaler.load_state_dict(opt["scaler"])
        return _State(**progress)
    except ConfigError:
        raise
    except Exception as exc:  # a damaged checkpoint: say which one and why
        raise ConfigError(f"{latest}: cannot resume from this checkpoint: {exc}") from exc
