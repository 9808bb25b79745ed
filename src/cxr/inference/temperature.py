"""Temperature scaling at inference: the one way cxr applies a temperature, and where it finds one.

The temperature is fitted by an evaluation (cxr.evaluation.calibration) and kept in that evaluation's
folder; predicting and serving apply the newest one fitted for the very model file they load, or, for a
model file handed on alone, the one written into the file (cxr.model_metadata).
softmax(log p / T) equals the softmax of the logits divided by T, so it works on probabilities.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr.errors import UserError
from cxr.model_metadata import read_description
from cxr.run import Run

__all__ = ["apply_temperature", "find_temperature", "fitted_tta", "require_temperature"]

_TINY = 1e-12


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) for each row: the one way cxr applies a temperature."""
    logits = np.log(np.clip(probabilities, _TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def find_temperature(model_path: str | os.PathLike) -> tuple[float, Path] | None:
    """The temperature for the model file at `model_path`, and the file it comes from.

    Inside a run: the one the newest evaluation fitted for this very model (see Run.temperature). A bare
    file (one `cxr package` wrote, say): the temperature its own description carries (cxr.model_metadata).
    None when neither has one.
    """
    run = Run.containing(model_path)
    if run is not None:
        return run.temperature(model_path)
    temperature = read_description(model_path).get("temperature")
    return (float(temperature), Path(model_path)) if temperature is not None else None


def fitted_tta(source: str | os.PathLike) -> str:
    """The test-time augmentation of the evaluation that fitted a temperature: from its calibration.json, or
    from the description of a model file that carries it; "none" for records older than the field.
    """
    import json

    source = Path(source)
    if source.suffix == ".json":
        return json.loads(source.read_text(encoding="utf-8")).get("tta") or "none"
    return read_description(source).get("temperature_tta") or "none"


def require_temperature(model_path: str | os.PathLike) -> tuple[float, Path]:
    """find_temperature, or a UserError that says why there is none and what to do."""
    found = find_temperature(model_path)
    if found is not None:
        return found
    model_path = Path(model_path)
    run = Run.containing(model_path)
    if run is None:  # a copied model file that does not carry one
        raise UserError(f"no temperature for {model_path}: the file carries none and it is not in a run folder, "
                        "where evaluations keep the temperature they fit; predict from the model inside its run, "
                        "hand it on with cxr package RUN --out DIR (which writes it into the file), or leave out "
                        "--calibrated")
    why = ("every calibration.json there was fitted for another version of the model"
           if run.calibration_files() else "no evaluation of it has fitted one")
    raise UserError(f"no temperature for {model_path.with_suffix('.keras')}: {why}; run cxr evaluate "
                    f"{model_path.parent}")
