"""A run folder, and the one place that knows its layout.

Every other module asks a `Run` for a path or a record instead of spelling a file name, so the layout
below can change here alone. It imports no Keras: predicting on ONNX and serving read runs too.

```
runs/<YYYYmmdd-HHMMSS>-<name>/
  config.yaml              the settings (a Config) and, under `environment:`, the software that made it
  split/                   train/val/test.csv ... (the split folder's own layout: cxr.data.split)
  history.csv              one row per epoch
  checkpoints/             epoch-NNNN.keras, best-NNNN.keras, step-NNNN-BBBBBB.keras (inside an epoch)
                           and state.json (what --resume needs)
  model.keras              the best epoch's model; model.onnx after `cxr export`
  eval/, eval-2/, ...      one folder per evaluation (EvalDir); eval-interrupted/ after a stop
  external-<name>/         an evaluation on a labelled folder from elsewhere (numbered likewise)
  .lock, .lock.pid         the lock of the process writing the run, and its pid
```
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cxr import files
from cxr.errors import UserError

__all__ = ["Run", "EvalDir", "RunBusyError", "STATE_FORMAT", "now"]

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
INT8_SUFFIX = ".int8.onnx"  # model.int8.onnx: the INT8 quantisation of model.keras (cxr export --quantize int8)
SPLIT_DIR = "split"
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
OWNER_FILE = ".lock.pid"  # beside the lock: Windows forbids reading a locked file
LEGACY_CALIBRATION = "calibration.json"  # runs evaluated before each evaluation kept its own
STATE_FORMAT = 1
EVAL_KINDS = ("eval", "eval-interrupted")
EXTERNAL_PREFIX = "external-"
_EVALUATION = re.compile(r"(eval(?:-interrupted)?)(?:-(\d+))?")
_NUMBER = re.compile(r"-(\d+)$")


class RunBusyError(UserError):
    """Another live process is writing the run."""


def now() -> str:
    """The local time with its offset (ISO 8601), as the records of a run write it."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def _made_for(record: dict[str, Any], digest: str | None) -> bool:
    """Whether an evaluation's record (temperature, operating points) belongs to the model with this SHA-256:
    records from before cxr kept the digest, or with no model file to compare, are taken as they are.
    """
    return not digest or not record.get("model_sha256") or record["model_sha256"] == digest


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class EvalDir:
    """One evaluation's folder and the files an evaluation writes into it."""

    path: Path

    FIGURES = {"training_curves": "training_curves.png", "confusion_matrix": "confusion_matrix.png",
               "roc_pr": "roc_pr.png", "reliability": "reliability.png", "gradcam": "gradcam_test.png"}

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def calibration(self) -> Path:
        return self.path / "calibration.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def operating_points(self) -> Path:
        return self.path / "operating_points.json"

    @property
    def is_external(self) -> bool:
        return self.name.startswith(EXTERNAL_PREFIX)

    def predictions(self, split: str) -> Path:
        return self.path / f"predictions_{split}.csv"

    def table(self, name: str) -> Path:
        """A CSV table: confusion_matrix, classification_report, metrics_per_class, metrics_per_source,
        reliability, operating_points, overlap (external evaluations).
        """
        return self.path / f"{name}.csv"

    @property
    def classification_report_text(self) -> Path:
        return self.path / "classification_report.txt"

    def figure(self, name: str) -> Path:
        """A PNG figure, by its key in FIGURES."""
        return self.path / self.FIGURES[name]

    def read_metrics(self) -> dict[str, Any] | None:
        return _read_json(self.metrics)

    def recorded_time(self) -> tuple[int, float, int]:
        """Sort key: the time the evaluation recorded in its metrics.json, else (evaluations written
        before cxr recorded it) the file's modification time; then the folder's number.
        """
        number = match.group(1) if (match := _NUMBER.search(self.name)) else None  # a tie-breaker only
        evaluated = (self.read_metrics() or {}).get("evaluated")
        if evaluated:
            try:
                return 1, datetime.fromisoformat(evaluated).timestamp(), int(number or 1)
            except ValueError:
                pass
        return 0, self.metrics.stat().st_mtime, int(number or 1)


class Run:
    """A run folder: its paths, its records (config, state, split, history, evaluations) and its lock.

    Args:
        path: the run folder (`runs/<time>-<name>`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, runs_dir: str | os.PathLike, name: str) -> Run:
        """A new, empty run folder `runs_dir/<YYYYmmdd-HHMMSS>-<name>`; an existing folder is never reused.

        Args:
            runs_dir: where run folders go (made if missing).
            name: the run's name; characters other than letters, digits, `.`, `_` and `-` become `-`.

        Returns:
            The new Run.
        """
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
        root = Path(runs_dir)
        root.mkdir(parents=True, exist_ok=True)
        return cls(files.new_numbered_dir(root / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"))

    @classmethod
    def containing(cls, model_path: str | os.PathLike) -> Run | None:
        """The run a model file sits in (it has a config.yaml beside it), or None for a bare file."""
        folder = Path(model_path).parent
        return cls(folder) if (folder / CONFIG_FILE).is_file() else None

    @staticmethod
    def model_of(model: str | os.PathLike) -> Path:
        """The model file a command was given: a run folder means its model.keras."""
        path = Path(model)
        return path / MODEL_FILE if path.is_dir() else path

    @staticmethod
    def keras_of(model_path: str | os.PathLike) -> Path:
        """The .keras file a model file was made from: model.onnx and model.int8.onnx -> model.keras."""
        path = Path(model_path)
        return path.with_name(path.name.removesuffix(INT8_SUFFIX)).with_suffix(".keras")

    @staticmethod
    def int8_of(model_path: str | os.PathLike) -> Path:
        """Where the INT8 file of a model lives: model.keras, model.onnx -> model.int8.onnx."""
        keras_path = Run.keras_of(model_path)
        return keras_path.with_name(keras_path.stem + INT8_SUFFIX)

    # Paths ----------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def split_dir(self) -> Path:
        return self.path / SPLIT_DIR

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def state_path(self) -> Path:
        return self.checkpoints / STATE_FILE

    def checkpoint(self, name: str) -> Path:
        """A file in checkpoints/, by the name state.json gives it."""
        return self.checkpoints / name

    @staticmethod
    def checkpoint_name(kind: str, epoch: int, batch: int | None = None) -> str:
        """`epoch-NNNN.keras` (the model after epoch N), `best-NNNN.keras` (the controller's best) or
        `step-NNNN-BBBBBB.keras` (the model after batch B of epoch N, saved inside the epoch).
        """
        if kind not in ("epoch", "best", "step") or (kind == "step") != (batch is not None):
            raise ValueError(f"kind must be 'epoch' or 'best', or 'step' with a batch; got {kind!r}, {batch!r}")
        return f"{kind}-{epoch:04d}-{batch:06d}.keras" if kind == "step" else f"{kind}-{epoch:04d}.keras"

    def checkpoint_files(self) -> list[Path]:
        """Every model file in checkpoints/ (for pruning the ones state.json no longer names)."""
        return sorted(path for kind in ("epoch", "best", "step") for path in self.checkpoints.glob(f"{kind}-*.keras"))

    # Records ----------------------------------------------------------------------------------------
    def config(self):
        """The run's settings as a Config (the recorded `environment` left out).

        Raises:
            FileNotFoundError: the folder is not a run (no config.yaml).
            ConfigError: config.yaml cannot be read or holds an unknown setting.
        """
        from cxr.config import Config, load_yaml

        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder: {CONFIG_FILE} is missing")
        return Config(**load_yaml(self.config_path))

    def environment(self) -> dict[str, Any] | None:
        """The software the run was started with, as config.yaml records it (None for older runs)."""
        import yaml

        from cxr.config import ENVIRONMENT_KEY

        try:
            settings = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return None
        return settings.get(ENVIRONMENT_KEY) if isinstance(settings, dict) else None

    def write_config(self, config, environment: dict[str, Any] | None) -> Path:
        """Write config.yaml: the settings and the record of the software that made the run."""
        return files.write_text(self.config_path, config.to_yaml(environment=environment))

    def split(self):
        """The run's train/val/test split (cxr.data.split.Split)."""
        from cxr.data.split import read_split

        return read_split(self.split_dir)

    def write_split(self, split) -> Path:
        from cxr.data.split import write_split

        return write_split(split, self.split_dir)

    def history(self):
        """history.csv as a DataFrame, or None before the first epoch."""
        import pandas as pd

        try:
            return pd.read_csv(self.history_path) if self.history_path.is_file() else None
        except pd.errors.EmptyDataError:  # written empty by a save inside epoch 1 (cxr before 2026-12-04)
            return None

    def write_history(self, rows: list[dict[str, Any]]) -> Path:
        import pandas as pd

        return files.write_csv(self.history_path, pd.DataFrame(rows))

    def state(self) -> dict[str, Any] | None:
        """The saved training state (checkpoints/state.json), or None before anything was saved.

        Raises:
            UserError: the file cannot be read, has another format, or names a missing model file.
        """
        path = self.state_path
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"{path} cannot be read: {error}") from None
        if state.get("format") != STATE_FORMAT:
            raise UserError(f"{path} has format {state.get('format')!r}; this version reads format {STATE_FORMAT}")
        named = [state.get("model"), state.get("best_model"), (state.get("partial") or {}).get("model")]
        for name in filter(None, named):
            if not self.checkpoint(name).is_file():
                raise UserError(f"{path} names {name}, which is missing from {self.checkpoints}")
        return state

    def write_state(self, state: dict[str, Any]) -> Path:
        return files.write_json(self.state_path, state)

    def training_summary(self) -> dict[str, Any] | None:
        """How far training got and when it ended, from the run's own state (not a file's modification
        time, which a copy of the run changes); None when no epoch was completed.
        """
        state = _read_json(self.state_path)
        if state is None:
            return None
        return {**{key: state.get(key) for key in ("status", "epoch", "epochs", "best_epoch")},
                "ended": state.get("saved")}

    # Evaluations ----------------------------------------------------------------------------------
    def new_eval_dir(self, kind: str = "eval") -> EvalDir:
        """A new evaluation folder: `eval/`, then `eval-2/`, ... (`eval-interrupted/` likewise)."""
        if kind not in EVAL_KINDS:
            raise ValueError(f"kind must be one of {', '.join(EVAL_KINDS)}, got {kind!r}")
        return EvalDir(files.new_numbered_dir(self.path / kind))

    def evaluations(self, interrupted: bool = True) -> list[EvalDir]:
        """The complete evaluations (with a metrics.json), newest first by the time each recorded.

        Args:
            interrupted: include the `eval-interrupted*` folders a stopped training wrote.
        """
        found = [EvalDir(p) for p in self.path.glob("eval*")
                 if (match := _EVALUATION.fullmatch(p.name)) and (interrupted or match.group(1) == "eval")
                 and (p / "metrics.json").is_file()]
        return sorted(found, key=EvalDir.recorded_time, reverse=True)

    def new_external_dir(self, name: str) -> EvalDir:
        """A new folder for an external evaluation: `external-<name>/`, then `external-<name>-2/`, ...

        Args:
            name: what the external data is called (letters, digits, `.`, `_`, `-`; others become `-`).
        """
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "data"
        return EvalDir(files.new_numbered_dir(self.path / f"{EXTERNAL_PREFIX}{safe}"))

    def external_evaluations(self) -> list[EvalDir]:
        """The complete external evaluations (with a metrics.json), newest first."""
        found = [EvalDir(p) for p in self.path.glob(f"{EXTERNAL_PREFIX}*") if (p / "metrics.json").is_file()]
        return sorted(found, key=EvalDir.recorded_time, reverse=True)

    def latest_eval(self) -> EvalDir | None:
        """The newest complete evaluation of the finished model (not one of an interrupted training)."""
        found = self.evaluations(interrupted=False)
        return found[0] if found else None

    def evaluation_of(self, model_path: str | os.PathLike | None = None, external: bool = False) -> list[EvalDir]:
        """The complete evaluations of this very model file (matched by SHA-256 as for temperature()),
        newest first: the run's own (not an interrupted training's), or with `external` its external ones.
        """
        digest = self._model_digest(model_path)
        found = self.external_evaluations() if external else self.evaluations(interrupted=False)
        return [evaluation for evaluation in found
                if _made_for((evaluation.read_metrics() or {}).get("calibration") or {}, digest)]

    def has_final_eval(self) -> bool:
        """Whether training's own final evaluation (eval/) was written."""
        return (self.path / "eval").is_dir()

    def temperature(self, model_path: str | os.PathLike | None = None) -> tuple[float, Path] | None:
        """The temperature the newest evaluation fitted for this very model file, and its file.

        Args:
            model_path: the model file (default model.keras); the .keras file's SHA-256 must match the
                one the evaluation recorded (a run trained further needs a new evaluation).

        Returns:
            (temperature, calibration.json path), or None when no evaluation fitted one for this model.
        """
        digest = self._model_digest(model_path)
        for path in self.calibration_files():
            record = _read_json(path)
            if record is not None and "temperature" in record and _made_for(record, digest):
                return float(record["temperature"]), path
        return None

    def operating_points(self, model_path: str | os.PathLike | None = None) -> tuple[dict[str, Any], Path] | None:
        """The operating points (per-class thresholds chosen on val) of the newest evaluation of this very
        model file, and their file; None when no evaluation chose them for it.

        Args:
            model_path: the model file (default model.keras); matched by SHA-256 as for temperature().
        """
        digest = self._model_digest(model_path)
        for evaluation in self.evaluations():
            points = _read_json(evaluation.operating_points)
            if points is not None and _made_for(points, digest):
                return points, evaluation.operating_points
        return None

    def _model_digest(self, model_path: str | os.PathLike | None) -> str | None:
        """The SHA-256 of the .keras file a record must belong to (None when there is none to check)."""
        keras_path = self.keras_of(model_path or self.model_path)
        return files.sha256(keras_path) if keras_path.is_file() else None

    def calibration_files(self) -> list[Path]:
        """Every calibration.json of the run, newest evaluation first, the older run-level file last."""
        paths = [evaluation.calibration for evaluation in self.evaluations()] + [self.path / LEGACY_CALIBRATION]
        return [path for path in paths if path.is_file()]

    # A live run -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run; a second live process is refused with its pid.

        The lock is the operating system's (flock on POSIX, LockFileEx on Windows, through `filelock`),
        so it is dropped when the process dies, however it dies: a killed run leaves no stale lock.

        Raises:
            RunBusyError: another live process holds it.
        """
        import filelock

        lock = filelock.FileLock(self.path / LOCK_FILE, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            try:
                pid = (self.path / OWNER_FILE).read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                pid = "unknown"
            raise RunBusyError(f"{self.path} is being written by a live process (pid {pid}); "
                               "wait for it to finish or stop it first") from None
        try:
            files.write_text(self.path / OWNER_FILE, str(os.getpid()))
            yield
        finally:
            lock.release()

    def remove_temporaries(self, echo: Callable[[str], None] = print) -> int:
        """Delete the partly written files a killed process left (see files.atomic_path)."""
        return files.remove_temporaries(self.path, echo)
