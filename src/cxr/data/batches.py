"""The batches Keras trains on, from a split's decoded uint8 array (N, H, W, 1).

One byte per pixel is the model's input contract; `cxr.data.cache` decodes each split once into
such an array, in memory or memory-mapped on disk, and `ImageBatches` reads either kind.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pandas as pd

from cxr.errors import DatasetError

__all__ = ["ImageBatches", "label_indices"]


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
