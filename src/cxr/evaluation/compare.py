"""`cxr compare`: the headline test metrics of several runs side by side, with their 95 % intervals."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cxr.errors import UserError
from cxr.evaluation.metrics import HEADLINE, format_interval
from cxr.run import EvalDir, Run

__all__ = ["compare_runs", "latest_metrics"]


def latest_metrics(run: str | os.PathLike) -> tuple[EvalDir, dict]:
    """The newest complete evaluation of a run (not one of an interrupted training) and its metrics.

    Raises:
        UserError: the run has no complete evaluation.
    """
    newest = Run(run).latest_eval()
    if newest is None:
        raise UserError(f"{run}: no evaluation with metrics.json (run cxr evaluate {run})")
    return newest, newest.read_metrics()


def compare_runs(runs: list[str | os.PathLike]) -> pd.DataFrame:
    """One column per run, one row per headline metric (test split), as text with intervals.

    Args:
        runs: run folders; each one's newest evaluation is read.

    Returns:
        The table: rows evaluation, test images, the HEADLINE metrics, ECE, source warnings.
    """
    columns = {}
    for run in runs:
        evaluation, metrics = latest_metrics(run)
        clinical = metrics.get("clinical") or {}
        column = {"evaluation": evaluation.name,
                  "test images": str(metrics.get("splits", {}).get("test", {}).get("images", "n/a"))}
        for label, group, name in HEADLINE:
            column[label] = format_interval(clinical.get(group, {}).get(name)) if clinical else "n/a (evaluate again)"
        calibration = metrics.get("calibration")
        column["ECE before -> after"] = (f"{calibration['test_ece_before']:.3f} -> {calibration['test_ece_after']:.3f}"
                                         if calibration else "n/a")
        column["source warnings"] = str(len((metrics.get("sources") or {}).get("warnings", [])))
        name = Path(run).name
        columns[name if name not in columns else str(run)] = column
    return pd.DataFrame(columns)
