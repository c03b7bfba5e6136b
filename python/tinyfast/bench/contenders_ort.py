"""ONNX Runtime contenders: one ONNX export of the classifier (TorchScript exporter, eager
attention, dynamic batch and sequence axes), then ``onnxruntime.quantization.quantize_dynamic``
with int8 weights, as is (``ort_int8``) or after ONNX Runtime's BERT graph optimizer
(``ort_int8_fused``: fused Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu).

Preparing (export, fusion, quantization) needs torch, onnx and onnxruntime; running a prepared
model needs onnxruntime and an encoder alone."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast.bench.contender import Contender, Inputs, Prediction, from_logits
from tinyfast.bench.encoding import Encode, hf_encoder

__all__ = [
    "ORT_INT8",
    "export_onnx",
    "inference_options",
    "ort_contenders",
    "ort_predict",
    "ort_session",
    "quantize_onnx",
    "quiet",
]

# ONNX Runtime int8, plain and graph-fused: comparisons take the faster of the two.
ORT_INT8 = ("ort_int8", "ort_int8_fused")
OPSET = 17
QUANTIZATION = {
    "tool": "onnxruntime.quantization.quantize_dynamic",
    "weight_type": "QInt8",
    "per_channel": False,
    "reduce_range": False,
    "op_types_to_quantize": "default (all ORT integer ops: MatMul, Attention, Gather, ...)",
    "extra_options": {"DefaultTensorType": "FLOAT"},
}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences exporters' deprecation warnings and quantizers' root-logger advice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def export_onnx(model_dir: Path, tokenizer: Any, path: Path) -> tuple[Any, list[str], dict]:
    """Export the classifier's logits to ``path`` (fp32); returns the torch model (eager
    attention), the input names and a record of the export, with the largest logit difference
    between the ONNX graph (run by ONNX Runtime, when installed) and torch."""
    import torch

    from tinyfast.bench.contenders_torch import load_torch_classifier

    # Eager attention exports as plain MatMul/Softmax, which ORT's optimizer fuses into its
    # Attention op (the SDPA export is not recognised). Same math as the torch contenders.
    model = load_torch_classifier(model_dir, attn="eager")
    sample = hf_encoder(tokenizer, "pt")(["a first example text", "a second one"], 16)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, tensors, strict=True))).logits

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with quiet(), torch.no_grad():
        torch.onnx.export(
            Logits(model).eval(),  # export restores the wrapper's mode on all submodules
            tuple(sample[n] for n in names),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
        )
        expected = model(**{n: sample[n] for n in names}).logits.numpy()
    diff = None
    try:
        check = ort_session(path, 1)
    except ImportError:
        pass
    else:
        feeds = {n: sample[n].numpy() for n in names}
        diff = float(np.abs(check.run(["logits"], feeds)[0] - expected).max())
        del check
    record = {
        "exporter": "torch.onnx.export(dynamo=False) (TorchScript; the default dynamo exporter "
        "needs onnxscript and its graph is not fused by ORT's BERT optimizer)",
        "opset": OPSET,
        "attention": "eager",
        "inputs": names,
        "dynamic_axes": {n: ["batch", "sequence"] for n in names},
        "fp32_onnx_max_abs_logit_diff_vs_torch": diff,
    }
    return model, names, record


def quantize_onnx(fp32_path: Path, name: str, work: Path, config: Any
                  ) -> tuple[Path, dict[str, Any]]:
    """The int8 model of ``name`` (``ort_int8`` or ``ort_int8_fused``) written to
    ``work/{name}.onnx``, and its settings (graph optimizer, quantization, ops)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    to_quantize, optimizer = fp32_path, "none"
    if name == "ort_int8_fused":
        from onnxruntime.transformers.optimizer import optimize_model

        with quiet():
            optimized = optimize_model(
                str(fp32_path),
                model_type="bert",
                num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size,
                opt_level=0,
            )
        to_quantize = work / "fused.onnx"
        optimized.save_model_to_file(str(to_quantize))
        optimizer = {
            "tool": "onnxruntime.transformers.optimizer.optimize_model",
            "model_type": "bert",
            "opt_level": 0,
            "fused_operators": {
                k: v for k, v in optimized.get_fused_operator_statistics().items() if v
            },
        }
    int8_path = work / f"{name}.onnx"
    with quiet():
        quantize_dynamic(
            str(to_quantize),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=False,
            reduce_range=False,
            # Shape inference cannot type the outputs of ORT's fused contrib ops.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    ops = Counter(node.op_type for node in onnx.load(str(int8_path)).graph.node)
    return int8_path, {
        "graph_optimizer": optimizer,
        "quantization": QUANTIZATION,
        "int8_graph_ops": dict(ops.most_common()),
        "model_bytes": int8_path.stat().st_size,
    }


def inference_options(threads: int) -> dict[str, Any]:
    return {
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "execution_mode": "ORT_SEQUENTIAL",
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "providers": ["CPUExecutionProvider"],
    }


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_predict(engine: Any, encode: Encode) -> Callable[[Inputs, int], Prediction]:
    inputs = [i.name for i in engine.get_inputs()]

    def predict(texts: Inputs, seq_len: int) -> Prediction:
        enc = encode(texts, seq_len)
        logits = engine.run(["logits"], {n: enc[n].astype(np.int64, copy=False) for n in inputs})
        return from_logits(logits[0])

    return predict


def ort_contenders(
    model_dir: Path, tokenizer: Any, work: Path, threads: int, wanted: Sequence[str]
) -> list[Contender]:
    """One ONNX export; ort_int8 quantizes it as is, ort_int8_fused after ORT's BERT fusions
    (the names of ``wanted`` among ``ORT_INT8``), each run with the HF tokenizer."""
    fp32_path = work / "fp32.onnx"
    model, _, export = export_onnx(model_dir, tokenizer, fp32_path)
    out = []
    for name in (n for n in ORT_INT8 if n in wanted):
        int8_path, prepared = quantize_onnx(fp32_path, name, work, model.config)
        settings = {
            "export": export,
            "graph_optimizer": prepared["graph_optimizer"],
            "quantization": prepared["quantization"],
            "int8_graph_ops": prepared["int8_graph_ops"],
            "inference_options": inference_options(threads),
            "tokenizer": "HF fast tokenizer, padding=longest, truncation",
            "model_bytes": prepared["model_bytes"],
        }
        engine = ort_session(int8_path, threads)
        out.append(Contender(name, ort_predict(engine, hf_encoder(tokenizer, "np")), settings))
    return out
