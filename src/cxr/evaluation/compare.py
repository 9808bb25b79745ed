"""`cxr compare`: the headline test metrics of several runs side by side, with their 95 % intervals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from cxr.errors import UserError
from cxr.evaluation.metrics import format_interval
from cxr.run import METRICS_FILE, evaluation_dirs

HEADLINE = [("accuracy", "overall", "accuracy"), ("balanced accuracy", "overall", "balanced_accuracy"),
            ("macro F1", "macro", "f1"), ("macro ROC AUC", "macro", "roc_auc"), ("macro PR AUC", "macro", "pr_auc"),
            ("Cohen's kappa", "overall", "cohen_kappa")]


def latest_metrics(run: str | os.PathLike) -> tuple[Path, dict]:
    """The newest complete evaluation of a run (eval/, eval-2/, ...; not one of an interrupted training)."""
    run = Path(run)
    folders = evaluation_dirs(run, interrupted=False)
    if not folders:
        raise UserError(f"{run}: no evaluation with metrics.json (run cxr evaluate {run})")
    return folders[0], json.loads((folders[0] / METRICS_FILE).read_text(encoding="utf-8"))


def compare_runs(runs: list[str | os.PathLike]) -> pd.DataFrame:
    """One column per run, one row per headline metric (test split), as text with intervals."""
    columns = {}
    for run in runs:
        folder, metrics = latest_metrics(run)
        clinical = metrics.get("clinical") or {}
        column = {"evaluation": folder.name,
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
