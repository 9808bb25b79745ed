"""Export a trained classifier to ONNX, so inference needs ONNX Runtime only (no TensorFlow, no Keras).

tf2onnx converts TensorFlow functions, so the export runs on the TensorFlow backend whatever backend
trained the model (a .keras file is backend-independent). The exported graph is the model in inference
mode (`training=False`: no flip, batch-norm moving statistics) with the same uint8 input, and it is
checked against Keras on probe images before it is written.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cxr import __version__, files
from cxr.errors import UserError
from cxr.model_metadata import describe, read_description, with_description
from cxr.run import Run

__all__ = ["export_onnx", "ExportError", "INPUT_NAME", "OPSET", "probe_images", "TOLERANCE"]

OPSET = 17
TOLERANCE = 1e-4
INPUT_NAME = "image"


class ExportError(UserError, RuntimeError):
    """The export cannot run here, or its result does not match the Keras model."""


def _check_converter() -> None:
    """Fail early, with the fix, when this environment cannot convert."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(f"ONNX export converts a TensorFlow graph, but Keras runs on {keras.backend.backend()}; "
                          "run it with KERAS_BACKEND=tensorflow (the .keras file works on any backend)")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import tensorflow  # noqa: F401
        import tf2onnx  # noqa: F401 (what Keras' model.export(format="onnx") converts with)
    except ImportError as error:
        raise ExportError(f"ONNX export needs TensorFlow, tf2onnx and ONNX Runtime ({error}); "
                          "install them with: pip install 'cxr[tensorflow-cpu,onnx]'") from None


def _inference_graph(model, size: int):
    """The model called with training=False, as a model of its own: Keras' exporter traces a plain call,
    which would otherwise keep the training-only flip (a random op ONNX Runtime does not have).
    """
    import keras

    image = keras.Input((size, size, 1), dtype="uint8", name=INPUT_NAME)
    return keras.Model(image, model(image, training=False), name=f"{model.name}_inference")


def _to_onnx(model, size: int):
    """The ONNX proto of `model`, through Keras' public `Model.export(format="onnx")`."""
    import keras
    import onnx

    spec = keras.InputSpec(shape=(None, size, size, 1), dtype="uint8", name=INPUT_NAME)
    with tempfile.TemporaryDirectory(prefix="cxr-export-") as folder:
        path = Path(folder) / "model.onnx"
        with warnings.catch_warnings():  # Keras' numpy-2 shim for tf2onnx warns about `np.object`
            warnings.simplefilter("ignore", FutureWarning)
            _inference_graph(model, size).export(str(path), format="onnx", input_signature=[spec],
                                                 opset_version=OPSET, verbose=False)
        return onnx.load(str(path))


def probe_images(size: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """Fixed uint8 images that exercise the whole input range: noise and smooth gradients."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (count // 2, size, size, 1), dtype=np.uint8)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    gradients = [np.clip(np.add.outer(ramp * a, ramp * (1 - a)), 0, 255) for a in np.linspace(0, 1, count - count // 2)]
    return np.concatenate([noise, np.stack(gradients).astype(np.uint8)[..., None]])


def export_onnx(
    model_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    classes: list[str] | None = None,
    echo=print,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write `model.onnx` (or `out`) for a .keras model or run folder; never overwrites.

    The file carries its description (cxr.model_metadata: class names, input contract, training record,
    and the temperature and operating points when the .keras file carries them), when the run's training
    ended (if known) and the SHA-256 of the .keras file it came from (so a model trained further after the export is not
    served from a stale ONNX file); `metadata` adds entries of the caller's. Raises
    ExportError when ONNX Runtime's outputs differ from Keras' by more than 1e-4 on the probe images.
    """
    from cxr.inference.engines import model_classes
    from cxr.model import load_model, predict_array
    from cxr.precision import with_precision

    model_path = Run.model_of(model_path)
    out = Path(out) if out is not None else model_path.with_suffix(".onnx")
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another file with --out")
    _check_converter()
    import onnx
    import onnxruntime

    model = with_precision(load_model(model_path), "fp32")  # ONNX export traces float32 models only
    for layer in model.layers:
        # An activity regulariser adds a loss tensor in call() that tf2onnx cannot freeze; it never
        # changes the outputs.
        layer.activity_regularizer = None
    size = int(model.input_shape[1])
    classes = classes or model_classes(model_path, int(model.output_shape[-1]))
    echo(f"exporting {model_path} to ONNX (opset {OPSET})...")
    proto = _to_onnx(model, size)
    run = Run.containing(model_path)
    summary = run.training_summary() if run else None
    carried = read_description(model_path)  # what the .keras file says of itself, temperature and points too
    description = {**describe(classes, size, run=run.path.name if run else None, trained=summary), **carried,
                   "classes": classes, "image_size": size}
    onnx.helper.set_model_props(proto, with_description({
        "source_model": model_path.name, "source_sha256": files.sha256(model_path), "cxr_version": __version__,
        **({"trained": summary["ended"]} if summary and summary.get("ended") else {}), **(metadata or {})},
        description))

    probe = probe_images(size)
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: probe})[0]
    difference = float(np.abs(outputs - predict_array(model, probe)).max())
    if not difference <= TOLERANCE:
        raise ExportError(f"the ONNX model's probabilities differ from Keras' by {difference:.2e} "
                          f"(more than {TOLERANCE:g}); nothing was written")
    with files.atomic_path(out, new=True) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    echo(f"written {out} ({out.stat().st_size / 1e6:.1f} MB); largest difference from Keras on "
         f"{len(probe)} probe images: {difference:.1e}")
    return {"path": str(out), "opset": OPSET, "image_size": size, "classes": classes,
            "max_abs_difference": difference}
