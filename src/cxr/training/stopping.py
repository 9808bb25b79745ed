"""Stopping a training job at a safe point: Ctrl-C, SIGTERM and a loss that is no longer finite.

The first SIGINT or SIGTERM only raises a flag; `StopGuard` turns it into `TrainingStopped` at the
next batch boundary, so the job can save where it is, evaluate the best checkpoint and say how to
resume. During an epoch's validation (a few percent of the epoch, and no weights change) it waits for
the epoch's end, which saves the whole epoch. A second signal exits at once: every file is written
atomically, so the last save stays intact.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from enum import StrEnum

import keras

from cxr.errors import UserError

__all__ = ["Status", "StopGuard", "StopSignals", "TrainingStopped", "terminal_reader"]

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Status(StrEnum):
    """How a run's training stands, as state.json records it."""

    RUNNING = "running"
    FINISHED = "finished"
    HALTED = "halted"  # the user answered H
    STOPPED_EARLY = "stopped early"  # the controller's stop_patience
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    NAN = "nan"  # a loss that is not finite


class TrainingStopped(UserError):
    """Training ended before its last epoch for a reason that is not the controller's decision."""

    def __init__(self, reason: str, kind: str, exit_code: int):
        super().__init__(reason)
        self.reason, self.kind, self.exit_code = reason, kind, exit_code


class StopSignals:
    """Install SIGINT/SIGTERM handlers for the duration of a `with` block (main thread only)."""

    def __init__(self, on_second: Callable[[], str] = lambda: ""):
        self.on_second = on_second  # the message printed before exiting at once
        self.received: str | None = None
        self.prompting = False  # at an input() prompt a signal must interrupt the read itself
        self.validating = False  # during an epoch's validation, which a stop lets finish
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            _say(f"second stop signal ({name}): exiting now. {self.on_second()}")
            os._exit(EXIT_CODES.get(name, 1))
        self.received = name
        if self.prompting:
            _say(f"{name} received: stopping (send it again to exit at once)")
            raise KeyboardInterrupt
        where = ("when this epoch's validation ends and the epoch is saved" if self.validating
                 else "at the end of this batch")
        _say(f"{name} received: stopping {where} (send it again to exit at once)")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def stopped(self, where: str) -> TrainingStopped:
        name = self.received or "SIGINT"
        return TrainingStopped(f"interrupted by {name} {where}", Status.INTERRUPTED, EXIT_CODES.get(name, 1))

    @contextlib.contextmanager
    def prompt(self) -> Iterator[None]:
        """Let a signal break an input() prompt (it would otherwise wait for the answer)."""
        self.prompting = True
        try:
            yield
        finally:
            self.prompting = False


def _say(message: str) -> None:
    """Write from a signal handler: print() may be in the middle of a write to the same stream."""
    os.write(sys.stderr.fileno(), f"\n{message}\n".encode())


def terminal_reader(signals: StopSignals) -> Callable[[str], str | None]:
    """Read an answer from the terminal; None at the end of input; a signal stops training."""

    def read(prompt: str) -> str | None:
        if signals.received:  # it came while the epoch was being saved: stop rather than ask
            raise signals.stopped("after the epoch was saved")
        try:
            with signals.prompt():
                return input(prompt)
        except EOFError:
            return None
        except KeyboardInterrupt:
            raise signals.stopped("at the prompt") from None

    return read


class StopGuard(keras.callbacks.Callback):
    """Raise TrainingStopped at a batch boundary after a stop signal, or when the loss is not finite.

    Put it first: its epoch-end check keeps an epoch whose weights went non-finite from being saved.
    A signal is acted on when the next batch begins, after every callback has seen the last one end
    (the checkpoint then knows how far the epoch got), and not during validation.
    """

    def __init__(self, signals: StopSignals):
        super().__init__()
        self.signals = signals
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1
        self._check(f"before epoch {self.epoch}")

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._check(f"during epoch {self.epoch}")

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._finite(logs, "loss", f"in epoch {self.epoch}, batch {batch + 1}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name in ("loss", "val_loss"):
            self._finite(logs, name, f"at the end of epoch {self.epoch}")

    @staticmethod
    def _finite(logs: dict | None, name: str, where: str) -> None:
        value = (logs or {}).get(name)
        if value is not None and not math.isfinite(float(value)):
            raise TrainingStopped(f"the {'training' if name == 'loss' else 'validation'} loss became "
                                  f"{float(value)} {where}", Status.NAN, 3)

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.signals.validating = True

    def on_test_end(self, logs: dict | None = None) -> None:
        self.signals.validating = False

    def _check(self, where: str) -> None:
        if self.signals.received:
            raise self.signals.stopped(where)
