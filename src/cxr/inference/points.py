"""Applying operating points: each image's positive/negative call per class at thresholds chosen on validation.

Choosing the thresholds is evaluation's (cxr.evaluation.operating_points, on a run's validation split);
applying them is inference's, so that `cxr predict` and `cxr serve` need nothing of evaluation. Points
come from a run (its newest evaluation of this very model) or from an operating_points.json file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cxr.errors import UserError
from cxr.run import Run

__all__ = ["check_classes", "decide", "describe", "load_operating_points"]


def load_operating_points(source: str | os.PathLike, predictor) -> tuple[dict, Path]:
    """The operating points for a loaded model, from a run folder or an operating_points.json file.

    Args:
        source: a run folder (its newest evaluation of the predictor's model that chose them), an
            operating_points.json, or a model file or `cxr package` folder (the points written into the model).
        predictor: the loaded Predictor (its classes are checked against the points').

    Returns:
        (points, the file they came from).

    Raises:
        UserError: no points in the run for this model, an unreadable file, or points of other classes.
    """
    path = Path(source)
    is_model = path.is_dir() or path.suffix in (".keras", ".onnx")
    run = (Run(path) if path.is_dir() else Run.containing(path)) if is_model else None
    if run is not None and run.config_path.is_file():
        found = run.operating_points(predictor.path)  # chosen for this very model (by its SHA-256)
        if found is None:
            raise UserError(f"{path} has no evaluation with operating points for this model (run: cxr evaluate "
                            f"{run})")
        points, path = found
    elif is_model:  # a model handed on alone (a `cxr package` folder, a model file): the points written into it
        points = predictor.description.get("operating_points")
        if not points:
            raise UserError(f"{path} carries no operating points (cxr package RUN writes them into the model files)")
        path = predictor.path
    else:
        try:
            points = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: not a readable operating_points.json ({error})") from None
        if not isinstance(points, dict) or "classes" not in points:
            raise UserError(f"{path}: not an operating_points.json (no 'classes')")
    check_classes(points, predictor.classes)
    return points, path


def decide(probabilities: np.ndarray, points: dict) -> list[dict[str, dict]]:
    """Each image's one-vs-rest call for every class that has a threshold.

    Args:
        probabilities: shape (N, C) (or (C,) for one image), columns in `points["classes_order"]` order.
        points: `choose_thresholds`' result.

    Returns:
        Per image, {class: {"positive", "threshold", "sensitivity_on_validation", "validation_positives",
        "reliable"}}.

    Raises:
        UserError: the probabilities do not have one column per class of the points.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim == 1:
        probabilities = probabilities[None, :]
    order = points["classes_order"]
    if probabilities.ndim != 2 or probabilities.shape[1] != len(order):
        raise UserError(f"probabilities of shape {probabilities.shape} do not fit operating points for "
                        f"{len(order)} classes ({', '.join(order)})")
    columns = {name: (order.index(name), point) for name, point in points["classes"].items()
               if point.get("threshold") is not None}
    return [{name: {"positive": bool(row[k] >= point["threshold"]), "threshold": point["threshold"],
                    "sensitivity_on_validation": point["sensitivity"], "validation_positives": point["positives"],
                    "reliable": point["reliable"]}
             for name, (k, point) in columns.items()}
            for row in probabilities]


def describe(decision: dict) -> str:
    """One class's decision in words, e.g. "positive at threshold 0.231 (sensitivity 0.950 on validation)".

    Args:
        decision: one class's entry of a `decide` result.

    Returns:
        The sentence, noting an unreliable threshold (too few validation positives).
    """
    call = "positive" if decision["positive"] else "negative"
    reached = decision.get("sensitivity_on_validation")
    basis = "sensitivity n/a on validation" if reached is None else f"sensitivity {reached:.3f} on validation"
    if decision.get("reliable") is False:
        count = decision.get("validation_positives")
        basis += f", from only {count} positive{'' if count == 1 else 's'}: unreliable" if count is not None \
            else ", from too few positives: unreliable"
    return f"{call} at threshold {_format_threshold(decision['threshold'])} ({basis})"


def _format_threshold(threshold: float) -> str:
    """3 decimals, more where they would round a threshold near 0 or 1 to 0.000 or 1.000."""
    text = f"{threshold:.3f}"
    if text in ("0.000", "1.000") and threshold not in (0.0, 1.0):
        text = f"{threshold:.6g}"
    return text


def check_classes(points: dict, classes: list[str]) -> None:
    """Refuse operating points chosen for a model with other classes (or another class order).

    Args:
        points: `choose_thresholds`' result.
        classes: the model's classes, in output order.

    Raises:
        UserError: the classes differ.
    """
    order = list(points.get("classes_order") or [])
    if order != list(classes):
        raise UserError(f"the operating points were chosen for a model with classes {', '.join(order) or 'unknown'}, "
                        f"not this model's {', '.join(classes)}")
