"""Calibration: expected calibration error, reliability bins, and temperature scaling.

The model outputs softmax probabilities, and softmax(log p / T) equals the softmax of the logits
divided by T, so the temperature is fitted and applied on probabilities without changing the model.
It is fitted on the validation split (minimum negative log-likelihood) and kept beside the model in
`calibration.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from cxr import files

CALIBRATION_FILE = "calibration.json"
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


def save_temperature(run_dir: str | os.PathLike, record: dict) -> Path:
    return files.write_json(Path(run_dir) / CALIBRATION_FILE, record)


def read_temperature(model_path: str | os.PathLike) -> float | None:
    """The temperature fitted for the model at `model_path` (from calibration.json beside it), if any
    and if it was fitted for this very file."""
    path = Path(model_path).parent / CALIBRATION_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    keras_path = Path(model_path).with_suffix(".keras")
    if record.get("model_sha256") and keras_path.is_file() and record["model_sha256"] != files.sha256(keras_path):
        return None
    return float(record["temperature"])
