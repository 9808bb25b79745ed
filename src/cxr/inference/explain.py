"""Grad-CAM: which parts of the image drove a class's probability, from the last convolutional block.

The model is split at the backbone's last convolutional activation (DenseNet169's `relu`): a feature
model maps the image to that activation A, and the layers after it (pooling and the head) map A to
probabilities. The class score's gradient with respect to A comes from the active backend
(cxr.backend.gradient); its spatial mean weights A's channels, and the positive part of the weighted
sum, resized to the image, is the map.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd

from cxr import files
from cxr.backend import gradient
from cxr.data.images import read_gray, resize_square
from cxr.errors import ImageError, UserError
from cxr.inference.engines import model_classes
from cxr.model import LAST_CONV_LAYER, load_model
from cxr.run import Run

__all__ = ["explain_files", "gradcam", "last_conv_layer", "overlay", "run_tail", "split_model", "write_png"]


def last_conv_layer(model: keras.Model) -> str:
    """The name of the backbone's last convolutional activation, where Grad-CAM looks."""
    for name in LAST_CONV_LAYER.values():
        if any(layer.name == name for layer in model.layers):
            return name
    known = ", ".join(LAST_CONV_LAYER.values())
    raise UserError(f"{model.name} has none of the known last convolutional layers ({known})")


def split_model(model: keras.Model, layer_name: str | None = None) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """The feature model (image -> activation) and the layers after it, in order."""
    layer_name = layer_name or last_conv_layer(model)
    names = [layer.name for layer in model.layers]
    features = keras.Model(model.input, model.get_layer(layer_name).output, name="gradcam_features")
    return features, model.layers[names.index(layer_name) + 1:]


def run_tail(tail: list[keras.layers.Layer], activation):
    """The layers after the split point, in inference mode: activation to probabilities."""
    for layer in tail:
        activation = layer(activation, training=False)
    return activation


def gradcam(model: keras.Model, images: np.ndarray, class_index: int | list[int] | None = None,
            layer_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heat maps of a batch, from the backbone's last convolutional activation.

    Args:
        model: a cxr classifier (Keras).
        images: uint8 (N, size, size, 1).
        class_index: one class for all images, one per image, or None for each image's predicted class.
        layer_name: the activation to explain (default: the backbone's last, see LAST_CONV_LAYER).

    Returns:
        Heat maps in [0, 1] at the activation's resolution (N, h, w), and the probabilities (N, classes).
    """
    features, tail = split_model(model, layer_name)
    activation = keras.ops.convert_to_numpy(features(images, training=False))
    probabilities = keras.ops.convert_to_numpy(run_tail(tail, activation))
    if class_index is None:
        chosen = probabilities.argmax(axis=1)
    else:
        chosen = np.broadcast_to(np.asarray(class_index), (len(images),))
    selector = np.eye(probabilities.shape[1], dtype="float32")[chosen]
    grads = keras.ops.convert_to_numpy(
        gradient(lambda a: keras.ops.sum(run_tail(tail, a) * selector), activation.astype("float32")))
    weights = grads.mean(axis=(1, 2), keepdims=True)
    maps = np.maximum((weights * activation).sum(axis=-1), 0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0), probabilities


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The heat map (resized to the image) in the JET colour map over the grayscale image, as BGR uint8."""
    heat = cv2.resize(heat.astype("float32"), (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 1 - alpha, colour, alpha, 0)


def write_png(path: Path, image: np.ndarray) -> Path:
    """Atomically write an image as PNG."""
    def save(tmp: Path) -> None:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"could not write {path}")

    return files.write_with(path, save)


def explain_files(model_path: str | os.PathLike, paths: list[str | os.PathLike], out: str | os.PathLike,
                  class_name: str | None = None, echo=print) -> pd.DataFrame:
    """Write `<out>/<image stem>-gradcam.png` for every readable image, and `explanations.csv`.

    Args:
        model_path: a run folder or a .keras file.
        paths: image files and folders (searched recursively, see find_images).
        out: a folder that must not exist yet (earlier explanations are never overwritten).
        class_name: explain this class (default: each image's predicted class).
        echo: where messages go.

    Returns:
        One row per file: prediction, explained class and probability, overlay file, and the reason
        for each unreadable file (which does not stop the others).

    Raises:
        FileExistsError: `out` exists.
        UserError: an unknown class.
    """
    from cxr.inference.predict import find_images

    model_path = Run.model_of(model_path)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder for the explanations")
    model = load_model(model_path)
    classes = model_classes(model_path, int(model.output_shape[-1]))
    if class_name is not None and class_name not in classes:
        raise UserError(f"unknown class {class_name!r}; the model's classes are {', '.join(classes)}")
    size = int(model.input_shape[1])
    rows = []
    out.mkdir(parents=True)
    found = find_images(paths)
    if found.summary():
        echo(found.summary())
    for path in found.files:
        try:
            gray = read_gray(path)
        except ImageError as error:
            rows.append({"file": str(path), "error": error.reason})
            continue
        target = None if class_name is None else classes.index(class_name)
        heat, probabilities = gradcam(model, resize_square(gray, size)[None, ..., None], target)
        explained = int(probabilities[0].argmax()) if target is None else target
        name = f"{Path(path).stem}-gradcam.png"
        if (out / name).exists():  # two inputs with the same name from different folders
            name = f"{Path(path).stem}-{len(rows)}-gradcam.png"
        write_png(out / name, overlay(gray, heat[0]))
        rows.append({"file": str(path), "predicted": classes[int(probabilities[0].argmax())],
                     "probability": float(probabilities[0].max()), "explained_class": classes[explained],
                     "explained_probability": float(probabilities[0][explained]), "overlay": name, "error": ""})
    frame = pd.DataFrame(rows, columns=["file", "predicted", "probability", "explained_class",
                                        "explained_probability", "overlay", "error"]).fillna({"error": ""})
    files.write_csv(out / "explanations.csv", frame)
    echo(f"{(frame['error'] == '').sum()} overlay(s) written to {out}"
         + (f"; {(frame['error'] != '').sum()} unreadable file(s) listed in explanations.csv"
            if (frame["error"] != "").any() else ""))
    return frame
