"""The machine a benchmark ran on (CPU, flags, cores, load, package versions), the thread
settings every contender shares, and the memory of the current process."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["current_rss_mb", "machine_info", "peak_rss_mb", "set_threads", "versions"]

PACKAGES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "openvino", "nncf",
            "numpy")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (from the package metadata: nothing is imported), None if absent."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(threads: int) -> dict[str, Any]:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first core's values
    cpu = fields.get("model name") or platform.processor() or "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_int8")
    flags = [f for f in fields.get("flags", "").split() if f in wanted]
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "threads_used": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cores_available"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = list(os.getloadavg())
    import tinyfast

    found = versions()
    found["tinyfast"] = getattr(tinyfast, "__version__", None)
    info["versions"] = found
    if hasattr(tinyfast, "cpu_capabilities"):
        info["tinyfast_cpu_capabilities"] = tinyfast.cpu_capabilities()
    return info


def set_threads(threads: int) -> dict[str, Any]:
    """torch's intra-op threads (inter-op 1 where still settable) and the tokenizers' rayon pool
    (RAYON_NUM_THREADS, unless already set); what each contender was given."""
    import torch

    torch.set_num_threads(threads)
    interop: Any = "unchanged (already set in this process)"
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
        interop = 1
    # The tokenizers library (HF tokenizer and the runtime's) parallelises batches with rayon.
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
    return {
        "torch_num_threads": torch.get_num_threads(),
        "torch_interop_threads": interop,
        "RAYON_NUM_THREADS": os.environ["RAYON_NUM_THREADS"],
        "ort_intra_op_num_threads": threads,
        "tinyfast_threads": threads,
    }


def peak_rss_mb() -> float | None:
    """The high-water mark of this process's resident memory, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, which belongs to the process's own address space.
    (``ru_maxrss`` is not used there: a process started by fork and exec keeps the mark of the
    parent it was forked from, a large one when that parent had torch loaded.) Elsewhere
    ``ru_maxrss``."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if platform.system() == "Darwin" else peak / 1024  # bytes / KiB


def current_rss_mb() -> float | None:
    """This process's resident memory now (Linux ``/proc/self/statm``), in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
