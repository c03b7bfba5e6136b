"""A safetensors reader in numpy alone (F32 and I8, the bundle's dtypes), so the reference
forward runs where only the runtime is installed."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from tinyfast._io import read_limited
from tinyfast.errors import ConfigError

_DTYPES = {"F32": np.dtype("<f4"), "I8": np.dtype("i1")}
# Far above any BERT-family classifier the runtime is meant for.
WEIGHTS_LIMIT = 16 << 30


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, tuple[str, np.ndarray]]:
    """Parse a safetensors file (F32 and I8 only): name -> (dtype name, array).

    The format is an 8-byte little-endian header length, a JSON header, then raw little-endian
    data; parsing it here keeps the reference free of any dependency beyond numpy.
    """
    path = Path(path)
    where = str(path)
    data = read_limited(path, WEIGHTS_LIMIT)
    if len(data) < 8:
        raise ConfigError(f"{where}: truncated (no safetensors header)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise ConfigError(f"{where}: header length {header_len} exceeds the file size")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: the safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{where}: the safetensors header is not a JSON object")
    body = memoryview(data)[8 + header_len :]
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ConfigError(f"{where}: tensor '{name}': header entry is not an object")
        dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype_name not in _DTYPES:
            raise ConfigError(f"{where}: tensor '{name}' has dtype {dtype_name!r}; bundles hold "
                              "F32 and I8 only")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ConfigError(f"{where}: tensor '{name}' has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= len(body)):
            raise ConfigError(f"{where}: tensor '{name}' has data offsets {offsets!r} outside the "
                              f"file's {len(body)} data bytes")
        dtype = _DTYPES[dtype_name]
        count = math.prod(shape)
        if offsets[1] - offsets[0] != count * dtype.itemsize:
            raise ConfigError(f"{where}: tensor '{name}' has {offsets[1] - offsets[0]} bytes for "
                              f"shape {shape} of {dtype_name}")
        array = np.frombuffer(body[offsets[0] : offsets[1]], dtype=dtype, count=count)
        tensors[name] = (dtype_name, array.reshape(shape).copy())
    return tensors

