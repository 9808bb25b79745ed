"""The reference system's learning-rate controller, made testable.

`AdaptiveLR` follows the reference Kaggle callback: it watches training accuracy until it reaches
`threshold`, then validation loss; after `patience` epochs without improvement it multiplies the
learning rate by `factor` and (with `dwell`) goes back to the best weights so far; after
`stop_patience` reductions without improvement it stops; when training ends, however it ends,
the model holds the best weights. It keeps its state as a plain dict so that a resumed run
continues exactly where it stopped.

Like Keras' own `ReduceLROnPlateau` (which writes `logs["learning_rate"]`), it tells later callbacks
what it decided through the epoch's `logs`: the DECISION_KEYS below. Callbacks that read only numbers
from `logs` (a progress bar) must come before it.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

__all__ = ["AdaptiveLR", "DECISION_KEYS", "current_learning_rate"]

# What the controller adds to an epoch's logs: read by the history callback for the epoch line and history.csv.
DECISION_KEYS = ("monitor", "improvement_pct", "next_learning_rate", "weights_restored", "action")


def current_learning_rate(model: Any) -> float:
    """The optimizer's learning rate as a Python float."""
    return float(np.asarray(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))


def _short(value: float) -> float:
    """A float32 learning rate without its noise (0.0005000000237 -> 0.0005)."""
    return float(f"{value:.6g}")


class AdaptiveLR(keras.callbacks.Callback):
    """Adapt the learning rate as the reference callback did; keep and finally set the best weights.

    After each epoch it adds what it decided to the epoch's `logs` (DECISION_KEYS).

    Args:
        threshold: watch training accuracy until it reaches this, then validation loss.
        patience: epochs without improvement before the rate drops.
        factor: the rate is multiplied by this on a drop.
        stop_patience: stop after this many drops without an improvement in between.
        dwell: on a drop, go back to the best weights so far.
        restore_at_end: set the best weights when a fit ends. A caller that trains in several fits (a run
            resumed inside an epoch) turns it off and calls `restore_best` once, at the very end.
        adapt: change the rate and stop (the reference's way). False, under a learning-rate schedule, only
            watches and keeps the best weights, so training runs its whole schedule and ends on its best epoch.
    """

    def __init__(self, threshold: float = 0.9, patience: int = 1, factor: float = 0.5,
                 stop_patience: int = 3, dwell: bool = True, restore_at_end: bool = True, adapt: bool = True):
        super().__init__()
        self.adapt = adapt
        self.restore_at_end = restore_at_end
        self.threshold = threshold
        self.patience = patience
        self.factor = factor
        self.stop_patience = stop_patience
        self.dwell = dwell
        self.highest_accuracy = 0.0
        self.lowest_val_loss = math.inf
        self.wait = 0  # epochs without improvement since the last improvement or reduction
        self.reductions = 0  # learning-rate reductions since the last improvement
        self.best_epoch = 0
        self.monitor = ""
        self.best_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.best_weights is None:  # as in the reference: until an epoch improves, the start is best
            self.best_weights = self.model.get_weights()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {} if logs is None else logs
        accuracy = _number(logs.get("accuracy"), 0.0)
        val_loss = _number(logs.get("val_loss"), math.inf)
        learning_rate = current_learning_rate(self.model)
        previous_monitor = self.monitor
        improvement, improved = self._judge(accuracy, val_loss)
        actions = []
        if previous_monitor and previous_monitor != self.monitor:
            change = "reached" if self.monitor == "val_loss" else "fell below"
            actions.append(f"now monitoring {self.monitor} (accuracy {change} {self.threshold:g})")
        new_learning_rate, restored = learning_rate, False
        if improved:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch + 1
            self.wait = self.reductions = 0
            actions.append("best")
        else:
            self.wait += 1
            if self.adapt and self.wait >= self.patience:
                new_learning_rate, restored = self._reduce(learning_rate, val_loss, actions)
        if self.reductions >= self.stop_patience:
            self.model.stop_training = True
            actions.append(f"stop: {self.reductions} learning-rate reduction(s) without improvement")
        logs.update(monitor=self.monitor, improvement_pct=round(improvement, 4),
                    next_learning_rate=_short(new_learning_rate), weights_restored=restored,
                    action="; ".join(actions))

    def _judge(self, accuracy: float, val_loss: float) -> tuple[float, bool]:
        """Pick the monitored metric, and return its improvement in percent and whether it improved
        (updating the best values seen).
        """
        if accuracy < self.threshold:
            self.monitor = "accuracy"
            highest = self.highest_accuracy
            improvement = (accuracy - highest) * 100 / highest if highest else 0.0
            improved = accuracy > self.highest_accuracy
            if improved:
                self.highest_accuracy = accuracy
                self.lowest_val_loss = min(self.lowest_val_loss, val_loss)
            return improvement, improved
        self.monitor = "val_loss"
        finite = math.isfinite(self.lowest_val_loss) and self.lowest_val_loss != 0
        improvement = (self.lowest_val_loss - val_loss) * 100 / self.lowest_val_loss if finite else 0.0
        improved = val_loss < self.lowest_val_loss
        if improved:
            self.lowest_val_loss = val_loss
        self.highest_accuracy = max(self.highest_accuracy, accuracy)
        return improvement, improved

    def _reduce(self, learning_rate: float, val_loss: float, actions: list[str]) -> tuple[float, bool]:
        """Multiply the rate by `factor` and, with dwell, go back to the best weights; say so in `actions`.
        Returns the new rate and whether weights were restored.
        """
        new_learning_rate = _short(learning_rate * self.factor)
        self.model.optimizer.learning_rate = new_learning_rate
        self.wait = 0
        self.reductions += 1
        actions.append(f"lr {learning_rate:.2e} -> {new_learning_rate:.2e}")
        if self.dwell and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            actions.append(f"restored epoch {self.best_epoch} weights" if self.best_epoch
                           else "restored the initial weights")
            return new_learning_rate, True
        if not self.dwell:
            self.lowest_val_loss = min(self.lowest_val_loss, val_loss)
        return new_learning_rate, False

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_at_end:
            self.restore_best()

    def restore_best(self) -> None:
        """Give the model the best weights so far."""
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def get_state(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready values (the best weights are saved as a model)."""
        return {"highest_accuracy": self.highest_accuracy,
                "lowest_val_loss": None if math.isinf(self.lowest_val_loss) else self.lowest_val_loss,
                "wait": self.wait, "reductions": self.reductions, "best_epoch": self.best_epoch,
                "monitor": self.monitor}

    def set_state(self, state: dict[str, Any], best_weights: list[np.ndarray] | None) -> None:
        self.highest_accuracy = float(state["highest_accuracy"])
        lowest = state["lowest_val_loss"]
        self.lowest_val_loss = math.inf if lowest is None else float(lowest)
        self.wait, self.reductions = int(state["wait"]), int(state["reductions"])
        self.best_epoch, self.monitor = int(state["best_epoch"]), str(state["monitor"])
        self.best_weights = best_weights


def _number(value: Any, missing: float) -> float:
    """A metric as a float; missing values count as `missing`, NaN as never an improvement."""
    if value is None:
        return missing
    value = float(value)
    return missing if math.isnan(value) else value
