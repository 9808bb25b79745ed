"""Evaluate a finished run: loss and accuracy per split, test predictions and reports.

Writes into `<run>/eval/` (or `eval-2/`, `eval-3/`... when re-evaluated, so that an earlier
evaluation is never overwritten).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
)

from cxr import files
from cxr.checkpoint import state_path
from cxr.data.batches import label_indices
from cxr.data.cache import load_split_images, resolve_cache_dir
from cxr.data.split import SPLITS, read_split
from cxr.model import load_model, predict_array


def read_run_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {path.name} is missing")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def training_summary(run_dir: str | os.PathLike) -> dict | None:
    """How far the run's training got (from checkpoints/state.json), for metrics.json."""
    path = state_path(run_dir)
    if not path.is_file():
        return None
    state = json.loads(path.read_text(encoding="utf-8"))
    return {key: state.get(key) for key in ("status", "epoch", "epochs", "best_epoch")}


def cross_entropy(targets: np.ndarray, probabilities: np.ndarray, n_classes: int) -> float:
    """Mean categorical cross-entropy of the predictions (the data term of the training loss)."""
    return float(log_loss(targets, np.clip(probabilities, 1e-7, 1.0), labels=list(range(n_classes))))


def predictions_frame(split: pd.DataFrame, probabilities: np.ndarray, classes: list[str]) -> pd.DataFrame:
    predicted = probabilities.argmax(axis=1)
    frame = pd.DataFrame({
        "file": split["file"].to_numpy(),
        "true_label": split["label"].to_numpy(),
        "predicted_label": np.array(classes)[predicted],
        "correct": split["label"].to_numpy() == np.array(classes)[predicted],
    })
    for i, name in enumerate(classes):
        frame[f"p_{name}"] = probabilities[:, i]
    return frame


def report_frame(report: dict, support: int) -> pd.DataFrame:
    """scikit-learn's report dict as a table; its overall accuracy becomes a row of its own."""
    rows = [{"class": key, **values} for key, values in report.items() if isinstance(values, dict)]
    if "accuracy" in report:
        rows.append({"class": "accuracy", "precision": None, "recall": None,
                     "f1-score": report["accuracy"], "support": support})
    frame = pd.DataFrame(rows, columns=["class", "precision", "recall", "f1-score", "support"])
    return frame.astype({"support": int})


def plot_confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts on the left, rows normalised to recall on the right."""
    figure = Figure(figsize=(13, 5.5))  # no pyplot: no global state, no GUI backend
    axes = figure.subplots(1, 2)
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
        ax=axes[0], cmap="Blues", colorbar=False, xticks_rotation=30, values_format="d")
    axes[0].set_title("Test set: counts")
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    ConfusionMatrixDisplay(normalised, display_labels=classes).plot(
        ax=axes[1], cmap="Blues", colorbar=False, xticks_rotation=30, values_format=".2f")
    axes[1].set_title("Test set: fraction of each true class")
    figure.tight_layout()
    return files.write_with(path, lambda tmp: figure.savefig(tmp, dpi=110))


def evaluate_run(
    run_dir: str | os.PathLike,
    images: dict[str, np.ndarray] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    echo=print,
    out_name: str = "eval",
    splits: tuple[str, ...] = SPLITS,
) -> dict:
    """Evaluate `<run>/model.keras` on the run's splits (train, val, test); return metrics.

    `images` may hold already decoded split arrays (training passes them) to avoid decoding twice.
    An interrupted run is evaluated into `eval-interrupted/` on val and test only, to stop soon.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    classes = list(config["classes"])
    model_path = run_dir / "model.keras"
    model = load_model(model_path)
    size = int(model.input_shape[1])
    batch_size = batch_size or max(32, int(config.get("batch_size", 16)))
    split = read_split(run_dir / "split")
    out = files.new_numbered_dir(run_dir / out_name)  # eval/, then eval-2/...: earlier results stay

    metrics = {"run": run_dir.name, "model": model_path.name, "classes": classes,
               "training": training_summary(run_dir), "splits": {}}
    for name in splits:
        frame = split.frames[name]
        if len(frame) == 0:
            continue
        array = images[name] if images and name in images else load_split_images(
            resolve_cache_dir(config.get("cache_dir", "auto"), run_dir.parent), config["data"], frame["file"],
            size, config.get("workers", 0), progress, desc=f"decode {name}", echo=echo)
        probabilities = predict_array(model, array, batch_size)
        truth = label_indices(frame["label"], classes)
        metrics["splits"][name] = {
            "images": int(len(frame)),
            "loss": cross_entropy(truth, probabilities, len(classes)),
            "accuracy": float(accuracy_score(truth, probabilities.argmax(axis=1))),
        }
        files.write_csv(out / f"predictions_{name}.csv", predictions_frame(frame, probabilities, classes))
        if name == "test":
            test_truth, test_predicted = truth, probabilities.argmax(axis=1)

    if "test" in metrics["splits"]:
        labels = list(range(len(classes)))
        matrix = confusion_matrix(test_truth, test_predicted, labels=labels)
        files.write_csv(out / "confusion_matrix.csv",
                        pd.DataFrame(matrix, index=pd.Index(classes, name="true \\ predicted"), columns=classes),
                        index=True)
        plot_confusion_matrix(matrix, classes, out / "confusion_matrix.png")
        report_args = dict(labels=labels, target_names=classes, zero_division=0)
        files.write_text(out / "classification_report.txt",
                         classification_report(test_truth, test_predicted, digits=4, **report_args))
        report = classification_report(test_truth, test_predicted, output_dict=True, **report_args)
        files.write_csv(out / "classification_report.csv", report_frame(report, len(test_truth)))
    files.write_json(out / "metrics.json", metrics)

    echo(f"evaluation of {model_path} -> {out}")
    for name, values in metrics["splits"].items():
        echo(f"  {name:<5}  {values['images']:>6} images  loss {values['loss']:.4f}  "
             f"accuracy {values['accuracy']:.4f}")
    metrics["eval_dir"] = str(out)
    return metrics
