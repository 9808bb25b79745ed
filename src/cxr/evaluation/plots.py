"""The evaluation's figures, drawn with matplotlib's object API (no pyplot: no global state, no GUI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from cxr import files

__all__ = ["plot_confusion_matrix", "plot_gradcam_grid", "plot_reliability", "plot_roc_pr", "plot_training_curves"]


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    return files.write_with(path, lambda tmp: figure.savefig(tmp, dpi=110))


def plot_confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path, scored: str = "test") -> Path:
    """Counts on the left, rows normalised to recall on the right."""
    figure = Figure(figsize=(13, 5.5))
    axes = figure.subplots(1, 2)
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
        ax=axes[0], cmap="Blues", colorbar=False, xticks_rotation=30, values_format="d")
    axes[0].set_title(f"{scored.capitalize()} set: counts")
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    ConfusionMatrixDisplay(normalised, display_labels=classes).plot(
        ax=axes[1], cmap="Blues", colorbar=False, xticks_rotation=30, values_format=".2f")
    axes[1].set_title(f"{scored.capitalize()} set: fraction of each true class")
    return _save(figure, path)


def plot_reliability(before: pd.DataFrame, after: pd.DataFrame, ece: tuple[float, float], temperature: float,
                     path: Path, scored: str = "test") -> Path:
    """Accuracy against confidence per bin, before and after temperature scaling, with case counts."""
    figure = Figure(figsize=(11, 5))
    axes = figure.subplots(1, 2)
    for ax, table, title in ((axes[0], before, f"Model output (ECE {ece[0]:.3f})"),
                             (axes[1], after, f"Temperature {temperature:.2f} (ECE {ece[1]:.3f})")):
        filled = table[table["count"] > 0]
        width = table["bin_high"] - table["bin_low"]
        ax.bar(filled["bin_low"], filled["accuracy"], width=width[filled.index], align="edge", edgecolor="black",
               color="#4c72b0", label="accuracy in bin")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        for _, row in filled.iterrows():
            ax.annotate(str(int(row["count"])), ((row["bin_low"] + row["bin_high"]) / 2, row["accuracy"]),
                        ha="center", va="bottom", fontsize=7)
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence (top probability)", ylabel="accuracy", title=title)
        ax.legend(loc="upper left")
    figure.suptitle(f"{scored.capitalize()} set reliability (numbers: cases per bin)")
    return _save(figure, path)


def plot_training_curves(history: pd.DataFrame, path: Path) -> Path:
    """Loss, accuracy and learning rate per epoch (history.csv), training and validation."""
    figure = Figure(figsize=(14, 4))
    axes = figure.subplots(1, 3)
    for ax, metric in ((axes[0], "loss"), (axes[1], "accuracy")):
        ax.plot(history["epoch"], history[metric], "o-", label=f"train {metric}")
        ax.plot(history["epoch"], history[f"val_{metric}"], "o-", label=f"validation {metric}")
        ax.set(xlabel="epoch", title=metric)
        ax.legend()
    axes[2].plot(history["epoch"], history["learning_rate"], "o-", color="#55a868")
    axes[2].set(xlabel="epoch", title="learning rate", yscale="log")
    return _save(figure, path)


def plot_roc_pr(truth: np.ndarray, probabilities: np.ndarray, classes: list[str], path: Path,
                scored: str = "test") -> Path:
    """One-vs-rest ROC and precision-recall curves per class (classes without cases in the set are left out)."""
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    figure = Figure(figsize=(12, 5))
    axes = figure.subplots(1, 2)
    for k, name in enumerate(classes):
        positives = truth == k
        if not 0 < positives.sum() < len(truth):
            continue
        RocCurveDisplay.from_predictions(positives, probabilities[:, k], name=name, ax=axes[0])
        PrecisionRecallDisplay.from_predictions(positives, probabilities[:, k], name=name, ax=axes[1])
    axes[0].plot([0, 1], [0, 1], "--", color="gray")
    axes[0].set_title(f"{scored.capitalize()} set ROC, one class against the rest")
    axes[1].set_title(f"{scored.capitalize()} set precision-recall")
    return _save(figure, path)


def plot_gradcam_grid(panels: list[tuple[np.ndarray, str]], path: Path, columns: int = 4) -> Path:
    """Overlays (BGR uint8) with their captions, in rows of `columns`."""
    rows = max(1, -(-len(panels) // columns))
    figure = Figure(figsize=(3.2 * columns, 3.5 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (image, caption) in zip(axes, panels, strict=False):
        ax.imshow(image[..., ::-1])
        ax.set_title(caption, fontsize=8)
    return _save(figure, path)
