"""Micro-batching: concurrent requests' images run through the model together."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

__all__ = ["MicroBatcher"]


class MicroBatcher:
    """Runs concurrent requests' images through the model together: the first image waits up to
    `window_ms` for up to `max_batch - 1` others, then one batch runs and every caller gets its row.
    Under load this replaces many small model calls competing for the cores with a few larger ones.
    """

    def __init__(self, predict, max_batch: int = 16, window_ms: float = 5.0):
        self.predict, self.max_batch, self.window = predict, max_batch, window_ms / 1000
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="cxr-micro-batcher").start()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Probabilities for one (size, size, 1) image, computed in a shared batch."""
        future: Future = Future()
        self.queue.put((image, future))
        return future.result()

    def _run(self) -> None:
        while True:
            items = [self.queue.get()]
            deadline = time.perf_counter() + self.window
            while len(items) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    items.append(self.queue.get(timeout=remaining))
                except queue.Empty:
                    break
            batch = np.stack([image for image, _ in items])
            # Pad to a power of two: a compiled model (Keras' predict step) then sees at most
            # log2(max_batch) + 1 batch shapes instead of retracing for every new size.
            size = min(1 << (len(items) - 1).bit_length(), max(self.max_batch, len(items)))
            if size > len(items):
                batch = np.concatenate([batch, np.zeros((size - len(items), *batch.shape[1:]), batch.dtype)])
            try:
                rows = np.asarray(self.predict(batch))
            except Exception as error:  # every waiting request gets the error, the batcher goes on
                for _, future in items:
                    future.set_exception(error)
                continue
            for (_, future), row in zip(items, rows[:len(items)], strict=True):
                future.set_result(row)
