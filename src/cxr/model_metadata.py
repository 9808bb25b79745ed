"""What a model file says about itself, so that a model.keras or model.onnx copied alone can still be used.

The description (class names, the input contract, where and how the model was trained and, when it is
handed on by `cxr package`, its temperature and operating points) travels inside the file, in each format's
own metadata:

- ONNX: the model's `metadata_props`, under the key "cxr" (JSON), beside the plain "classes" and
  "image_size" entries `cxr export` has always written.
- .keras: the archive's own `metadata.json`, under the key "cxr". Keras writes that member (its version and
  the save date) and never reads it when loading, so the file still loads with `safe_mode=True` and no custom
  objects, by any Keras 3. The alternatives were worse: a layer or model config cannot hold free data without
  a custom class (which safe_mode and other readers refuse), a model name is too small, and an extra archive
  member makes Keras open an assets store it does not need.

The file describes itself once, when it is written (training's model.keras, `cxr package`, `cxr export`):
a run's model.keras is never rewritten afterwards, because evaluations, exports and served model ids name
it by its SHA-256. Inside a run, the run's newest evaluation stays the source of the temperature and the
operating points; the description is what a bare file falls back on.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from cxr import __version__, files

__all__ = ["FORMAT", "INPUT_CONTRACT", "KEY", "describe", "read_description", "with_description",
           "write_keras_with_description"]

KEY = "cxr"
FORMAT = 1
_KERAS_METADATA = "metadata.json"  # keras.src.saving.saving_lib._METADATA_FILENAME
INPUT_CONTRACT = ("uint8 grayscale images of shape (size, size, 1), values 0-255, already resized to size x size; "
                  "the model converts to float, repeats the channel and applies the ImageNet normalisation itself")
NOTICE = "Research use only. Not a medical device; must not be used for diagnosis."


def describe(classes: list[str], image_size: int, *, run: str | None = None, trained: dict | None = None,
             recipe: str | None = None, backend: str | None = None, temperature: float | None = None,
             operating_points: dict | None = None) -> dict[str, Any]:
    """The description a model file carries.

    Args:
        classes: the output columns' class names, in order.
        image_size: the side of the square uint8 input.
        run: the run folder's name the model came from.
        trained: how training ended (Run.training_summary()).
        recipe: the recipe it was trained with (cxr.config.RECIPES).
        backend: the Keras backend it was trained on.
        temperature: the temperature an evaluation fitted for this model (only for a handed-on copy).
        operating_points: the thresholds an evaluation chose for it (cxr.evaluation.operating_points).

    Returns:
        A JSON-able dict (None entries left out).
    """
    description = {"format": FORMAT, "classes": list(classes), "image_size": int(image_size),
                   "input": {"dtype": "uint8", "shape": [int(image_size), int(image_size), 1],
                             "contract": INPUT_CONTRACT},
                   "notice": NOTICE, "cxr_version": __version__, "run": run, "trained": trained,
                   "recipe": recipe, "backend": backend,
                   "temperature": None if temperature is None else float(temperature),
                   "operating_points": operating_points}
    return {key: value for key, value in description.items() if value is not None}


def write_keras_with_description(source: str | os.PathLike, out: str | os.PathLike,
                                 description: dict[str, Any]) -> Path:
    """Copy the .keras file `source` to `out` (atomically) with `description` in its metadata.json.

    Every other member is copied byte for byte, with its own compression.

    Raises:
        ValueError: `source` is not a .keras archive.
    """
    source, out = Path(source), Path(out)
    if not zipfile.is_zipfile(source):
        raise ValueError(f"{source} is not a .keras archive")
    with zipfile.ZipFile(source) as archive, files.atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w") as copy:
            for info in archive.infolist():
                data = archive.read(info)
                if info.filename == _KERAS_METADATA:
                    metadata = json.loads(data or b"{}")
                    metadata[KEY] = description
                    data = json.dumps(metadata, indent=1).encode()
                copy.writestr(info, data)
    return out


def read_description(path: str | os.PathLike) -> dict[str, Any]:
    """The description a .keras or .onnx file carries; {} when it carries none (an older or foreign file).

    An ONNX file exported before descriptions existed still gives its "classes" and "image_size".
    """
    path = Path(path)
    try:
        if path.suffix == ".onnx":
            return _read_onnx(path)
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(_KERAS_METADATA))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}
    description = metadata.get(KEY) if isinstance(metadata, dict) else None
    return description if isinstance(description, dict) else {}


def _read_onnx(path: Path) -> dict[str, Any]:
    try:
        import onnx
    except ImportError:
        return {}
    props = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
    return onnx_description(props)


def onnx_description(props: dict[str, str]) -> dict[str, Any]:
    """The description in an ONNX file's metadata_props (or its older "classes"/"image_size" entries)."""
    if KEY in props:
        try:
            description = json.loads(props[KEY])
        except ValueError:
            description = None
        if isinstance(description, dict):
            return description
    older = {}
    if "classes" in props:
        older["classes"] = json.loads(props["classes"])
    if "image_size" in props:
        older["image_size"] = int(props["image_size"])
    return older


def with_description(props: dict[str, str], description: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata_props with the description added (and its classes and size as plain entries)."""
    return {**props, KEY: json.dumps(description), "classes": json.dumps(description["classes"]),
            "image_size": str(description["image_size"])}
