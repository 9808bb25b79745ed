"""Which code made a figure: the versions of cxr, Keras and its backend, read without importing them.

`cxr --version` prints them; every run's `config.yaml` keeps them under `environment:`, and every
`metrics.json` under `software`, with the memory allocator and the CPU (`record`), so that a number
can be traced to the code and the machine that produced it.
Reading package metadata instead of importing Keras keeps `cxr --version` instant and lets an
ONNX-only installation answer too.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from cxr import __version__

__all__ = ["active_backend", "cpu", "record", "software", "version_line"]

# The distributions that provide each backend, in the order they are looked for.
_BACKEND_PACKAGES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",), "torch": ("torch",)}


def _package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def active_backend() -> str:
    """The Keras backend this process uses or would use: Keras' own answer once it is imported, else
    what Keras would read at import (KERAS_BACKEND, then `keras.json`, then TensorFlow).
    """
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    try:
        return json.loads((home / "keras.json").read_text(encoding="utf-8")).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def software() -> dict[str, str | None]:
    """cxr, Python, Keras and the active backend with its version (None where not installed)."""
    backend = active_backend()
    return {"cxr": __version__, "python": platform.python_version(), "keras": _package_version("keras"),
            "backend": backend, "backend_version": _package_version(*_BACKEND_PACKAGES.get(backend, (backend,)))}


# The instruction-set extensions that change which kernels TensorFlow (oneDNN), XLA and ONNX Runtime
# run on a CPU, and so their speed and their float32 summation order.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")


def cpu() -> dict[str, object]:
    """The CPU model, its logical cores and which of CPU_FLAGS it has (Linux: /proc/cpuinfo; elsewhere
    the model name only), so that a figure says which machine it came from; and `onednn_max_isa`, the
    instruction-set cap ONEDNN_MAX_CPU_ISA puts on TensorFlow's oneDNN kernels (None: not capped), since
    a capped run measures the kernels of an older CPU (benchmarks/training.py uses it to stand in for one).
    """
    model, flags = platform.processor() or platform.machine(), None
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    if "model name" in fields:
        model = fields["model name"]
    if "flags" in fields:
        present = set(fields["flags"].split())
        flags = [flag for flag in CPU_FLAGS if flag in present]
    return {"model": model, "cores": os.cpu_count(), "flags": flags,
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or None}


def record() -> dict[str, object]:
    """What a run's config.yaml and every evaluation and benchmark keep: the software, the memory
    allocator the process runs with (see cxr.allocator) and the GLIBC_TUNABLES that change glibc's (None:
    none set; benchmarks/training.py uses them to stand in for a machine whose allocator returns memory at
    every step), the CPU, and the threads (cxr.threads).
    """
    from cxr import threads
    from cxr.allocator import active

    return {**software(), "allocator": active(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES") or None,
            "cpu": cpu(), "threads": threads.record()}


def version_line() -> str:
    """One line for `cxr --version`."""
    versions = software()
    keras = versions["keras"] or "not installed"
    backend = f"{versions['backend']} {versions['backend_version'] or '(not installed)'}"
    return f"cxr {versions['cxr']} (Keras {keras}, backend {backend}, Python {versions['python']})"
