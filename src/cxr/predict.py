"""Class probabilities for image files and folders, with unreadable files reported, not fatal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.images import IMAGE_SUFFIXES, load_image
from cxr.engines import Predictor, load_predictor
from cxr.errors import ImageError


def find_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given, and every image file under each folder (recursively, sorted).

    A path that does not exist is kept, so that it is reported like any unreadable file.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                                and not p.name.startswith(".")))
        else:
            found.append(path)
    return found


def predict_files(
    model: Predictor | str | os.PathLike,
    paths: list[str | os.PathLike],
    batch_size: int = 32,
    engine: str = "auto",
) -> pd.DataFrame:
    """One row per file: predicted class, its probability, every class probability, and an
    `error` column that says why a file could not be read (its probabilities are empty).

    `model` is a loaded Predictor, or a run folder, .keras or .onnx file loaded with `engine`.
    """
    if not isinstance(model, Predictor):
        model = load_predictor(model, engine, batch_size)
    classes, size = model.classes, model.image_size

    images, rows = [], []
    for path in find_images(paths):
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
    return frame[[c for c in frame.columns if c != "error"] + ["error"]]


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
