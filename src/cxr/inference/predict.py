"""Class probabilities for image files and folders, with unreadable files reported, not fatal."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.images import load_image, looks_like_image
from cxr.errors import ImageError
from cxr.inference.engines import Predictor, load_predictor
from cxr.inference.points import decide

__all__ = ["call_column", "find_images", "format_table", "FoundImages", "operating_points_legend", "predict_files"]


@dataclass(frozen=True)
class FoundImages:
    """The files to read, and what a walk of the given folders saw on the way."""

    files: list[Path]
    looked_at: int = 0  # files inside the given folders (hidden files aside)
    not_images: list[Path] = field(default_factory=list)  # of those, files that are not images

    def summary(self) -> str | None:
        """One line about the folders' contents, or None when only files were given."""
        if not self.looked_at:
            return None
        skipped = ""
        if self.not_images:
            names = ", ".join(p.name for p in self.not_images[:3]) + (", ..." if len(self.not_images) > 3 else "")
            skipped = f"; {len(self.not_images)} not image(s) left out ({names})"
        return f"looked at {self.looked_at} file(s) in the given folder(s): " \
               f"{self.looked_at - len(self.not_images)} image(s){skipped}"


def find_images(paths: list[str | os.PathLike]) -> FoundImages:
    """Files as given, and every image file under each folder (recursively, sorted).

    In a folder a file is an image by its suffix (.png, .jpg, .jpeg, .dcm) or, whatever its name, by its
    content (the PNG or JPEG signature, the DICOM preamble): PACS exports often have no extension.
    Hidden files are left out. A path given by name is kept even if it is missing or not an image, so
    that it is reported like any unreadable file.
    """
    found: list[Path] = []
    looked_at, not_images = 0, []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path)
            continue
        for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in candidate.relative_to(path).parts):
                continue
            looked_at += 1
            (found if looks_like_image(candidate) else not_images).append(candidate)
    return FoundImages(found, looked_at, not_images)


def predict_files(
    model: Predictor | str | os.PathLike,
    paths: list[str | os.PathLike],
    batch_size: int = 32,
    engine: str = "auto",
    echo=None,
    operating_points: dict | None = None,
) -> pd.DataFrame:
    """Class probabilities for image files and folders; unreadable files are reported, not fatal.

    Args:
        model: a loaded Predictor, or a run folder, .keras or .onnx file loaded with `engine`.
        paths: image files and folders (searched recursively, see find_images).
        batch_size: images per model call, when `model` is loaded here.
        engine: auto, keras or onnx, when `model` is loaded here.
        echo: if given, told what the walk of the folders found (how many files, how many not images).
        operating_points: per-class thresholds (cxr.inference.points): adds a column `<class>@<threshold>`
            per class that has one, "positive" or "negative", beside the argmax answer.

    Returns:
        One row per file: predicted class, its probability, every class probability, the operating-point
        calls, and an `error` column that says why a file could not be read (its probabilities are empty).
    """
    if not isinstance(model, Predictor):
        model = load_predictor(model, engine, batch_size)
    classes, size = model.classes, model.image_size

    images, rows = [], []
    found = find_images(paths)
    if echo and found.summary():
        echo(found.summary())
    for path in found.files:
        try:
            images.append(load_image(path, size))
            rows.append({"file": str(path), "error": ""})
        except ImageError as error:
            rows.append({"file": str(path), "error": error.reason})
    frame = pd.DataFrame(rows, columns=["file", "error"])
    readable = (frame["error"] == "").to_numpy()
    probabilities = np.full((len(frame), len(classes)), np.nan)
    if images:
        batch = np.stack(images)[..., None]
        probabilities[readable] = model.predict(batch)
    filled = np.nan_to_num(probabilities, nan=-1.0)
    frame.insert(1, "predicted", np.where(readable, np.array(classes)[filled.argmax(axis=1)], ""))
    frame.insert(2, "probability", np.where(readable, filled.max(axis=1), np.nan))
    for i, name in enumerate(classes):
        frame[f"p_{name}"] = probabilities[:, i]
    if operating_points:
        calls = decide(np.nan_to_num(probabilities, nan=-1.0), operating_points)
        for name, point in operating_points["classes"].items():
            if point.get("threshold") is not None:
                frame[call_column(name, point["threshold"])] = [
                    ("positive" if call[name]["positive"] else "negative") if ok else ""
                    for call, ok in zip(calls, readable, strict=True)]
    return frame[[c for c in frame.columns if c != "error"] + ["error"]]


def call_column(name: str, threshold: float) -> str:
    """The table column of one class's operating-point call, e.g. `COVID@0.231`."""
    return f"{name}@{threshold:.3f}"


def operating_points_legend(points: dict) -> list[str]:
    """What each `<class>@<threshold>` column means, one line per class, for below the table."""
    return [f"{call_column(name, point['threshold'])}: positive when p_{name} >= {point['threshold']:.4g}, the "
            f"threshold chosen on validation for sensitivity {point['target_sensitivity']:.2f} "
            f"(reached {point['sensitivity']:.3f} on {point['positives']} positives"
            + (", too few to rely on)" if not point["reliable"] else ")")
            for name, point in points["classes"].items() if point.get("threshold") is not None]


def format_table(frame: pd.DataFrame) -> str:
    """A readable table: file, prediction, probability per class; errors on their own lines."""
    shown = frame.drop(columns=["error"]).copy()
    for column in shown.columns:
        if column == "probability" or column.startswith("p_"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    shown.loc[frame["error"] != "", "predicted"] = "(unreadable)"
    width = int(shown["file"].str.len().max())
    text = shown.to_string(index=False, formatters={"file": lambda f: f"{f:<{width}}"})
    errors = frame[frame["error"] != ""]
    if len(errors):
        text += "\n\nunreadable:\n" + "\n".join(f"  {r.file}: {r.error}" for r in errors.itertuples())
    return text
