"""The peer-comparison harness: tinyfast's runtime against PyTorch, ONNX Runtime and OpenVINO on
the same inputs, tokenization included, same threads.

One idea a module: ``contender`` (what a contender is), ``workload`` (exact-length texts,
BATCHxSEQ), ``encoding`` (tokenizing for the peers), ``contenders_torch``, ``contenders_ort``,
``contenders_openvino``, ``contenders_tinyfast`` (building each engine), ``timing`` (round robin,
latency statistics), ``machine`` (CPU, versions, threads, memory), ``report`` (agreement,
ratios, the table), ``command`` (``tinyfast bench``) and ``worker`` (one contender in a fresh
process). Importing any of them needs numpy alone; the engines are imported when a contender is
built. ``benches/runtime_speed.py`` and ``benches/early_exit.py`` use the same pieces.
"""

from tinyfast.bench.contender import Contender, Prediction, Skipped
from tinyfast.bench.workload import Workload

__all__ = ["Contender", "Prediction", "Skipped", "Workload"]
