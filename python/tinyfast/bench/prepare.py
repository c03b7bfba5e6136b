"""Preparing the contenders of ``tinyfast bench``, untimed, in the command's own process: the
int8 bundle (exported from a checkpoint), the ONNX export and its ONNX Runtime int8 models, the
OpenVINO int8 IR (NNCF calibration on rows of the data). The result is one worker spec per
contender that can run, and a record with the reason for every other."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast.bench.contender import Skipped
from tinyfast.bench.plan import PEERS, TINYFAST, BenchOptions, Model, Plan, tinyfast_name
from tinyfast.bundle import BUNDLE_CONFIG, BUNDLE_TOKENIZER, read_bundle_config

__all__ = ["Preparer"]

TRAIN_EXTRAS = "pip install 'tinyfast[train]'"


@contextlib.contextmanager
def cores_limited(threads: int) -> Iterator[None]:
    """Keep the threads this thread starts (torch's export, NNCF's statistics runs, which take
    every core by default) on ``threads`` of the cores it may use; restored after."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    if len(before) <= threads:
        yield
        return
    os.sched_setaffinity(0, sorted(before)[:threads])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _missing(*modules: str) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{' and '.join(absent)} not installed" if absent else None


def _weights(checkpoint: Path) -> list[Path]:
    """The weight files a checkpoint's model loads (not its branches or tokenizer)."""
    return sorted(p for p in checkpoint.iterdir() if p.is_file()
                  and p.name != "branches.safetensors" and p.suffix in (".safetensors", ".bin"))


def _files(paths: Sequence[Path]) -> dict[str, Any]:
    return {"size_bytes": sum(p.stat().st_size for p in paths),
            "size_files": [p.name for p in paths]}


class Preparer:
    """Builds each contender's worker spec (or the reason it has none) in order."""

    def __init__(self, opts: BenchOptions, plan_: Plan, work: Path, say: Callable[[str], None]):
        self.opts, self.plan, self.work, self.say = opts, plan_, work, say
        self.specs: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.bundle: Path | None = None
        self.bundle_meta: dict[str, Any] = {}
        self.seq_len = plan_.given.max_length

    def wanted(self, family: str) -> bool:
        return self.opts.contenders is None or family in self.opts.contenders

    def run(self, names: Sequence[str], inputs_file: Path) -> None:
        for name in names:
            family = TINYFAST if name.startswith(TINYFAST) else name
            if not self.wanted(family):
                self.records[name] = {"skipped": "not among --contenders"}
        with cores_limited(self.opts.threads):
            self._tinyfast(names)
            self._teacher()
            self._peers()
        common = {"inputs": str(inputs_file), "threads": self.opts.threads,
                  "batch_size": self.opts.batch_size}
        for spec in self.specs.values():
            spec.update({k: v for k, v in common.items() if k not in spec})

    def _tinyfast(self, names: Sequence[str]) -> None:
        mine = [n for n in names if n.startswith(TINYFAST) and n not in self.records]
        if not mine:
            return
        try:
            if self.plan.kind == "bundle":
                self.bundle = self.plan.given.path
            else:
                import torch

                from tinyfast.export import export

                torch.set_num_threads(self.opts.threads)
                self.say("exporting the int8 bundle")
                self.bundle = Path(export(self.plan.given.path, self.work / "bundle-int8"))
            self.bundle_meta = read_bundle_config(self.bundle / BUNDLE_CONFIG)
        except ModuleNotFoundError as exc:
            for n in mine:
                self.records[n] = {"skipped": f"exporting the bundle needs {exc.name} "
                                              f"({TRAIN_EXTRAS})"}
            return
        except Exception as exc:  # recorded: the peers still run
            for n in mine:
                self.records[n] = {"failed": f"export: {type(exc).__name__}: {exc}"}
            return
        self.seq_len = int(self.bundle_meta["max_length"])
        sized = _files([self.bundle / "model.safetensors", self.bundle / BUNDLE_CONFIG])
        exits = self.bundle_meta.get("exits") or []
        for speed in self.opts.speeds:
            name = tinyfast_name(speed)
            if name not in mine:
                continue
            if speed > 0 and not exits:
                self.records[name] = {"skipped": "the bundle has no exit branches: at every "
                                      "speed it runs every layer, as at speed 0"}
                continue
            self.specs[name] = {"kind": "tinyfast", "name": name, "model": str(self.bundle),
                                "speed": speed, "seq_len": self.seq_len, "engine": "tinyfast",
                                **sized}

    def _torch_spec(self, name: str, model: Model, quantize: bool) -> dict[str, Any]:
        spec = {"kind": "torch_int8_dynamic" if quantize else "torch", "name": name,
                "model": str(model.path), "seq_len": model.max_length, "engine": "torch"}
        if quantize:
            spec["save_to"] = str(self.work / "torch_int8_dynamic.pt")
        else:
            spec.update(_files(_weights(model.path)))
        return spec

    def _teacher(self) -> None:
        name = "teacher_torch_fp32"
        if name in self.records:
            return
        if self.plan.teacher is None:
            self.records[name] = {"skipped": "no --teacher given"}
            return
        why = _missing("torch", "transformers")
        if why:
            self.records[name] = {"skipped": f"{why} ({TRAIN_EXTRAS})"}
            return
        self.specs[name] = self._torch_spec(name, self.plan.teacher, quantize=False)

    def _peers(self) -> None:
        todo = [n for n in PEERS if n not in self.records]
        checkpoint = self.plan.checkpoint
        if checkpoint is None:
            for n in todo:
                self.records[n] = {"skipped": "a bundle was given without --checkpoint: this "
                                   "contender runs the checkpoint the bundle was exported from"}
            return
        why = _missing("torch", "transformers")
        if why:
            for n in todo:
                self.records[n] = {"skipped": f"{why} ({TRAIN_EXTRAS})"}
            return
        model = Model(checkpoint.path, checkpoint.labels, checkpoint.task, self.seq_len,
                      checkpoint.num_layers)  # the bundle's length: every contender alike
        for n in ("torch_fp32", "torch_int8_dynamic"):
            if n in todo:
                self.specs[n] = self._torch_spec(n, model, quantize=n == "torch_int8_dynamic")
        onnx_needed = []
        for n in ("ort_int8", "ort_int8_fused"):
            if n in todo:
                why = _missing("onnx", "onnxruntime")
                if why:
                    self.records[n] = {"skipped": f"{why} (pip install 'tinyfast[dev]')"}
                else:
                    onnx_needed.append(n)
        if "openvino_int8" in todo:
            from tinyfast.bench.contenders_openvino import missing

            why = missing() or _missing("onnx")
            if why:
                self.records["openvino_int8"] = {"skipped": why}
            else:
                onnx_needed.append("openvino_int8")
        if onnx_needed:
            self._onnx(onnx_needed, model)

    def _onnx(self, names: list[str], model: Model) -> None:
        import torch

        from tinyfast.bench.contenders_ort import export_onnx, quantize_onnx
        from tinyfast.models import load_tokenizer

        torch.set_num_threads(self.opts.threads)
        self.say("exporting the checkpoint to ONNX")
        fp32 = self.work / "fp32.onnx"
        try:
            tokenizer = load_tokenizer(model.path)
            torch_model, input_names, export = export_onnx(model.path, tokenizer, fp32)
        except Exception as exc:
            for n in names:
                self.records[n] = {"failed": f"ONNX export: {type(exc).__name__}: {exc}"}
            return
        tokenizer_json = model.path / BUNDLE_TOKENIZER
        common = {"tokenizer": str(tokenizer_json), "pad_id": int(tokenizer.pad_token_id or 0),
                  "seq_len": model.max_length, "export": export}
        for name in (n for n in names if n.startswith("ort")):
            self.say(f"quantizing {name}")
            try:
                path, prepared = quantize_onnx(fp32, name, self.work, torch_model.config)
            except Exception as exc:
                self.records[name] = {"failed": f"{type(exc).__name__}: {exc}"}
                continue
            self.specs[name] = {"kind": "ort", "name": name, "model": str(path),
                                "engine": "onnxruntime", "prepared": prepared,
                                **_files([path]), **common}
        if "openvino_int8" in names:
            self._openvino(fp32, input_names, tokenizer, common)

    def _openvino(self, fp32: Path, input_names: list[str], tokenizer: Any,
                  common: dict[str, Any]) -> None:
        from tinyfast.bench.contenders_openvino import calibration_rows, quantize_openvino
        from tinyfast.bench.encoding import FileEncoder

        name = "openvino_int8"
        inputs = self.plan.inputs
        rng = np.random.default_rng(self.opts.seed)
        count = min(len(inputs), self.opts.calibration_rows)
        rows = sorted(rng.choice(len(inputs), size=count, replace=False).tolist())
        self.say(f"quantizing {name} (NNCF, {count} calibration rows)")
        xml = self.work / "openvino_int8.xml"
        try:
            encode = FileEncoder(common["tokenizer"], common["pad_id"], static=True)
            calibration = calibration_rows(encode, [inputs[i] for i in rows], common["seq_len"])
            prepared = quantize_openvino(fp32, input_names, calibration, common["seq_len"], xml)
        except Skipped as exc:
            self.records[name] = {"skipped": str(exc)}
            return
        except Exception as exc:
            self.records[name] = {"failed": f"{type(exc).__name__}: {exc}"}
            return
        prepared["quantization"]["calibration_data"] = (
            f"{count} rows of --data drawn at random (seed {self.opts.seed}), each padded to "
            f"{common['seq_len']} tokens")
        files = [xml, xml.with_suffix(".bin")]
        self.specs[name] = {"kind": "openvino", "name": name, "model": str(xml),
                            "engine": "openvino", "prepared": prepared, **_files(files),
                            **common}
