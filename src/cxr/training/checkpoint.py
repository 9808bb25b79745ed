"""What a run saves after every epoch so that it can resume, and the lock that guards a live run.

After epoch n, `checkpoints/` holds `epoch-000n.keras` (model and optimizer), `best-000k.keras`
(the controller's best epoch k; `best-0000.keras` is the initial model) and `state.json`, which
names those two files and holds the controller's state, the random-generator states of the
model's layers and the history. Model
files are written first and old ones deleted last, each atomically, so whatever moment a process
dies at, `state.json` names a complete pair: at most the epoch in flight is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import keras
import numpy as np
import pandas as pd

from cxr import files
from cxr.errors import UserError
from cxr.run import STATE_FILE, now
from cxr.training.controller import AdaptiveLR, current_learning_rate
from cxr.training.history import EpochLog
from cxr.training.prompt import AskToContinue

STATE_FORMAT = 1


class RunBusyError(UserError):
    pass


def seed_states(model: keras.Model) -> list[list[int]]:
    """The layers' random-generator states (dropout, flip), which Keras' model files leave out."""
    return [keras.ops.convert_to_numpy(v).tolist() for v in model.variables if "seed_generator_state" in v.path]


def set_seed_states(model: keras.Model, states: list[list[int]]) -> None:
    variables = [v for v in model.variables if "seed_generator_state" in v.path]
    if len(variables) != len(states):
        raise ValueError(f"the model has {len(variables)} random generators, the checkpoint {len(states)}")
    for variable, state in zip(variables, states, strict=True):
        variable.assign(np.asarray(state, dtype=variable.dtype))


def state_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STATE_FILE


def read_state(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The saved state of a run, or None when no epoch has been completed yet."""
    path = state_path(run_dir)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path} cannot be read: {error}") from None
    if state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} has format {state.get('format')!r}; this version reads format {STATE_FORMAT}")
    for key in ("model", "best_model"):
        if state.get(key) and not (path.parent / state[key]).is_file():
            raise UserError(f"{path} names {state[key]}, which is missing from {path.parent}")
    return state


class RunCheckpoint(keras.callbacks.Callback):
    """Save the model, the best model, history.csv and state.json after every epoch."""

    def __init__(self, run_dir: str | os.PathLike, epochs: int, log: EpochLog, adaptive: AdaptiveLR,
                 asker: AskToContinue | None = None, state: dict[str, Any] | None = None,
                 ask_epoch: int | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / "checkpoints"
        self.epochs = epochs
        self.log, self.adaptive, self.asker = log, adaptive, asker
        self.state: dict[str, Any] = state or {"format": STATE_FORMAT, "epoch": 0, "model": None,
                                               "best_model": None, "ask": {"next_ask": ask_epoch or None}}
        self.saved_epoch = self.state["epoch"]  # what state.json on disk says, for messages

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Until an epoch improves, the initial weights are the controller's best: keep them too, so
        # that model.keras and a resumed run's "restore" mean the same as in an uninterrupted run.
        if self.state["best_model"] is None and self.state["epoch"] == 0:
            files.write_with(self.folder / "best-0000.keras", self.model.save)
            self.state["best_model"] = "best-0000.keras"

    @property
    def best_model_path(self) -> Path | None:
        return self.folder / self.state["best_model"] if self.state.get("best_model") else None

    @property
    def last_model_path(self) -> Path | None:
        return self.folder / self.state["model"] if self.state.get("model") else None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done = epoch + 1
        model_name = f"epoch-{done:04d}.keras"
        files.write_with(self.folder / model_name, self.model.save)
        best_name = self.state.get("best_model")
        if self.adaptive.best_epoch == done:
            best_name = f"best-{done:04d}.keras"
            files.write_with(self.folder / best_name, self.model.save)
        # Taken now, with the model file: after a stop mid-epoch the live model has moved on.
        self.state.update(epoch=done, model=model_name, best_model=best_name, status="running",
                          learning_rate=current_learning_rate(self.model), seed_states=seed_states(self.model))
        self.commit()
        keep = {model_name, best_name, "state.json"}
        for old in [*self.folder.glob("epoch-*.keras"), *self.folder.glob("best-*.keras")]:
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def commit(self, status: str | None = None) -> None:
        """Write history.csv and state.json for the epochs completed so far."""
        if status:
            self.state["status"] = status
        if self.asker:  # without a terminal there is no asker, and the saved schedule stays as it was
            self.state["ask"] = self.asker.get_state()
        self.state.update(epochs=self.epochs, best_epoch=self.adaptive.best_epoch,
                          adaptive=self.adaptive.get_state(),
                          history=self.log.rows, saved=now())
        files.write_csv(self.run_dir / "history.csv", pd.DataFrame(self.log.rows))
        files.write_json(state_path(self.run_dir), self.state)
        self.saved_epoch = self.state["epoch"]

    def record_answer(self, epoch: int, note: str) -> None:
        """AskToContinue's hook: the answer goes into the epoch's history row and the saved state."""
        if self.log.rows and self.log.rows[-1]["epoch"] == epoch + 1:
            self.log.rows[-1]["answer"] = note
        self.commit()


LOCK_FILE = ".lock"
OWNER_FILE = ".lock.pid"  # beside the lock: Windows forbids reading a locked file


@contextlib.contextmanager
def lock_run(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on a run folder; a second live process is refused with its pid.

    The lock is the operating system's (flock on POSIX, LockFileEx on Windows, through `filelock`),
    so it is dropped when the process dies, however it dies: a killed run leaves no stale lock.
    """
    run_dir = Path(run_dir)
    lock = filelock.FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            pid = (run_dir / OWNER_FILE).read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            pid = "unknown"
        raise RunBusyError(f"{run_dir} is being written by a live process (pid {pid}); "
                           "wait for it to finish or stop it first") from None
    try:
        files.write_text(run_dir / OWNER_FILE, str(os.getpid()))
        yield
    finally:
        lock.release()
