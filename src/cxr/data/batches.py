"""Decoded images in memory and the batches Keras trains on.

Each split is decoded in parallel into one uint8 array (N, H, W, 1): one byte per pixel, which is
the model's input contract. `cxr.data.cache` keeps such arrays on disk, memory-mapped, so that
later runs skip decoding; `ImageBatches` reads either kind.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm import tqdm

from cxr.data.images import load_image
from cxr.errors import DatasetError, ImageError


def decode_into(
    out: np.ndarray,
    root: str | os.PathLike,
    files: list[str] | pd.Series,
    size: int,
    workers: int = 0,
    progress: bool = True,
    desc: str = "decode",
) -> None:
    """Decode files (relative to root) into `out`, an array or writable memory map (N, size, size, 1).

    OpenCV releases the GIL while decoding and resizing, so threads use every core. Raises
    DatasetError naming every file that does not decode (a reused split may point at files that
    changed since it was made).
    """
    root = Path(root)
    paths = [root / f for f in files]
    failures = []

    def load(index: int) -> None:
        try:
            out[index, :, :, 0] = load_image(paths[index], size)
        except ImageError as error:
            failures.append(f"{error.path}: {error.reason}")

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for _ in tqdm(pool.map(load, range(len(paths))), total=len(paths), desc=desc,
                      unit="img", disable=not progress):
            pass
    if failures:
        raise unreadable_images(failures)


def unreadable_images(failures: list[str]) -> DatasetError:
    """One error listing the split's unreadable files ("path: reason"), the first ten in order."""
    shown = "\n  ".join(sorted(failures)[:10])
    more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
    return DatasetError(f"{len(failures)} image(s) in the split cannot be read:\n  {shown}{more}")


def label_indices(labels: pd.Series | list[str], classes: list[str]) -> np.ndarray:
    """Class indices for label names; an unknown label is an error that names it."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DatasetError(f"label(s) {', '.join(unknown)} are not among the classes {', '.join(classes)}")
    return np.array([index[label] for label in labels], dtype=np.int64)


class ImageBatches(keras.utils.PyDataset):
    """(uint8 images, one-hot labels) batches over an in-memory or memory-mapped array.

    With `shuffle`, the order of epoch e is a pure function of (seed, e), set by `set_epoch` from a
    callback's on_epoch_begin: a resumed run sees the same order as an uninterrupted one. (Keras calls
    a PyDataset's own on_epoch_end a varying number of times, so it cannot count epochs.)
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, n_classes: int, batch_size: int,
                 shuffle: bool = False, seed: int = 0, multiple_of: int = 1):
        super().__init__()
        self.images = images
        self.targets = keras.utils.to_categorical(labels, n_classes).astype("float32")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        # A last, short batch is cut to a multiple of this (data parallelism splits every batch evenly
        # over the devices); `used` says how many images an epoch sees.
        remainder = len(images) % batch_size
        self.used = len(images) - remainder % multiple_of
        self.order = np.arange(len(images))
        self.set_epoch(0)

    def __len__(self) -> int:
        return math.ceil(self.used / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        # Sorted rows read a memory map in file order; the batch's composition is what is shuffled.
        rows = np.sort(self.order[index * self.batch_size : min((index + 1) * self.batch_size, self.used)])
        return self.images[rows], self.targets[rows]

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
