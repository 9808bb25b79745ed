"""Test-time augmentation: the mean of a model's probabilities for an image and its mirror image.

A model trained with random horizontal flips (the reference recipe's only augmentation) has seen both
orientations; averaging the two answers removes the part of its error that depends on which one it
is shown. Whether that helps on radiographs, where the heart is on the left, is measured, not assumed
(README: "Is it any good on other data?").
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from cxr.errors import UserError

__all__ = ["TTA_MODES", "check_tta", "fitted_mismatch_notes", "mismatch_note", "with_tta"]

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


def fitted_mismatch_notes(used: str | None, temperature_file: str | os.PathLike | None = None,
                          operating_points: dict | None = None) -> list[str]:
    """The notes `cxr predict` and `cxr serve` show when what they apply was fitted with another --tta.

    Args:
        used: the test-time augmentation of these predictions.
        temperature_file: where the applied temperature comes from (calibration.json or a model file that
            carries one); None when no temperature is applied.
        operating_points: the applied thresholds (`load_operating_points`' first item; their "tta" says how
            they were chosen); None or empty when none are applied.

    Returns:
        The notes (mismatch_note's), the temperature's first; empty when everything agrees.
    """
    from cxr.inference.temperature import fitted_tta  # reads model files: keep this module light

    notes = [mismatch_note("this temperature was fitted", fitted_tta(temperature_file), used)
             if temperature_file else None,
             mismatch_note("these thresholds were chosen", operating_points.get("tta"), used)
             if operating_points else None]
    return [note for note in notes if note]
