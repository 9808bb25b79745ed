"""Progress inside an epoch that a log file can hold.

On a terminal Keras draws its progress bar. Redirected to a file (a batch job, `nohup`, CI), the bar
is off and an epoch of the full dataset on a CPU can take an hour in silence; `ProgressLines` then
prints a plain line every few minutes: the batch reached, images per second and the time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import keras

__all__ = ["PROGRESS_EVERY", "ProgressLines", "duration"]

PROGRESS_EVERY = 180.0  # seconds between two lines


def duration(seconds: float) -> str:
    """A short human duration: `45 s`, `12 min`, `2 h 05 min`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class ProgressLines(keras.callbacks.Callback):
    """Print `epoch e/E: batch b/n, r images/s, about t left in this epoch` every `every` seconds.

    Put it after the callback that sets the epoch's batches (`first_batch` reads where a resumed epoch
    starts).

    Args:
        epochs: the run's last epoch.
        batches_per_epoch: the batches of a whole epoch.
        images_per_batch: the images one optimizer step sees (the global batch).
        first_batch: where the epoch in flight begins (0, or the batches a resumed epoch has done).
        echo: where the lines go.
        every: seconds between lines (default PROGRESS_EVERY).
        clock: seconds (a test's fake clock).
    """

    def __init__(self, epochs: int, batches_per_epoch: int, images_per_batch: int, first_batch: Callable[[], int],
                 echo: Callable[[str], None] = print, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.epochs, self.batches_per_epoch, self.images_per_batch = epochs, batches_per_epoch, images_per_batch
        self.first_batch = first_batch
        self.echo, self.clock = echo, clock
        self.every = PROGRESS_EVERY if every is None else every
        self.epoch, self.start_batch, self.started, self.last = 0, 0, 0.0, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.start_batch = epoch, self.first_batch()
        self.started = self.last = self.clock()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        done = self.start_batch + batch + 1
        rate = (batch + 1) * self.images_per_batch / max(now - self.started, 1e-9)
        left = (self.batches_per_epoch - done) * self.images_per_batch / rate
        self.echo(f"epoch {self.epoch + 1}/{self.epochs}: batch {done}/{self.batches_per_epoch}, "
                  f"{rate:.1f} images/s, about {duration(left)} left in this epoch")
