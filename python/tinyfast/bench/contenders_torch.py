"""PyTorch contenders: the Hugging Face classifier in fp32 (eval mode under
``torch.inference_mode``), and the same after ``torch.ao.quantization.quantize_dynamic`` on every
``nn.Linear`` (int8 weights per tensor, activations quantized per call). torch and transformers
are imported inside the functions."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinyfast.bench.contender import Contender, Inputs, Prediction, from_logits
from tinyfast.bench.encoding import hf_encoder

__all__ = [
    "TOKENIZER",
    "load_torch_classifier",
    "quantize_dynamic_int8",
    "torch_contender",
    "torch_contenders",
    "torch_predict",
]

TOKENIZER = "HF fast tokenizer, padding=longest, truncation"
MODE = "eval + torch.inference_mode"
QUANTIZATION = ("torch.ao.quantization.quantize_dynamic({nn.Linear}, dtype=torch.qint8): int8 "
                "weights per tensor, activations quantized per call")


def load_torch_classifier(model_dir: str | os.PathLike[str], attn: str | None = None) -> Any:
    """The checkpoint's sequence classifier in eval mode, from local files, never running code
    from the checkpoint (``attn``: transformers' attention implementation, default its own)."""
    from transformers import AutoModelForSequenceClassification

    from tinyfast.models import resolve_model_path

    extra = {"attn_implementation": attn} if attn else {}
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(model_dir), local_files_only=True, trust_remote_code=False, **extra
    )
    return model.eval()


def quantize_dynamic_int8(model: Any) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False
        )
    return quantized.eval()


def torch_predict(model: Any, encode: Callable[[Inputs, int], Any]
                  ) -> Callable[[Inputs, int], Prediction]:
    """``predict(inputs, seq_len)``: tokenize (torch tensors), forward, softmax to numpy."""
    import torch

    def predict(inputs: Inputs, seq_len: int) -> Prediction:
        enc = encode(inputs, seq_len)
        with torch.inference_mode():
            logits = model(**enc).logits
        return from_logits(logits.float().numpy())

    return predict


def _settings(model: Any, quantized: bool) -> dict[str, Any]:
    import torch

    common = {"attention": getattr(model.config, "_attn_implementation", None),
              "tokenizer": TOKENIZER}
    if not quantized:
        return {**common, "dtype": "float32", "mode": MODE}
    return {**common, "quantization": QUANTIZATION,
            "quantized_engine": torch.backends.quantized.engine, "mode": MODE}


def torch_contenders(model_dir: Path, tokenizer: Any) -> list[Contender]:
    """torch_fp32 and torch_int8_dynamic, from the same loaded model."""
    model = load_torch_classifier(model_dir)
    quantized = quantize_dynamic_int8(model)
    encode = hf_encoder(tokenizer, "pt")
    return [
        Contender("torch_fp32", torch_predict(model, encode), _settings(model, False)),
        Contender("torch_int8_dynamic", torch_predict(quantized, encode), _settings(model, True)),
    ]


def torch_contender(name: str, model_dir: str | os.PathLike[str], quantize: bool,
                    save_to: Path | None = None) -> Contender:
    """One torch contender with its own tokenizer; ``save_to``: write the int8 model's state
    dict there (``torch.save``), to know its size on disk (``settings["model_bytes"]``)."""
    import torch

    from tinyfast.models import load_tokenizer

    model = load_torch_classifier(model_dir)
    settings = _settings(model, quantize)
    if quantize:
        model = quantize_dynamic_int8(model)
        if save_to is not None:
            torch.save(model.state_dict(), save_to)
            settings["model_bytes"] = save_to.stat().st_size
            settings["model_file"] = save_to.name
    encode = hf_encoder(load_tokenizer(model_dir), "pt")
    return Contender(name, torch_predict(model, encode), settings)
