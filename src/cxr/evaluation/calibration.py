"""Calibration: expected calibration error, reliability bins, and fitting a temperature.

The temperature is fitted on the validation split (minimum negative log-likelihood) by every evaluation
and kept in that evaluation's folder (`eval*/calibration.json`), with the SHA-256 of the model file it
was fitted for; cxr.inference.temperature applies it (`cxr predict --calibrated`, `cxr serve`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from cxr import files
from cxr.inference.temperature import apply_temperature

__all__ = ["applied_record", "calibration_record", "ece_pair", "expected_calibration_error", "fit_temperature",
           "negative_log_likelihood", "reliability_bins", "reliability_tables", "save_temperature"]

_TINY = 1e-12


def negative_log_likelihood(truth: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean -log p(true class), with p clipped away from 0."""
    return float(-np.mean(np.log(np.clip(probabilities[np.arange(len(truth)), truth], _TINY, 1.0))))


def _require_finite(probabilities: np.ndarray) -> None:
    """A NaN lands in no bin and in no likelihood honestly: it would change the figures without a word."""
    if not np.isfinite(probabilities).all():
        raise ValueError(f"{int((~np.isfinite(probabilities)).any(axis=1).sum())} of {len(probabilities)} rows of "
                         "probabilities are not finite")


def fit_temperature(truth: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood of `truth`."""
    _require_finite(probabilities)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(truth, apply_temperature(probabilities,
                                                                                             np.exp(log_t))),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def reliability_bins(truth: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """Cases binned by confidence (the top probability): count, mean confidence and accuracy per bin."""
    _require_finite(probabilities)
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


def calibration_record(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                       model_sha256: str) -> dict:
    """The temperature fitted on val (truth, probabilities) and the test set's calibration before and
    after it, tied to the model file it belongs to by its SHA-256 (what calibration.json holds).
    """
    temperature = fit_temperature(*val)
    scaled = apply_temperature(test[1], temperature)
    return {
        "temperature": temperature, "fitted_on": "val", "val_images": int(len(val[0])),
        "model_sha256": model_sha256,
        "test_ece_before": expected_calibration_error(test[0], test[1]),
        "test_ece_after": expected_calibration_error(test[0], scaled),
        "test_nll_before": negative_log_likelihood(test[0], test[1]),
        "test_nll_after": negative_log_likelihood(test[0], scaled),
        "bins": len(reliability_bins(test[0], test[1])),
    }


def reliability_tables(truth: np.ndarray, probabilities: np.ndarray,
                       temperature: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reliability bins of the probabilities before and after temperature scaling."""
    return (reliability_bins(truth, probabilities),
            reliability_bins(truth, apply_temperature(probabilities, temperature)))


def save_temperature(path: str | os.PathLike, record: dict) -> Path:
    """Keep an evaluation's temperature in its own folder; an earlier evaluation's is never overwritten."""
    return files.write_json(path, record)


def ece_pair(record: dict) -> tuple[float, float]:
    """(ECE before, ECE after) of a calibration record: an evaluation's own (`test_ece_*`, temperature
    fitted on its val split) or an external one's (`ece_*`, the run's temperature applied, not refitted).
    """
    if "test_ece_before" in record:
        return record["test_ece_before"], record["test_ece_after"]
    return record["ece_before"], record["ece_after"]


def applied_record(truth: np.ndarray, probabilities: np.ndarray, temperature: float, source: str) -> dict:
    """The calibration of another set under a temperature fitted elsewhere (an external evaluation
    measures the run's own temperature; refitting it on the data being judged would flatter it).
    """
    scaled = apply_temperature(probabilities, temperature)
    return {"temperature": float(temperature), "fitted_on": "the run's validation split (not refitted here)",
            "source": source,
            "ece_before": expected_calibration_error(truth, probabilities),
            "ece_after": expected_calibration_error(truth, scaled),
            "nll_before": negative_log_likelihood(truth, probabilities),
            "nll_after": negative_log_likelihood(truth, scaled)}
