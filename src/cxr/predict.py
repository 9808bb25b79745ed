"""Class probabilities for image files and folders, with unreadable files reported, not fatal."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import yaml

from cxr.data.images import IMAGE_SUFFIXES, load_image
from cxr.errors import ImageError
from cxr.model import load_model, predict_array


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


def model_classes(model_path: str | os.PathLike, n_outputs: int) -> list[str]:
    """Class names from the run's config.yaml beside the model; generic names if there is none."""
    config_path = Path(model_path).parent / "config.yaml"
    if config_path.is_file():
        classes = (yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("classes")
        if classes and len(classes) == n_outputs:
            return list(classes)
    return [f"class_{i}" for i in range(n_outputs)]


def predict_files(
    model: keras.Model | str | os.PathLike,
    paths: list[str | os.PathLike],
    classes: list[str] | None = None,
    batch_size: int = 32,
) -> pd.DataFrame:
    """One row per file: predicted class, its probability, every class probability, and an
    `error` column that says why a file could not be read (its probabilities are empty)."""
    if not isinstance(model, keras.Model):
        model_path = model
        model = load_model(model_path)
        classes = classes or model_classes(model_path, model.output_shape[-1])
    classes = classes or [f"class_{i}" for i in range(model.output_shape[-1])]
    size = int(model.input_shape[1])

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
        probabilities[readable] = predict_array(model, batch, batch_size)
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
