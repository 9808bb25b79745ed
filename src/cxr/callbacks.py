"""Per-epoch bookkeeping for a run: history, the epoch line, and checkpoints.

Keras' CSVLogger and ModelCheckpoint write in place, so a kill mid-write leaves a broken file;
these write atomically (temporary file, then rename) and record the learning rate and epoch time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cxr import files


def current_learning_rate(model: keras.Model) -> float:
    return float(np.asarray(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))


class EpochLog(keras.callbacks.Callback):
    """Append one row per epoch to history.csv and print one line per epoch."""

    def __init__(self, history_path: str | Path, epochs: int, echo: Callable[[str], None] = print):
        super().__init__()
        self.history_path = Path(history_path)
        self.epochs = epochs
        self.echo = echo
        self.rows: list[dict] = []
        self.best_val_loss = math.inf
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        seconds = time.monotonic() - self.started
        row = {
            "epoch": epoch + 1,
            "loss": logs.get("loss"),
            "accuracy": logs.get("accuracy"),
            "val_loss": logs.get("val_loss"),
            "val_accuracy": logs.get("val_accuracy"),
            "learning_rate": float(f"{current_learning_rate(self.model):.6g}"),  # float32 noise off
            "seconds": round(seconds, 3),
        }
        self.rows.append(row)
        files.write_csv(self.history_path, pd.DataFrame(self.rows))
        val_loss = row["val_loss"] if row["val_loss"] is not None else math.inf
        best = val_loss < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, val_loss)
        self.echo(
            f"epoch {epoch + 1}/{self.epochs}  "
            f"loss {_fmt(row['loss'])}  acc {_fmt(row['accuracy'])}  "
            f"val_loss {_fmt(row['val_loss'])}  val_acc {_fmt(row['val_accuracy'])}  "
            f"lr {row['learning_rate']:.2e}  {seconds:.1f}s" + ("  * best" if best else "")
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class Checkpoints(keras.callbacks.Callback):
    """Save `last.keras` after every epoch and `best.keras` when val_loss improves, atomically."""

    def __init__(self, folder: str | Path, monitor: str = "val_loss"):
        super().__init__()
        self.folder = Path(folder)
        self.monitor = monitor
        self.best = math.inf
        self.best_epoch = 0

    @property
    def best_path(self) -> Path:
        return self.folder / "best.keras"

    @property
    def last_path(self) -> Path:
        return self.folder / "last.keras"

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        files.write_with(self.last_path, self.model.save)
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            files.write_with(self.best_path, self.model.save)
