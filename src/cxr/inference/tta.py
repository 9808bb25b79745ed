"""Test-time augmentation: the mean of a model's probabilities for an image and its mirror image.

A model trained with random horizontal flips (the reference recipe's only augmentation) has seen both
orientations; averaging the two answers removes the part of its error that depends on which one it
is shown. Whether that helps on radiographs, where the heart is on the left, is measured, not assumed
(README: "Is it any good on other data?").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cxr.errors import UserError

__all__ = ["TTA_MODES", "check_tta", "mismatch_note", "with_tta"]

TTA_MODES = ("none", "flip")


def check_tta(mode: str | None) -> str:
    """The mode by name ("none" for None).

    Raises:
        UserError: an unknown mode.
    """
    mode = mode or "none"
    if mode not in TTA_MODES:
        raise UserError(f"unknown test-time augmentation {mode!r}; choose from {', '.join(TTA_MODES)}")
    return mode


def with_tta(predict: Callable[[np.ndarray], np.ndarray], mode: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """`predict` for uint8 (N, H, W, 1) batches, averaged over the image and its horizontal mirror for "flip".

    Args:
        predict: batch -> probabilities.
        mode: "none" (or None) or "flip".

    Returns:
        The same kind of function; for "flip" it calls `predict` on the batch and on its mirror
        (twice the work) and returns the mean, which is still a probability distribution per image.
    """
    if check_tta(mode) == "none":
        return predict

    def flipped(images: np.ndarray) -> np.ndarray:
        plain = np.asarray(predict(images))
        mirrored = np.asarray(predict(np.ascontiguousarray(images[:, :, ::-1])))
        return ((plain.astype(np.float64) + mirrored) / 2).astype(plain.dtype)  # the model's own dtype

    return flipped


def mismatch_note(what: str, fitted: str | None, used: str | None) -> str | None:
    """A note when a temperature or thresholds fitted on probabilities with one test-time augmentation are
    applied to probabilities made with another: averaged probabilities are less extreme, so neither holds.

    Args:
        what: what was fitted, with its verb: "these thresholds were chosen", "this temperature was fitted".
        fitted: the mode of the evaluation that fitted them ("none" for records older than the field).
        used: the mode of this prediction.

    Returns:
        The note, or None when the modes agree.
    """
    fitted, used = check_tta(fitted), check_tta(used)
    if fitted == used:
        return None
    return (f"note: {what} with --tta {fitted}, and these predictions use --tta {used}: what it reached on "
            f"validation may not hold (use --tta {fitted})")
