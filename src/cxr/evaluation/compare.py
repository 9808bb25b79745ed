"""`cxr compare`: headline metrics of runs side by side (internal test and external), and for two models
scored on the same images, a paired comparison (cxr.evaluation.paired).

A difference of two points between two runs' accuracies on 45 test images each is noise; a paired
comparison on the same images says whether it is more.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.errors import UserError
from cxr.evaluation.calibration import ece_pair
from cxr.evaluation.metrics import HEADLINE, format_interval
from cxr.evaluation.paired import align, comparison_lines, paired_comparison
from cxr.run import EvalDir, Run

__all__ = ["compare", "compare_runs", "evaluations_of", "latest_metrics"]


def latest_metrics(run: str | os.PathLike) -> tuple[EvalDir, dict]:
    """The newest complete evaluation of a run (not one of an interrupted training) and its metrics.

    Raises:
        UserError: the run has no complete evaluation.
    """
    newest = Run(run).latest_eval()
    if newest is None:
        raise UserError(f"{run}: no evaluation with metrics.json (run cxr evaluate {run})")
    return newest, newest.read_metrics()


def evaluations_of(path: str | os.PathLike) -> list[EvalDir]:
    """What one argument of `cxr compare` stands for: an evaluation folder itself, or a run's newest
    internal evaluation followed by its newest external evaluation of each folder name.

    Raises:
        UserError: neither an evaluation folder with metrics.json nor a run with an evaluation.
    """
    path = Path(path)
    if (path / "metrics.json").is_file() and not (path / "config.yaml").is_file():
        return [EvalDir(path)]
    newest, _ = latest_metrics(path)
    external: dict[str, EvalDir] = {}
    for evaluation in Run(path).external_evaluations():  # newest first: keep the first of each name
        external.setdefault(_external_name(evaluation), evaluation)
    return [newest, *sorted(external.values(), key=lambda e: e.name)]


def _column(evaluation: EvalDir) -> dict[str, str]:
    metrics = evaluation.read_metrics() or {}
    scored = metrics.get("scored", "test")
    clinical = metrics.get("clinical") or {}
    column = {"evaluation": evaluation.name, "images scored": str(metrics.get("splits", {}).get(scored, {})
                                                                    .get("images", "n/a")),
              "scored on": (f"external: {metrics['external']['data']}" if metrics.get("kind") == "external"
                            else "the run's test split"),
              "test-time flip": "yes" if metrics.get("tta") == "flip" else "no"}
    for label, group, name in HEADLINE:
        column[label] = format_interval(clinical.get(group, {}).get(name)) if clinical else "n/a (evaluate again)"
    calibration = metrics.get("calibration")
    if calibration:
        before, after = ece_pair(calibration)
        column["ECE before -> after"] = f"{before:.3f} -> {after:.3f}"
    else:
        column["ECE before -> after"] = "n/a"
    column["source warnings"] = str(len((metrics.get("sources") or {}).get("warnings", [])))
    overlap = (metrics.get("external") or {}).get("overlap")
    column["copies of run images left out"] = str(overlap["excluded"]) if overlap else "-"
    return column


def _external_name(evaluation: EvalDir) -> str:
    return (evaluation.read_metrics() or {}).get("external", {}).get("name", evaluation.name)


def _column_name(argument: str | os.PathLike, evaluation: EvalDir) -> str:
    """`<run>` for a run's own evaluation, `<run> <external folder>` for its external ones, and
    `<run>/<evaluation>` for an evaluation folder given by itself.
    """
    run = evaluation.path.parent.name
    if Path(argument) == evaluation.path:
        return f"{run}/{evaluation.name}"
    return f"{run} {evaluation.name}" if evaluation.is_external else run


def compare_runs(runs: list[str | os.PathLike]) -> pd.DataFrame:
    """One column per evaluation, one row per headline metric, as text with intervals.

    Args:
        runs: run folders (each one's newest evaluation, then its newest external evaluation of each
            folder) or evaluation folders.

    Returns:
        The table: rows evaluation, images scored, what they are, the HEADLINE metrics, ECE, source
        warnings, copies left out; one column per evaluation (see _column_name).
    """
    columns: dict[str, dict[str, str]] = {}
    for run in runs:
        for evaluation in evaluations_of(run):
            name = _column_name(run, evaluation)
            columns[name if name not in columns else str(evaluation.path)] = _column(evaluation)
    return pd.DataFrame(columns)


def _predictions_file(evaluation: EvalDir) -> Path:
    return evaluation.predictions((evaluation.read_metrics() or {}).get("scored", "test"))


def paired_lines(a: EvalDir, b: EvalDir, resamples: int, seed: int) -> list[str]:
    """The paired comparison of two evaluations, or why there is none (different image sets).

    Args:
        a: the first evaluation folder.
        b: the second.
        resamples: paired bootstrap resamples.
        seed: their seed.

    Returns:
        The console lines.
    """
    name_a, name_b = f"{a.path.parent.name}/{a.name}", f"{b.path.parent.name}/{b.name}"
    missing = [str(path) for path in map(_predictions_file, (a, b)) if not path.is_file()]
    if missing:
        return [f"no paired comparison of {name_a} and {name_b}: {', '.join(missing)} missing"]
    joined, reason = align(*(pd.read_csv(_predictions_file(e), keep_default_na=False, na_values=[],
                                         dtype={"file": str, "true_label": str, "predicted_label": str})
                             for e in (a, b)),
                           name_a, name_b)
    if joined is None:
        return [f"no paired comparison of {name_a} and {name_b}: {reason}; compare the unpaired table above "
                "(each run on its own images)"]
    classes = sorted(set(joined["true_label"]) | set(joined["predicted_a"]) | set(joined["predicted_b"]))
    index = {name: k for k, name in enumerate(classes)}

    def codes(column: str) -> np.ndarray:
        return joined[column].map(index).to_numpy()

    copies = joined["group"].to_numpy() if "group" in joined else None  # resampled together
    result = paired_comparison(codes("true_label"), codes("predicted_a"), codes("predicted_b"), resamples, seed,
                               copies)
    return [f"paired comparison of {name_a} and {name_b} on the same {result['images']} images:",
            *("  " + line for line in comparison_lines(result, name_a, name_b))]


def compare(paths: list[str | os.PathLike], bootstrap: int | None = None,
            bootstrap_seed: int | None = None) -> list[str]:
    """What `cxr compare` prints: the side-by-side table and, for two runs or evaluations, paired
    comparisons on the images they share (the runs' test splits, and each external folder both have).

    Args:
        paths: run folders or evaluation folders.
        bootstrap: paired bootstrap resamples (default 1000).
        bootstrap_seed: their seed (default 0).

    Returns:
        The lines to print.
    """
    resamples = 1000 if bootstrap is None else int(bootstrap)
    seed = 0 if bootstrap_seed is None else int(bootstrap_seed)
    lines = [compare_runs(paths).to_string(), "",
             "95 % bootstrap intervals in brackets; each column on the images it names"]
    if len(paths) != 2:
        return lines
    first, second = evaluations_of(paths[0]), evaluations_of(paths[1])
    if len(first) == 1 and len(second) == 1:  # two evaluation folders (or runs without external ones)
        pairs = [(first[0], second[0])]
    else:  # two runs: their test splits, and each external folder both were evaluated on
        external = {_external_name(e): e for e in second[1:]}
        pairs = [(first[0], second[0])] + [(e, external[_external_name(e)]) for e in first[1:]
                                           if _external_name(e) in external]
    for a, b in pairs:
        lines += ["", *paired_lines(a, b, resamples, seed)]
    return lines
