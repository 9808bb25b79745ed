"""The epoch line and the history row: one record per epoch of what happened and what was decided.

The row holds the metrics, the learning rate used, the epoch time and the controller's decision, which
the controller (`controller.AdaptiveLR`, earlier in the callback list) leaves in the epoch's `logs`;
`checkpoint.RunCheckpoint` saves the rows as history.csv.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras

from cxr.training.controller import DECISION_KEYS, current_learning_rate

__all__ = ["EpochLog", "HISTORY_COLUMNS"]

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds",
                   *DECISION_KEYS, "answer"]


class EpochLog(keras.callbacks.Callback):
    """Build one history row per epoch and print it as one line. Put it after the controller.

    Args:
        epochs: the run's last epoch, for the `epoch n/N` of the line.
        echo: where the line goes.
        rows: the rows of earlier epochs (a resumed run's history).
        carried_seconds: the time already spent in the first epoch (a run resumed inside an epoch).
        carried_learning_rate: the rate that first epoch began with (under a schedule the rate moves every
            step, and the resumed part begins later).
        scheduled: the rate follows a schedule (warm-up, cosine): the line then shows the rates the epoch
            began and ended with (under warm-up, epoch 1 begins at 0).
    """

    def __init__(self, epochs: int, echo: Callable[[str], None] = print, rows: list[dict[str, Any]] | None = None,
                 carried_seconds: float = 0.0, carried_learning_rate: float | None = None, scheduled: bool = False):
        super().__init__()
        self.epochs = epochs
        self.echo = echo
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.started = time.monotonic()
        self.carried_seconds = carried_seconds
        self.carried_learning_rate = carried_learning_rate
        self.learning_rate = 0.0
        self.scheduled = scheduled

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.monotonic() - self.carried_seconds
        self.carried_seconds = 0.0
        rate = current_learning_rate(self.model) if self.carried_learning_rate is None else self.carried_learning_rate
        self.carried_learning_rate = None
        self.learning_rate = float(f"{rate:.6g}")  # float32 noise off

    def elapsed(self) -> float:
        """Seconds since the epoch in flight began."""
        return time.monotonic() - self.started

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        seconds = self.elapsed()
        row = {"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
               "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
               "learning_rate": self.learning_rate, "seconds": round(seconds, 3),
               **{key: logs.get(key) for key in DECISION_KEYS}, "answer": ""}
        self.rows.append(row)
        rate = f"{row['learning_rate']:.2e}"
        if self.scheduled:  # the controller only changes a constant rate, so this is the schedule's own end
            rate += f" to {current_learning_rate(self.model):.2e}"
        line = (f"epoch {epoch + 1}/{self.epochs}  loss {_fmt(row['loss'])}  acc {_fmt(row['accuracy'])}  "
                f"val_loss {_fmt(row['val_loss'])}  val_acc {_fmt(row['val_accuracy'])}  "
                f"lr {rate}  {seconds:.1f}s")
        if row["monitor"]:
            line += f"  | {row['monitor']} {row['improvement_pct']:+.2f}%"
            if row["action"]:
                line += f"  {row['action']}"
        self.echo(line)

    def record_answer(self, epoch: int, note: str) -> None:
        """Put the user's answer at the prompt after epoch `epoch` (0-based) into that epoch's row."""
        if self.rows and self.rows[-1]["epoch"] == epoch + 1:
            self.rows[-1]["answer"] = note


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
