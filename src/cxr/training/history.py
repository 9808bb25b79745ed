"""The epoch line and the history row: one record per epoch of what happened and what was decided.

The row holds the metrics, the learning rate used, the epoch time and the controller's decision
(see `adaptive.AdaptiveLR`); `checkpoint.RunCheckpoint` writes the rows to history.csv.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras

from cxr.training.controller import AdaptiveLR, current_learning_rate

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds",
                   "monitor", "improvement_pct", "next_learning_rate", "weights_restored", "action", "answer"]


class EpochLog(keras.callbacks.Callback):
    """Build one history row per epoch and print it as one line. Put it after `AdaptiveLR`."""

    def __init__(self, epochs: int, echo: Callable[[str], None] = print, adaptive: AdaptiveLR | None = None,
                 rows: list[dict[str, Any]] | None = None):
        super().__init__()
        self.epochs = epochs
        self.echo = echo
        self.adaptive = adaptive
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.started = 0.0
        self.learning_rate = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.monotonic()
        self.learning_rate = float(f"{current_learning_rate(self.model):.6g}")  # float32 noise off

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        seconds = time.monotonic() - self.started
        row = {"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
               "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
               "learning_rate": self.learning_rate, "seconds": round(seconds, 3)}
        decision = self.adaptive.decision if self.adaptive else {}
        row.update({key: decision.get(key) for key in HISTORY_COLUMNS if key not in row})
        row["answer"] = ""
        self.rows.append(row)
        line = (f"epoch {epoch + 1}/{self.epochs}  loss {_fmt(row['loss'])}  acc {_fmt(row['accuracy'])}  "
                f"val_loss {_fmt(row['val_loss'])}  val_acc {_fmt(row['val_accuracy'])}  "
                f"lr {row['learning_rate']:.2e}  {seconds:.1f}s")
        if decision:
            line += f"  | {decision['monitor']} {decision['improvement_pct']:+.2f}%"
            if decision["action"]:
                line += f"  {decision['action']}"
        self.echo(line)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
