"""What a run saves after every epoch so that it can resume exactly.

After epoch n, `checkpoints/` holds `epoch-000n.keras` (model and optimizer), `best-000k.keras`
(the controller's best epoch k; `best-0000.keras` is the initial model) and `state.json`, which
names those two files and holds the controller's state, the prompt's, the random-generator states
of the model's layers and the history. Model files are written first and old ones deleted last,
each atomically, so whatever moment a process dies at, `state.json` names a complete pair: at most
the epoch in flight is lost. The Run knows where each file goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr import files
from cxr.run import STATE_FORMAT, Run, now
from cxr.training.controller import AdaptiveLR, current_learning_rate
from cxr.training.history import EpochLog

__all__ = ["RunCheckpoint", "seed_states", "set_seed_states"]


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
    """

    def __init__(self, run: Run, epochs: int, history: EpochLog, controller: AdaptiveLR,
                 state: dict[str, Any] | None = None, ask_epoch: int | None = None, global_batch: int | None = None):
        super().__init__()
        self.run = run
        self.epochs = epochs
        self.history, self.controller = history, controller
        self.state: dict[str, Any] = dict(state) if state else {
            "format": STATE_FORMAT, "epoch": 0, "model": None, "best_model": None,
            "ask": {"next_ask": ask_epoch or None}}
        if global_batch is not None:
            self.state["global_batch"] = global_batch
        self.saved_epoch = self.state["epoch"]  # what state.json on disk says, for messages

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Until an epoch improves, the initial weights are the controller's best: keep them too, so
        # that model.keras and a resumed run's "restore" mean the same as in an uninterrupted run.
        if self.state["best_model"] is None and self.state["epoch"] == 0:
            name = Run.checkpoint_name("best", 0)
            files.write_with(self.run.checkpoint(name), self.model.save)
            self.state["best_model"] = name

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
        self.commit()
        keep = {model_name, best_name}
        for old in self.run.checkpoint_files():
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def commit(self, status: str | None = None) -> None:
        """Write history.csv and state.json for the epochs completed so far."""
        if status:
            self.state["status"] = status
        self.state.update(epochs=self.epochs, best_epoch=self.controller.best_epoch,
                          adaptive=self.controller.get_state(), history=self.history.rows, saved=now())
        self.run.write_history(self.history.rows)
        self.run.write_state(self.state)
        self.saved_epoch = self.state["epoch"]

    def record_answer(self, epoch: int, note: str, prompt_state: dict[str, Any]) -> None:
        """The prompt's `on_answer`: the answer goes into the epoch's history row, the prompt's new
        state into the saved state, and both to disk.
        """
        self.history.record_answer(epoch, note)
        self.state["ask"] = prompt_state
        self.commit()
