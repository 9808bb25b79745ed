"""The evaluation's figures, drawn with matplotlib's object API (no pyplot: no global state, no GUI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from cxr import files


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    return files.write_with(path, lambda tmp: figure.savefig(tmp, dpi=110))


def plot_confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts on the left, rows normalised to recall on the right."""
    figure = Figure(figsize=(13, 5.5))
    axes = figure.subplots(1, 2)
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
        ax=axes[0], cmap="Blues", colorbar=False, xticks_rotation=30, values_format="d")
    axes[0].set_title("Test set: counts")
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))
    ConfusionMatrixDisplay(normalised, display_labels=classes).plot(
        ax=axes[1], cmap="Blues", colorbar=False, xticks_rotation=30, values_format=".2f")
    axes[1].set_title("Test set: fraction of each true class")
    return _save(figure, path)


def plot_reliability(before: pd.DataFrame, after: pd.DataFrame, ece: tuple[float, float], temperature: float,
                     path: Path) -> Path:
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
    figure.suptitle("Test set reliability (numbers: cases per bin)")
    return _save(figure, path)
