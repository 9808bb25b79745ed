"""Operating points: a probability threshold per class, chosen on validation for a target sensitivity.

A softmax argmax says which class is likeliest, not whether a finding can be ruled out. For screening,
each class gets its own one-vs-rest threshold (an image is positive for class k when p_k >= threshold),
chosen on the validation split as the highest threshold whose sensitivity there reaches the target, then
judged on test (or external) data: sensitivity, specificity, PPV and NPV with stratified-bootstrap 95 %
intervals. The threshold is never tuned on the data it is judged on.

Fewer than MIN_POSITIVES validation positives of a class still give a threshold, marked unreliable: with
12 positives one more or one fewer miss moves the sensitivity by 8 points. Everything here is plain
computation on arrays and returns JSON-ready dicts (None where a value is undefined).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxr.errors import UserError
from cxr.evaluation.metrics import format_interval, resampling_unit, stratified_resamples
from cxr.inference.points import check_classes

__all__ = ["DEFAULT_TARGET", "MIN_POSITIVES", "choose_thresholds", "default_targets", "evaluate_at_thresholds",
           "parse_targets", "results_frame", "summary_lines"]

DEFAULT_TARGET = 0.95
MIN_POSITIVES = 20
RULE = ("the highest threshold whose sensitivity on the validation split reaches the target (an image is "
        "positive for a class when its probability for that class is at least the threshold)")
_LEVEL = 0.95
# Float error must not cost a rank: 0.28 * 25 is 7.000000000000001, whose plain ceil is 8, not 7.
_EPSILON = 1e-9
_FORM = "CLASS=TARGET[,CLASS=TARGET...] with each TARGET a sensitivity in (0, 1], e.g. 'COVID=0.97,Normal=0.9'"


def default_targets(classes: list[str]) -> dict[str, float]:
    """DEFAULT_TARGET for every class but one named Normal (any case): ruling out "normal" is no screening aim.

    Args:
        classes: the model's classes, in output order.

    Returns:
        {class: target sensitivity}, in model class order.
    """
    return {name: DEFAULT_TARGET for name in classes if name.strip().lower() != "normal"}


def parse_targets(text: str | None, classes: list[str]) -> dict[str, float]:
    """The default targets with the overrides of a setting such as "COVID=0.97,Viral Pneumonia=0.9".

    Items are separated by commas and split on their last "=", so class names may contain spaces (and
    "="); spaces around names and values are ignored, and so are empty items. A class named here that has
    no default (Normal) is added. A name that matches no class exactly may match one ignoring case.

    Args:
        text: the setting; None or blank gives `default_targets(classes)`.
        classes: the model's classes, in output order.

    Returns:
        {class: target sensitivity}, in model class order.

    Raises:
        UserError: an item that is not CLASS=TARGET, a target outside (0, 1], a class the model does not
            have, or a class given twice.
    """
    targets = default_targets(classes)
    if text is None or not text.strip():
        return targets
    given: set[str] = set()
    for item in text.split(","):
        if not item.strip():
            continue
        name, equals, value = item.rpartition("=")
        name = name.strip()
        if not equals or not name:
            raise UserError(f"operating point {item.strip()!r}: expected {_FORM}")
        target = _parse_target(value.strip(), item.strip())
        match = _match_class(name, classes)
        if match in given:
            raise UserError(f"operating point {item.strip()!r}: class {match!r} is given twice")
        given.add(match)
        targets[match] = target
    return {name: targets[name] for name in classes if name in targets}


def _parse_target(value: str, item: str) -> float:
    try:
        target = float(value)
    except ValueError:
        target = math.nan
    if not 0 < target <= 1:  # NaN fails too
        raise UserError(f"operating point {item!r}: target {value!r} is not a sensitivity in (0, 1]; "
                        f"expected {_FORM}")
    return target


def _match_class(name: str, classes: list[str]) -> str:
    if name in classes:
        return name
    folded = [known for known in classes if known.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise UserError(f"operating point for unknown class {name!r}; the model's classes are: {', '.join(classes)}")


def choose_thresholds(truth: np.ndarray, probabilities: np.ndarray, classes: list[str],
                      targets: dict[str, float]) -> dict:
    """A threshold per targeted class from the validation split, with what it reaches there.

    The threshold is the highest one at which at least `target` of the class's positives have p >= threshold:
    the ceil(target * positives)-th highest positive score. Ties among the positives can make the
    sensitivity reached exceed the target; it is reported as reached, never as the target.

    Args:
        truth: true label indices of the validation images, shape (N,).
        probabilities: the model's probabilities for them, shape (N, C), columns in `classes` order.
        classes: the model's classes, in output order.
        targets: {class: target sensitivity in (0, 1]}, e.g. from `parse_targets`.

    Returns:
        {"chosen_on": "val", "rule", "min_positives", "classes_order": all model classes, "classes":
        {class: {"target_sensitivity", "threshold", "sensitivity", "specificity", "positives", "negatives",
        "reliable", "note"}}} for the targeted classes in model class order; threshold, sensitivity and
        specificity are None where undefined, note is None for a reliable threshold.

    Raises:
        UserError: a target for a class the model does not have, or a target outside (0, 1].
    """
    truth, probabilities = _check_arrays(truth, probabilities, classes)
    for name, target in targets.items():
        if name not in classes:
            raise UserError(f"operating point for unknown class {name!r}; the model's classes are: "
                            f"{', '.join(classes)}")
        if not 0 < target <= 1:
            raise UserError(f"operating point for {name!r}: target {target!r} is not a sensitivity in (0, 1]")
    chosen = {}
    for k, name in enumerate(classes):
        if name not in targets:
            continue
        target = float(targets[name])
        scores, positive = probabilities[:, k], truth == k
        n_positive, n_negative = int(positive.sum()), int((~positive).sum())
        point = {"target_sensitivity": target, "threshold": None, "sensitivity": None, "specificity": None,
                 "positives": n_positive, "negatives": n_negative, "reliable": False, "note": None}
        if n_positive == 0:
            point["note"] = "no validation positives of this class: no threshold can be chosen"
            chosen[name] = point
            continue
        ranked = np.sort(scores[positive])[::-1]
        rank = min(max(math.ceil(target * n_positive - _EPSILON), 1), n_positive)
        threshold = float(ranked[rank - 1])
        point["threshold"] = threshold
        point["sensitivity"] = float((scores[positive] >= threshold).sum() / n_positive)
        if n_negative:
            point["specificity"] = float((scores[~positive] < threshold).sum() / n_negative)
        point["reliable"] = n_positive >= MIN_POSITIVES
        if not point["reliable"]:
            point["note"] = (f"only {n_positive} validation positive{'s' if n_positive != 1 else ''}: the sensitivity "
                             f"reached on validation is too uncertain to rely on (fewer than {MIN_POSITIVES})")
        chosen[name] = point
    return {"chosen_on": "val", "rule": RULE, "min_positives": MIN_POSITIVES, "classes_order": list(classes),
            "classes": chosen}


def evaluate_at_thresholds(truth: np.ndarray, probabilities: np.ndarray, classes: list[str], points: dict,
                           n_resamples: int = 1000, seed: int = 0, copies: np.ndarray | None = None) -> dict:
    """Sensitivity, specificity, PPV and NPV at each chosen threshold on another set (test, external).

    The set may lack some classes entirely (external data with a subset of them): such a class has no
    sensitivity, but its specificity and NPV are still defined (and its PPV, 0, if anything is called
    positive for it). Intervals are
    percentile 95 % intervals over `stratified_resamples(truth, n_resamples, seed)`; a metric undefined in
    some resamples (PPV with nothing predicted positive) gets its interval from the others.

    Args:
        truth: true label indices, shape (N,).
        probabilities: shape (N, C), columns in `classes` order.
        classes: the model's classes, in output order (the order the points were chosen in).
        points: `choose_thresholds`' result.
        n_resamples: bootstrap resamples; 0 gives no intervals (ci_low and ci_high None).
        seed: seed of the resampling.
        copies: each row's duplicate group: copies are resampled together (see stratified_resamples).

    Returns:
        {"bootstrap": {"resamples", "seed", "level", "stratified"}, "classes": {class: {"target_sensitivity",
        "reliable", "threshold", "positives", "negatives", "predicted_positive", "sensitivity", "specificity",
        "ppv", "npv"}}} for the classes that have a threshold, each metric as {"value", "ci_low", "ci_high"}
        with None where undefined.

    Raises:
        UserError: the points were chosen for a model with other classes.
    """
    check_classes(points, classes)
    truth, probabilities = _check_arrays(truth, probabilities, classes)
    rows = (stratified_resamples(truth, n_resamples, seed, copies) if n_resamples and len(truth)
            else np.empty((0, len(truth)), dtype=int))
    results = {}
    for name, point in points["classes"].items():
        if point.get("threshold") is None:
            continue
        k = classes.index(name)
        threshold = point["threshold"]
        positive, predicted = truth == k, probabilities[:, k] >= threshold
        values = _rates(positive[None, :], predicted[None, :])
        samples = _rates(positive[rows], predicted[rows])
        results[name] = {
            "target_sensitivity": point["target_sensitivity"], "reliable": point["reliable"],
            "threshold": threshold, "positives": int(positive.sum()), "negatives": int((~positive).sum()),
            "predicted_positive": int(predicted.sum()),
            **{metric: _entry(values[metric][0], samples[metric]) for metric in values},
        }
    return {"bootstrap": {"resamples": int(n_resamples), "seed": int(seed), "level": _LEVEL, "stratified": True,
                          "unit": resampling_unit(truth, copies)},
            "classes": results}


def _rates(positive: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric per row of (R, N) boolean arrays, NaN where its denominator is 0."""
    true_pos = (positive & predicted).sum(axis=1)
    false_pos = (~positive & predicted).sum(axis=1)
    false_neg = (positive & ~predicted).sum(axis=1)
    true_neg = (~positive & ~predicted).sum(axis=1)

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)

    return {"sensitivity": ratio(true_pos, true_pos + false_neg), "specificity": ratio(true_neg, true_neg + false_pos),
            "ppv": ratio(true_pos, true_pos + false_pos), "npv": ratio(true_neg, true_neg + false_neg)}


def _entry(value: float, samples: np.ndarray) -> dict[str, float | None]:
    samples = samples[~np.isnan(samples)]
    tail = (1 - _LEVEL) / 2 * 100
    low, high = ((float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail)))
                 if len(samples) else (None, None))
    return {"value": None if np.isnan(value) else float(value), "ci_low": low, "ci_high": high}


def _check_arrays(truth: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    truth, probabilities = np.asarray(truth), np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape != (len(truth), len(classes)):
        raise ValueError(f"probabilities of shape {probabilities.shape} for {len(truth)} labels and "
                         f"{len(classes)} classes")
    if not np.isfinite(probabilities).all():  # NaN sorts first and would pass every threshold
        raise ValueError("probabilities hold values that are not finite")
    return truth, probabilities


def results_frame(block: dict) -> pd.DataFrame:
    """An evaluation's operating points as a table: per class the target, the threshold chosen on
    validation and what it reached there, then sensitivity, specificity, PPV and NPV on the scored set
    with their intervals (`<metric>`, `<metric>_ci_low`, `<metric>_ci_high`).

    Args:
        block: metrics.json's `operating_points` ({"chosen", "results", "scored_on"}).

    Returns:
        One row per class with a target.
    """
    records = []
    for name, point in block["chosen"]["classes"].items():
        record = {"class": name, "target_sensitivity": point["target_sensitivity"], "threshold": point["threshold"],
                  "val_positives": point["positives"], "val_sensitivity": point["sensitivity"],
                  "reliable": point["reliable"], "scored_on": block["scored_on"]}
        result = block["results"]["classes"].get(name)
        for metric in ("sensitivity", "specificity", "ppv", "npv"):
            entry = (result or {}).get(metric) or {}
            record.update({metric: entry.get("value"), f"{metric}_ci_low": entry.get("ci_low"),
                           f"{metric}_ci_high": entry.get("ci_high")})
        record["note"] = point.get("note") or ""
        records.append(record)
    return pd.DataFrame(records)


def summary_lines(block: dict | None) -> list[str]:
    """The console lines for an evaluation's operating points (none when it has none)."""
    if not block:
        return []
    lines = [f"  operating points (thresholds chosen on val, measured on {block['scored_on']}):"]
    for name, point in block["chosen"]["classes"].items():
        result = block["results"]["classes"].get(name)
        if result is None:
            lines.append(f"    {name}: no threshold ({point.get('note') or 'none chosen'})")
            continue
        measured = ", ".join(f"{label} {format_interval(result[metric], missing='undefined')}"
                             for label, metric in (("sensitivity", "sensitivity"), ("specificity", "specificity"),
                                                   ("PPV", "ppv"), ("NPV", "npv")))
        lines.append(f"    {name} >= {point['threshold']:.3f} (target {point['target_sensitivity']:.2f}, "
                     f"{point['sensitivity']:.3f} of {point['positives']} on val): {measured}")
        if point.get("note"):
            lines.append(f"      note: {point['note']}")
    if block.get("note"):
        lines.append(f"    note: {block['note']}")
    return lines
