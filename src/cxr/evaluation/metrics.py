"""Clinical metrics per class and overall, with stratified-bootstrap 95 % confidence intervals.

scikit-learn computes every metric. A metric that is undefined on a set (a class with no positives
has no sensitivity and no ROC AUC) is NaN, never 0, so it cannot pass for a real value; averages
skip it and the interval of a metric that is undefined in some resamples comes from the others. A class
with cases that the model never predicts has precision 0, as in scikit-learn's default: left out, it would
raise the average for the model's worst miss, and drop in and out of the average between resamples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = ["HEADLINE", "OVERALL", "PER_CLASS", "bootstrap_intervals", "clinical_metrics", "format_interval",
           "per_class_frame", "point_metrics", "resampling_unit", "stratified_resamples", "unit_sentence"]

PER_CLASS = ("sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")
OVERALL = ("accuracy", "balanced_accuracy", "cohen_kappa")
# The headline metrics, in the order every summary shows them (evaluate, report, compare, serve):
# (label, group in clinical_metrics' result, metric name).
HEADLINE = (("accuracy", "overall", "accuracy"), ("balanced accuracy", "overall", "balanced_accuracy"),
            ("macro F1", "macro", "f1"), ("macro ROC AUC", "macro", "roc_auc"), ("macro PR AUC", "macro", "pr_auc"),
            ("Cohen's kappa", "overall", "cohen_kappa"))


def _nanmean(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan")
    if weights is None:
        return float(values[keep].mean())
    if weights[keep].sum() == 0:
        return float("nan")
    return float(np.average(values[keep], weights=weights[keep]))


def point_metrics(truth: np.ndarray, probabilities: np.ndarray,
                  averaged: np.ndarray | None = None) -> dict[str, float]:
    """Every metric as a flat {name: value}: `accuracy`, ..., `<metric>/<class index>`, `macro/<metric>`,
    `weighted/<metric>` (weighted by each class's number of true cases).

    `averaged` (class indices, default all) are the classes the macro and weighted averages run over:
    an external set with some of the model's classes averages over those, not over classes it lacks.
    """
    truth = np.asarray(truth)
    n_classes = probabilities.shape[1]
    labels = np.arange(n_classes)
    averaged = labels if averaged is None else np.asarray(averaged)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(truth, predicted, labels=labels)
    support = matrix.sum(axis=1)
    false_positives = matrix.sum(axis=0) - np.diag(matrix)
    negatives = len(truth) - support
    precision, sensitivity, f1, _ = precision_recall_fscore_support(truth, predicted, labels=labels, average=None,
                                                                     zero_division=np.nan)
    precision = np.where(np.isnan(precision) & (support > 0), 0.0, precision)
    # One-vs-rest curves, one call for all classes that have both positives and negatives.
    onehot = truth[:, None] == labels[None, :]
    ranked = (support > 0) & (support < len(truth))
    roc_auc, pr_auc = np.full(n_classes, np.nan), np.full(n_classes, np.nan)
    if ranked.any():
        roc_auc[ranked] = roc_auc_score(onehot[:, ranked], probabilities[:, ranked], average=None)
        pr_auc[ranked] = average_precision_score(onehot[:, ranked], probabilities[:, ranked], average=None)
    per_class = {
        "sensitivity": sensitivity,
        "specificity": np.where(negatives > 0, (negatives - false_positives) / np.maximum(negatives, 1), np.nan),
        "precision": precision,
        "f1": f1,
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
    }
    values = {
        "accuracy": float(accuracy_score(truth, predicted)),
        # The mean sensitivity of the classes present (scikit-learn's balanced_accuracy_score, without
        # its warning for classes absent from the truth).
        "balanced_accuracy": _nanmean(per_class["sensitivity"]),
        "cohen_kappa": float(cohen_kappa_score(truth, predicted, labels=labels)),
    }
    for name, column in per_class.items():
        column = np.asarray(column, dtype=float)
        values.update({f"{name}/{k}": float(column[k]) for k in labels})
        values[f"macro/{name}"] = _nanmean(column[averaged])
        values[f"weighted/{name}"] = _nanmean(column[averaged], support[averaged].astype(float))
    return values


def stratified_resamples(truth: np.ndarray, n_resamples: int, seed: int,
                         copies: np.ndarray | None = None) -> np.ndarray:
    """Row indices of `n_resamples` bootstrap samples drawn with replacement within each true class,
    so every resample has the class counts of the original set.

    Args:
        truth: label indices, shape (N,).
        n_resamples: how many samples.
        seed: their seed.
        copies: each row's duplicate group (the split's `group` column; -1 or None: unknown). Copies of
            one radiograph are not independent evidence: a class that holds some is resampled by group,
            drawing groups until its count is reached (the last one drawn cut to fit), so the interval is
            not narrowed by counting a copy as a second case. A class without copies is drawn image by
            image; a set without copies gets exactly the resamples it got without `copies`.

    Returns:
        (n_resamples, N) row indices.
    """
    rng = np.random.default_rng(seed)
    strata = [(rows, _copy_groups(rows, copies)) for rows in (np.flatnonzero(truth == label)
                                                               for label in np.unique(truth))]
    return np.stack([np.concatenate([_draw(rng, rows, groups) for rows, groups in strata])
                     for _ in range(n_resamples)])


def _copy_groups(rows: np.ndarray, copies: np.ndarray | None) -> list[np.ndarray] | None:
    """A class's rows by duplicate group, or None when every row stands alone (or groups are unknown)."""
    if copies is None:
        return None
    ids = np.asarray(copies)[rows]
    known = ids[ids >= 0]
    if len(np.unique(known)) == len(known):
        return None
    return [rows[ids == k] for k in np.unique(known)] + [np.array([row]) for row in rows[ids < 0]]


def resampling_unit(truth: np.ndarray, copies: np.ndarray | None) -> str:
    """What the bootstrap draws: "duplicate group" where some class holds copies, else "image"."""
    labels = np.unique(np.asarray(truth))
    has_copies = any(_copy_groups(np.flatnonzero(truth == label), copies) is not None for label in labels)
    return "duplicate group" if has_copies else "image"


def unit_sentence(bootstrap: dict) -> str:
    """What a report adds about a bootstrap record's unit: a sentence when copies were drawn together."""
    if bootstrap.get("unit") != "duplicate group":
        return ""
    return " Copies of one radiograph (found by perceptual hash, as the split finds them) are drawn together."


def _draw(rng: np.random.Generator, rows: np.ndarray, groups: list[np.ndarray] | None) -> np.ndarray:
    if groups is None:
        return rng.choice(rows, len(rows))
    picked = rng.integers(len(groups), size=len(rows))  # enough: every group has a row or more
    drawn = np.concatenate([groups[k] for k in picked])
    return drawn[:len(rows)]


def bootstrap_intervals(truth: np.ndarray, probabilities: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                        level: float = 0.95, averaged: np.ndarray | None = None,
                        copies: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every metric over stratified bootstrap resamples (by duplicate group where
    `copies` says some rows are copies of one radiograph; see stratified_resamples).
    """
    truth = np.asarray(truth)
    samples = [point_metrics(truth[rows], probabilities[rows], averaged)
               for rows in stratified_resamples(truth, n_resamples, seed, copies)]
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name in samples[0]:
        values = np.array([sample[name] for sample in samples])
        values = values[~np.isnan(values)]
        intervals[name] = ((float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
                           if len(values) else (float("nan"), float("nan")))
    return intervals


def clinical_metrics(truth: np.ndarray, probabilities: np.ndarray, classes: list[str], n_resamples: int = 1000,
                     seed: int = 0, present_only: bool = False, copies: np.ndarray | None = None) -> dict:
    """Point estimates and 95 % intervals, overall and per class, as JSON-ready nested dicts.

    Args:
        truth: label indices.
        probabilities: (N, len(classes)) model outputs.
        classes: the model's class names, in output order.
        n_resamples: stratified bootstrap resamples (0: no intervals).
        seed: their seed.
        present_only: report only the classes with true cases in `truth`, and average over them (an
            external folder with a subset of the model's classes); `averaged_over` names them.
        copies: each row's duplicate group (see stratified_resamples); None: every row stands alone.

    Returns:
        {"bootstrap", "overall", "macro", "weighted", "per_class", "averaged_over"}.
    """
    support = np.bincount(np.asarray(truth), minlength=len(classes))
    averaged = np.flatnonzero(support > 0) if present_only else np.arange(len(classes))
    point = point_metrics(truth, probabilities, averaged)
    intervals = (bootstrap_intervals(truth, probabilities, n_resamples, seed, averaged=averaged, copies=copies)
                 if n_resamples else {})

    def entry(name: str) -> dict[str, float | None]:
        low, high = intervals.get(name, (float("nan"), float("nan")))
        return {"value": _json_number(point[name]), "ci_low": _json_number(low), "ci_high": _json_number(high)}

    return {
        "bootstrap": {"resamples": n_resamples, "seed": seed, "level": 0.95, "stratified": True,
                      "unit": resampling_unit(truth, copies)},
        "averaged_over": [classes[k] for k in averaged],
        "overall": {name: entry(name) for name in OVERALL},
        "macro": {name: entry(f"macro/{name}") for name in PER_CLASS},
        "weighted": {name: entry(f"weighted/{name}") for name in PER_CLASS},
        "per_class": {label: {"support": int(support[k]), **{name: entry(f"{name}/{k}") for name in PER_CLASS}}
                      for k, label in enumerate(classes) if k in averaged},
    }


def per_class_frame(result: dict) -> pd.DataFrame:
    """`clinical_metrics` as a table: one row per class, then the macro and weighted averages; each metric
    with its interval (`<metric>`, `<metric>_ci_low`, `<metric>_ci_high`).
    """
    total = sum(values["support"] for values in result["per_class"].values())
    rows = [*result["per_class"].items(), ("macro avg", result["macro"]), ("weighted avg", result["weighted"])]
    records = []
    for label, values in rows:
        record = {"class": label, "support": values.get("support", total)}
        for name in PER_CLASS:
            record.update({name: values[name]["value"], f"{name}_ci_low": values[name]["ci_low"],
                           f"{name}_ci_high": values[name]["ci_high"]})
        records.append(record)
    return pd.DataFrame(records)


def format_interval(entry: dict | None, missing: str = "n/a", interval: str = " ({low}-{high})") -> str:
    """'0.844 (0.733-0.933)' for a `clinical_metrics` entry: the value with 3 decimals, then `interval`
    filled with the bounds (an HTML page passes its own markup); the value alone without an interval
    (--bootstrap 0); `missing` when the metric is undefined.
    """
    if not entry or entry.get("value") is None:
        return missing
    if entry.get("ci_low") is None:
        return _three(entry["value"])
    return _three(entry["value"]) + interval.format(low=_three(entry["ci_low"]), high=_three(entry["ci_high"]))


def _three(value: float) -> str:
    """Three decimals, without the sign of a value that rounds to zero (kappa's -1e-17 is 0.000, not -0.000)."""
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


def _json_number(value: float) -> float | None:
    """NaN is not JSON: an undefined metric is written as null."""
    return None if np.isnan(value) else float(value)
