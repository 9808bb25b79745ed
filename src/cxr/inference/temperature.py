"""Temperature scaling at inference: the one way cxr applies a temperature, and where it finds one.

The temperature is fitted by an evaluation (cxr.evaluation.calibration) and kept in that evaluation's
folder; predicting and serving apply the newest one fitted for the very model file they load.
softmax(log p / T) equals the softmax of the logits divided by T, so it works on probabilities.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr.errors import UserError
from cxr.run import Run

__all__ = ["apply_temperature", "find_temperature", "require_temperature"]

_TINY = 1e-12


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) for each row: the one way cxr applies a temperature."""
    logits = np.log(np.clip(probabilities, _TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def find_temperature(model_path: str | os.PathLike) -> tuple[float, Path] | None:
    """The temperature the newest evaluation fitted for the model file at `model_path`, and its file;
    None for a bare file or when no evaluation fitted one for this very model (see Run.temperature).
    """
    run = Run.containing(model_path)
    return run.temperature(model_path) if run else None


def require_temperature(model_path: str | os.PathLike) -> tuple[float, Path]:
    """find_temperature, or a UserError that says why there is none and what to do."""
    found = find_temperature(model_path)
    if found is not None:
        return found
    model_path = Path(model_path)
    run = Run.containing(model_path)
    if run is None:  # a copied model file: the temperature lives in its run's evaluations
        raise UserError(f"no temperature for {model_path}: it is not in a run folder, where evaluations keep "
                        "the temperature they fit; predict from the model inside its run, or leave out --calibrated")
    why = ("every calibration.json there was fitted for another version of the model"
           if run.calibration_files() else "no evaluation of it has fitted one")
    raise UserError(f"no temperature for {model_path.with_suffix('.keras')}: {why}; run cxr evaluate "
                    f"{model_path.parent}")
