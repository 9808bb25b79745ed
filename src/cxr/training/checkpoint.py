"""What a run saves, after every epoch and inside long ones, so that it can resume exactly.

After epoch n, `checkpoints/` holds `epoch-000n.keras` (model and optimizer), `best-000k.keras`
(the controller's best epoch k; `best-0000.keras` is the initial model) and `state.json`, which
names those two files and holds the controller's state, the prompt's, the random-generator states
of the model's layers and the history.

Inside an epoch, every `every` seconds and when a stop signal ends training, it also saves
`step-000e-00000b.keras`, the model after batch b of epoch e, and records under `partial` in
state.json the batch reached, the random-generator states and the running sums of the epoch's
metrics: a resumed run starts that epoch at batch b + 1 with the same sums, so its history and
weights are those of an uninterrupted run. Model files are written first and old ones deleted last,
each atomically, so whatever moment a process dies at, `state.json` names complete files: at most
the time since the last save is lost. The Run knows where each file goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr import files
from cxr.run import STATE_FORMAT, Run, now
from cxr.training.controller import AdaptiveLR, current_learning_rate
from cxr.training.history import EpochLog

__all__ = ["RunCheckpoint", "WithinEpoch", "seed_states", "set_seed_states"]


def seed_states(model: keras.Model) -> list[list[int]]:
    """The layers' random-generator states (dropout, flip), which Keras' model files leave out."""
    return [keras.ops.convert_to_numpy(v).tolist() for v in model.variables if "seed_generator_state" in v.path]


def set_seed_states(model: keras.Model, states: list[list[int]]) -> None:
    """Put back the random-generator states `seed_states` took (a resumed run draws what it would have)."""
    variables = [v for v in model.variables if "seed_generator_state" in v.path]
    if len(variables) != len(states):
        raise ValueError(f"the model has {len(variables)} random generators, the checkpoint {len(states)}")
    for variable, state in zip(variables, states, strict=True):
        variable.assign(np.asarray(state, dtype=variable.dtype))


def metric_sums(model: keras.Model) -> list[list[float] | float]:
    """The running state of the model's metrics (totals and counts), which `fit` resets every epoch."""
    return [keras.ops.convert_to_numpy(v).tolist() for v in model.metrics_variables]


def add_metric_sums(model: keras.Model, sums: list[list[float] | float]) -> None:
    """Add saved metric states to the current ones.

    The compiled metrics exist only once the first step has been traced (on TensorFlow), so a resumed
    epoch adds the saved states after its first batch. Keras' loss tracker and accuracy keep a total
    and a count, which add: 0 + b is b exactly, so saved + b is the sum an uninterrupted epoch holds.
    """
    variables = model.metrics_variables
    if len(variables) != len(sums):
        raise ValueError(f"the model has {len(variables)} metric variables, the checkpoint {len(sums)}")
    for variable, value in zip(variables, sums, strict=True):
        current = keras.ops.convert_to_numpy(variable)
        variable.assign(np.asarray(value, dtype=current.dtype) + current)


@dataclass(frozen=True)
class WithinEpoch:
    """Saving inside an epoch: how many batches an epoch has, and how often to save (None: only on a stop)."""

    batches: int
    every: float | None = None  # seconds


class RunCheckpoint(keras.callbacks.Callback):
    """Save the model, the best model, history.csv and state.json after every epoch.

    Put it after the controller and the history callback (it saves what they recorded) and before
    the prompt (an unanswered question must risk nothing).

    Args:
        run: the run being written (a process other than 0 of a job gets a scratch Run).
        epochs: the run's last epoch.
        history: the history callback whose rows are saved.
        controller: the controller whose best epoch and state are saved.
        state: the saved state of a resumed run (None for a new run).
        ask_epoch: a new run's first question (the prompt's state is saved from then on).
        global_batch: the batch one optimizer step sees; a resumed run keeps it.
        within_epoch: saving inside an epoch (None: only at epoch ends, as in a job of several processes,
            whose processes could not agree on the moment).
        clock: seconds, for the interval (a test's fake clock).
    """

    def __init__(self, run: Run, epochs: int, history: EpochLog, controller: AdaptiveLR,
                 state: dict[str, Any] | None = None, ask_epoch: int | None = None, global_batch: int | None = None,
                 within_epoch: WithinEpoch | None = None, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.run = run
        self.epochs = epochs
        self.history, self.controller = history, controller
        self.state: dict[str, Any] = dict(state) if state else {
            "format": STATE_FORMAT, "epoch": 0, "model": None, "best_model": None,
            "ask": {"next_ask": ask_epoch or None}}
        if global_batch is not None:
            self.state["global_batch"] = global_batch
        self.within_epoch = within_epoch
        self.clock = clock
        self.last_save = clock()
        self.epoch = self.state["epoch"]  # the epoch in flight, 0-based
        self.first_batch = 0  # where this epoch began: after a resume inside it, the batches already trained
        self.saved_sums: list | None = None  # a resumed epoch's metric states, added after its first batch
        self.batches_done = 0  # batches of the epoch in flight trained so far
        self.saved_epoch, self.saved_partial = self.state["epoch"], self.state.get("partial")  # on disk, for messages

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Until an epoch improves, the initial weights are the controller's best: keep them too, so
        # that model.keras and a resumed run's "restore" mean the same as in an uninterrupted run.
        if self.state["best_model"] is None and self.state["epoch"] == 0:
            name = Run.checkpoint_name("best", 0)
            files.write_with(self.run.checkpoint(name), self.model.save)
            self.state["best_model"] = name
        self.last_save = self.clock()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.first_batch = epoch, 0
        partial = self.state.get("partial")
        if partial and partial["epoch"] == epoch + 1:  # resumed inside this epoch
            self.first_batch, self.saved_sums = partial["batches"], partial["metrics"]
        self.batches_done = self.first_batch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.saved_sums is not None:
            add_metric_sums(self.model, self.saved_sums)
            self.saved_sums = None
        self.batches_done = self.first_batch + batch + 1
        if self.within_epoch and self.within_epoch.every is not None \
                and self.clock() - self.last_save >= self.within_epoch.every:
            self.save_partial()

    def save_partial(self) -> bool:
        """Save the model and state after the last batch trained, inside the epoch in flight.

        Returns:
            Whether anything was saved (not before the epoch's first batch, nor after its last, when the
            epoch's own save is near; not without `within_epoch`; not when a weight is not finite: the
            batch's logged loss comes before its update, so the check on it has not seen them yet, and
            every resume would start from them).
        """
        if not self.within_epoch or not self.first_batch < self.batches_done < self.within_epoch.batches:
            return False
        if not all(np.isfinite(weights).all() for weights in self.model.get_weights()):
            return False
        name = Run.checkpoint_name("step", self.epoch + 1, self.batches_done)
        files.write_with(self.run.checkpoint(name), self.model.save)
        self.state["partial"] = {"epoch": self.epoch + 1, "batches": self.batches_done,
                                 "of": self.within_epoch.batches, "model": name,
                                 "learning_rate": self.history.learning_rate,  # the rate the epoch began with
                                 "seed_states": seed_states(self.model), "metrics": metric_sums(self.model),
                                 "seconds": round(self.history.elapsed(), 3)}
        self.commit()
        self._prune()
        self.last_save = self.clock()
        return True

    @property
    def best_model_path(self) -> Path | None:
        return self.run.checkpoint(self.state["best_model"]) if self.state.get("best_model") else None

    @property
    def last_model_path(self) -> Path | None:
        return self.run.checkpoint(self.state["model"]) if self.state.get("model") else None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done = epoch + 1
        model_name = Run.checkpoint_name("epoch", done)
        files.write_with(self.run.checkpoint(model_name), self.model.save)
        best_name = self.state.get("best_model")
        if self.controller.best_epoch == done:
            best_name = Run.checkpoint_name("best", done)
            files.write_with(self.run.checkpoint(best_name), self.model.save)
        # Taken now, with the model file: after a stop mid-epoch the live model has moved on.
        self.state.update(epoch=done, model=model_name, best_model=best_name, status="running",
                          learning_rate=current_learning_rate(self.model), seed_states=seed_states(self.model))
        self.state.pop("partial", None)
        self.commit()
        self._prune()
        self.batches_done = 0
        self.last_save = self.clock()

    def _prune(self) -> None:
        """Delete the model files state.json no longer names (after it was written)."""
        keep = {self.state.get("model"), self.state.get("best_model"), (self.state.get("partial") or {}).get("model")}
        for old in self.run.checkpoint_files():
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def commit(self, status: str | None = None) -> None:
        """Write history.csv and state.json for the epochs completed so far."""
        if status:
            self.state["status"] = status
        self.state.update(epochs=self.epochs, best_epoch=self.controller.best_epoch,
                          adaptive=self.controller.get_state(), history=self.history.rows, saved=now())
        # history.csv first: a process that dies between the two leaves a history one epoch ahead of the state
        # (a resume rebuilds it from the state), never one behind. Before epoch 1 ends there is no row, and an
        # empty CSV is no table.
        if self.history.rows:
            self.run.write_history(self.history.rows)
        self.run.write_state(self.state)
        self.saved_epoch, self.saved_partial = self.state["epoch"], self.state.get("partial")

    def saved(self) -> str:
        """What state.json on disk lets a resume start from, in words ("epochs 1-3 are saved")."""
        done, partial = self.saved_epoch, self.saved_partial
        epochs = "epoch 1" if done == 1 else f"epochs 1-{done}"
        if partial:
            batches = f"{partial['batches']} of {partial['of']} batches of epoch {partial['epoch']}"
            return f"{epochs} and {batches} are saved" if done else f"{batches} are saved"
        return "no epoch was completed" if done == 0 else f"{epochs} {'is' if done == 1 else 'are'} saved"

    def record_answer(self, epoch: int, note: str, prompt_state: dict[str, Any]) -> None:
        """The prompt's `on_answer`: the answer goes into the epoch's history row, the prompt's new
        state into the saved state, and both to disk.
        """
        self.history.record_answer(epoch, note)
        self.state["ask"] = prompt_state
        self.commit()
