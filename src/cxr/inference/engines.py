"""A trained classifier ready to run, on Keras or on ONNX Runtime, behind one small record.

Nothing here imports Keras or TensorFlow until the Keras engine is chosen, so `--engine onnx`
runs where only ONNX Runtime is installed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr import files
from cxr.errors import UserError
from cxr.inference.tta import check_tta, with_tta
from cxr.model_metadata import onnx_description, read_description
from cxr.run import INT8_SUFFIX, Run

__all__ = ["ENGINES", "keras_predictor", "load_predictor", "model_classes", "onnx_predictor", "Predictor"]

ENGINES = ("auto", "keras", "onnx", "onnx-int8")


@dataclass(frozen=True)
class Predictor:
    """Class probabilities for a uint8 (N, size, size, 1) batch, and what they mean."""

    predict: Callable[[np.ndarray], np.ndarray]
    classes: list[str]
    image_size: int
    engine: str
    path: Path
    precision: str = "fp32"
    metadata: dict[str, str] = field(default_factory=dict)
    description: dict = field(default_factory=dict)  # what the file says about itself (cxr.model_metadata)


def model_classes(model_path: str | os.PathLike, n_outputs: int, description: dict | None = None) -> list[str]:
    """Class names: from the file's own description, else from the run it sits in; generic names
    (class_0, ...) for an older bare file.
    """
    if description is None:
        description = read_description(model_path)
    classes = description.get("classes")
    if not classes:
        run = Run.containing(model_path)
        classes = run.config().classes if run else None
    if classes and len(classes) == n_outputs:
        return list(classes)
    return [f"class_{i}" for i in range(n_outputs)]


def keras_predictor(path: str | os.PathLike, batch_size: int = 32, precision: str | None = None) -> Predictor:
    """The saved model on Keras, in its own precision or in `precision` (fp32, bf16, fp16)."""
    from cxr.model import load_model, predict_array
    from cxr.precision import model_precision, with_precision

    model = load_model(path)
    if precision is not None:
        model = with_precision(model, precision)
    description = read_description(path)
    return Predictor(predict=lambda images: predict_array(model, images, batch_size),
                     classes=model_classes(path, int(model.output_shape[-1]), description),
                     image_size=int(model.input_shape[1]), engine="keras", path=Path(path),
                     precision=model_precision(model), description=description)


def _onnx_session(path: str | os.PathLike):
    try:
        import onnxruntime
    except ImportError:
        raise UserError("the ONNX engine needs ONNX Runtime: pip install onnxruntime") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path} (make one with: cxr export RUN)")
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"{path}: not a usable ONNX model ({error})") from None


def onnx_predictor(path: str | os.PathLike, batch_size: int = 32) -> Predictor:
    """An exported model on ONNX Runtime (fp32, or INT8 when its description says it was quantised), with
    the class names its metadata carries.
    """
    session = _onnx_session(path)
    metadata = dict(session.get_modelmeta().custom_metadata_map)  # what `cxr export` wrote
    description = onnx_description(metadata)
    model_input = session.get_inputs()[0]
    n_outputs = int(session.get_outputs()[0].shape[-1])
    classes = model_classes(path, n_outputs, description)

    def predict(images: np.ndarray) -> np.ndarray:
        parts = [session.run(None, {model_input.name: np.ascontiguousarray(images[start:start + batch_size])})[0]
                 for start in range(0, len(images), batch_size)]
        return np.concatenate(parts) if parts else np.empty((0, n_outputs), dtype="float32")

    int8 = "quantization" in description
    return Predictor(predict=predict, classes=classes, image_size=int(model_input.shape[1]),
                     engine="onnx-int8" if int8 else "onnx", path=Path(path), precision="int8" if int8 else "fp32",
                     metadata=metadata, description=description)


def load_predictor(
    model: str | os.PathLike,
    engine: str = "auto",
    batch_size: int = 32,
    precision: str | None = None,
    echo: Callable[[str], None] = print,
    calibrated: bool = False,
    tta: str | None = None,
) -> Predictor:
    """Load a model to predict with.

    Args:
        model: a run folder, a .keras file or a .onnx file.
        engine: auto (ONNX Runtime when a current export is there, else Keras), keras or onnx.
        batch_size: images per model call.
        precision: the Keras engine's compute precision (default: the model's own).
        echo: where notes go (an export older than the model, say).
        calibrated: temperature-scale the probabilities with the temperature the newest evaluation of
            this model fitted (its `eval*/calibration.json`, named in `metadata["temperature_file"]`).
        tta: "flip": average each image's probabilities with its mirror image's (`metadata["tta"]`).

    Returns:
        The Predictor: predict(uint8 (N, size, size, 1)) -> probabilities, with classes and size.

    Raises:
        UserError: an unknown engine, an unusable model file, or no temperature for `calibrated`.
    """
    predictor = _load_predictor(model, engine, batch_size, precision, echo)
    if check_tta(tta) != "none":
        predictor = dataclasses.replace(predictor, predict=with_tta(predictor.predict, tta),
                                        metadata={**predictor.metadata, "tta": tta})
    if not calibrated:
        return predictor
    from cxr.inference.temperature import apply_temperature, require_temperature

    temperature, source = require_temperature(predictor.path)
    return dataclasses.replace(predictor, predict=lambda images: apply_temperature(predictor.predict(images),
                                                                                   temperature),
                               metadata={**predictor.metadata, "temperature": str(temperature),
                                         "temperature_file": str(source)})


def _noting_stale(predictor: Predictor, keras_path: Path, echo: Callable[[str], None]) -> Predictor:
    """An ONNX model the user asked for by engine or file, with a note when the .keras file beside it has
    changed since it was exported (a run trained further).
    """
    source = predictor.metadata.get("source_sha256")
    if source and keras_path.is_file() and source != files.sha256(keras_path):
        echo(f"note: {predictor.path} was exported from an earlier {keras_path.name}; export again for the current "
             "model")
    return predictor


def _load_predictor(
    model: str | os.PathLike, engine: str, batch_size: int, precision: str | None, echo: Callable[[str], None]
) -> Predictor:
    """`auto` uses ONNX Runtime when an exported model.onnx of the same .keras file is there and ONNX Runtime
    is installed (faster on a CPU), Keras otherwise; `keras`, `onnx` and `onnx-int8` (model.int8.onnx, never
    chosen by `auto`: quantisation changes the numbers) insist. A `precision` other than fp32 needs Keras.
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if precision not in (None, "fp32"):
        if engine.startswith("onnx") or Path(model).suffix == ".onnx":
            raise UserError(f"ONNX models compute in fp32; {precision} needs the keras engine and a .keras file")
        engine = "keras"
    path = Run.model_of(model)
    keras_path = Run.keras_of(path)
    onnx_path = keras_path.with_suffix(".onnx")
    if path.suffix == ".onnx" and engine == "keras":
        raise UserError(f"{path} is an ONNX model; use --engine onnx or give the .keras file")
    if engine == "onnx-int8" or path.name.endswith(INT8_SUFFIX):
        quantized = Run.int8_of(keras_path)
        if not quantized.is_file():
            raise FileNotFoundError(f"INT8 model not found: {quantized} "
                                    "(make one with: cxr export RUN --quantize int8)")
        return _noting_stale(onnx_predictor(quantized, batch_size), keras_path, echo)
    if engine == "onnx" or path.suffix == ".onnx":
        return _noting_stale(onnx_predictor(onnx_path, batch_size), keras_path, echo)
    if engine == "auto" and onnx_path.is_file():
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return keras_predictor(keras_path, batch_size, precision)
        exported = onnx_predictor(onnx_path, batch_size)
        # Only an export of this very .keras file: a run trained further after its export has a newer one.
        if not keras_path.is_file() or exported.metadata.get("source_sha256") == files.sha256(keras_path):
            return exported
        echo(f"note: {onnx_path} was exported from an earlier {keras_path.name}; using Keras "
             f"(export again to use ONNX Runtime)")
    return keras_predictor(keras_path, batch_size, precision)
