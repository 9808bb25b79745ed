"""What every benchmark records: the machine and versions, and a JSON file that never overwrites."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from cxr import files


def machine_info(**versions: str) -> dict[str, Any]:
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0], **versions}


def save_result(out_dir: str | os.PathLike, name: str, result: dict[str, Any]) -> Path:
    """Write `<out_dir>/<name>-<time>.json` atomically and say where."""
    path = files.write_json(Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json", result)
    print(f"written to {path}")
    return path
