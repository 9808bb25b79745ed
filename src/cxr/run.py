"""Where a run folder keeps what, for readers that must stay light (no Keras): predict on ONNX, serve.

A run folder (`runs/<time>-<name>/`) holds `config.yaml`, `checkpoints/state.json`, `model.keras` and one
folder per evaluation (`eval/`, `eval-2/`, ..., `eval-interrupted/`), each with its own `metrics.json`
and `calibration.json`. Evaluations are ordered by the time they record, not by their names, so that
an `eval-interrupted/` written before a resume and the `eval/` after it compare correctly.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILE", "STATE_FILE", "METRICS_FILE", "CALIBRATION_FILE", "evaluation_dirs", "now",
           "recorded_environment", "run_dir_of", "training_summary"]

CONFIG_FILE = "config.yaml"
STATE_FILE = "checkpoints/state.json"
METRICS_FILE = "metrics.json"
CALIBRATION_FILE = "calibration.json"
_EVALUATION = re.compile(r"eval(-interrupted)?(-\d+)?")


def now() -> str:
    """The local time with its offset (ISO 8601), as the records of a run write it."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def run_dir_of(model_path: str | os.PathLike) -> Path | None:
    """The run folder a model file sits in (it has a config.yaml beside it), or None for a bare file."""
    folder = Path(model_path).parent
    return folder if (folder / CONFIG_FILE).is_file() else None


def recorded_environment(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The software a run was started with, as its config.yaml records it (None for older runs)."""
    import yaml

    try:
        settings = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    return settings.get("environment") if isinstance(settings, dict) else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def training_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """How far the run's training got, and when it ended, from its own records (checkpoints/state.json).

    `ended` is when training last saved its state (its end, or the stop), not a file's modification
    time, which a copy of the run changes. None when the run has no state (no epoch completed).
    """
    state = _read_json(Path(run_dir) / STATE_FILE)
    if state is None:
        return None
    return {**{key: state.get(key) for key in ("status", "epoch", "epochs", "best_epoch")}, "ended": state.get("saved")}


def _recorded_time(folder: Path) -> tuple[int, float, int]:
    """Sort key: the time the evaluation recorded in its metrics.json, else (evaluations written before
    cxr recorded it) the file's modification time; then the folder's number."""
    number = _EVALUATION.fullmatch(folder.name).group(2)
    number = int(number[1:]) if number else 1
    evaluated = (_read_json(folder / METRICS_FILE) or {}).get("evaluated")
    if evaluated:
        try:
            return 1, datetime.fromisoformat(evaluated).timestamp(), number
        except ValueError:
            pass
    return 0, (folder / METRICS_FILE).stat().st_mtime, number


def evaluation_dirs(run_dir: str | os.PathLike, interrupted: bool = True) -> list[Path]:
    """The run's evaluation folders that hold a metrics.json, newest first.

    Args:
        run_dir: the run folder.
        interrupted: include the `eval-interrupted*` folders a stopped training wrote.

    Returns:
        Paths such as `run/eval-2`, `run/eval`, newest first.
    """
    folders = [p for p in Path(run_dir).glob("eval*")
               if (match := _EVALUATION.fullmatch(p.name)) and (interrupted or not match.group(1))
               and (p / METRICS_FILE).is_file()]
    return sorted(folders, key=_recorded_time, reverse=True)
