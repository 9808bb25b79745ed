"""Calibration: expected calibration error, reliability bins, and temperature scaling.

The model outputs softmax probabilities, and softmax(log p / T) equals the softmax of the logits
divided by T, so the temperature is fitted and applied on probabilities without changing the model.
It is fitted on the validation split (minimum negative log-likelihood) by every evaluation and kept in
that evaluation's folder (`eval*/calibration.json`), with the SHA-256 of the model file it was fitted
for. `cxr predict --calibrated` and `cxr serve` use the newest evaluation's temperature for the very
model file they load, and name the file they took it from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from cxr import files
from cxr.errors import UserError
from cxr.run import CALIBRATION_FILE, evaluation_dirs

_TINY = 1e-12


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probabilities, _TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(truth: np.ndarray, probabilities: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probabilities[np.arange(len(truth)), truth], _TINY, 1.0))))


def fit_temperature(truth: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood of `truth`."""
    result = minimize_scalar(lambda log_t: negative_log_likelihood(truth, apply_temperature(probabilities,
                                                                                             np.exp(log_t))),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def reliability_bins(truth: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """Cases binned by confidence (the top probability): count, mean confidence and accuracy per bin."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "count": int(members.sum()),
                     "confidence": float(confidence[members].mean()) if members.any() else np.nan,
                     "accuracy": float(correct[members].mean()) if members.any() else np.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(truth: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over confidence bins, weighted by the number of cases in each."""
    table = reliability_bins(truth, probabilities, bins)
    filled = table[table["count"] > 0]
    return float((filled["count"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / len(truth))


def save_temperature(eval_dir: str | os.PathLike, record: dict) -> Path:
    """Keep an evaluation's temperature in its own folder; an earlier evaluation's is never overwritten."""
    return files.write_json(Path(eval_dir) / CALIBRATION_FILE, record)


def _candidates(model_path: Path) -> list[Path]:
    """Calibration files for a model, newest evaluation first; last, the run-level file that runs
    evaluated before each evaluation kept its own still have."""
    run_dir = model_path.parent
    paths = [folder / CALIBRATION_FILE for folder in evaluation_dirs(run_dir)] + [run_dir / CALIBRATION_FILE]
    return [path for path in paths if path.is_file()]


def find_temperature(model_path: str | os.PathLike) -> tuple[float, Path] | None:
    """The temperature the newest evaluation fitted for the model at `model_path`, and its file.

    Args:
        model_path: a model file (.keras or .onnx) in a run folder.

    Returns:
        (temperature, calibration.json path), or None when no evaluation fitted one for this very
        model file (the .keras file's SHA-256 must match: a run trained further needs a new evaluation).
    """
    model_path = Path(model_path)
    keras_path = model_path.with_suffix(".keras")
    digest = files.sha256(keras_path) if keras_path.is_file() else None
    for path in _candidates(model_path):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if digest and record.get("model_sha256") and record["model_sha256"] != digest:
            continue
        return float(record["temperature"]), path
    return None


def require_temperature(model_path: str | os.PathLike) -> tuple[float, Path]:
    """find_temperature, or a UserError that says why there is none and what to do."""
    found = find_temperature(model_path)
    if found is not None:
        return found
    model_path = Path(model_path)
    why = ("every calibration.json there was fitted for another version of the model"
           if _candidates(model_path) else "no evaluation of it has fitted one")
    raise UserError(f"no temperature for {model_path.with_suffix('.keras')}: {why}; run cxr evaluate "
                    f"{model_path.parent}")
