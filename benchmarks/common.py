"""What every benchmark records: the machine and versions, and a JSON file that never overwrites."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from cxr import files
from cxr.environment import record


def machine_info(**versions: str) -> dict[str, Any]:
    """The machine a figure comes from: cores, platform, Python, the CPU model and the instruction-set
    flags that decide which kernels run (AVX-512, AVX512-BF16, AMX), and the given versions."""
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
            **record(), **versions}


def save_result(out_dir: str | os.PathLike, name: str, result: dict[str, Any]) -> Path:
    """Write `<out_dir>/<name>-<time>.json` atomically and say where."""
    path = files.write_json(Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json", result)
    print(f"written to {path}")
    return path
