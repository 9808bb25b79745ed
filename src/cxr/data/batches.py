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

__all__ = ["balanced_class_weights", "ImageBatches", "label_indices"]


def label_indices(labels: pd.Series | list[str], classes: list[str]) -> np.ndarray:
    """Class indices for label names; an unknown label is an error that names it."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DatasetError(f"label(s) {', '.join(unknown)} are not among the classes {', '.join(classes)}")
    return np.array([index[label] for label in labels], dtype=np.int64)


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """N / (classes x images of the class) per class, scikit-learn's "balanced" weights: every class then
    weighs as much in the loss as it would with equal counts (Normal 10,192 against Viral Pneumonia
    1,345 in the full dataset). A class without images gets 0.
    """
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype("float64")
    return np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)


class ImageBatches(keras.utils.PyDataset):
    """(uint8 images, one-hot labels) batches over an in-memory or memory-mapped array.

    With `shuffle`, the order of epoch e is a pure function of (seed, e), set by `set_epoch` from a
    callback's on_epoch_begin: a resumed run sees the same order as an uninterrupted one. (Keras calls
    a PyDataset's own on_epoch_end a varying number of times, so it cannot count epochs.)

    A run resumed from a checkpoint inside an epoch starts that epoch at a later batch (`start_at`):
    for that epoch the dataset is shorter by the batches already trained. Keras counts an epoch's
    batches once, when a fit begins, so that epoch is fitted on its own (see training.loop).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, n_classes: int, batch_size: int,
                 shuffle: bool = False, seed: int = 0, multiple_of: int = 1,
                 class_weights: np.ndarray | None = None):
        super().__init__()
        self.images = images
        self.targets = keras.utils.to_categorical(labels, n_classes).astype("float32")
        # Per-image weights of the loss (class_weights[label]): a batch is then (images, targets, weights).
        self.weights = None if class_weights is None else np.asarray(class_weights, "float32")[np.asarray(labels)]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        # A last, short batch is cut to a multiple of this (data parallelism splits every batch evenly
        # over the devices); `used` says how many images an epoch sees.
        remainder = len(images) % batch_size
        self.used = len(images) - remainder % multiple_of
        self.order = np.arange(len(images))
        self.start: tuple[int, int] | None = None  # (epoch, batch) a resumed run starts at
        self.skip = 0  # batches of the current epoch trained before a resume
        self.set_epoch(0)

    @property
    def batches_per_epoch(self) -> int:
        """The batches of a whole epoch."""
        return math.ceil(self.used / self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        index += self.skip
        # Sorted rows read a memory map in file order; the batch's composition is what is shuffled.
        rows = np.sort(self.order[index * self.batch_size : min((index + 1) * self.batch_size, self.used)])
        if self.weights is None:
            return self.images[rows], self.targets[rows]
        return self.images[rows], self.targets[rows], self.weights[rows]

    def start_at(self, epoch: int, batch: int) -> None:
        """Begin epoch `epoch` (0-based) at batch `batch`; call before fit, and `set_epoch` from the fit."""
        if not 0 <= batch < self.batches_per_epoch:
            raise ValueError(f"batch {batch} is outside an epoch of {self.batches_per_epoch} batches")
        self.start = (epoch, batch)

    def set_epoch(self, epoch: int) -> None:
        """Take epoch `epoch`'s order (and its first batch, for a resumed epoch)."""
        if self.shuffle:
            self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
        self.skip = self.start[1] if self.start and self.start[0] == epoch else 0
