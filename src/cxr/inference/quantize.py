"""INT8 ONNX for CPUs: ONNX Runtime's static quantisation, calibrated on a run's validation images and
checked against the fp32 export on its test images before anything is written.

Static (not dynamic) quantisation because a convolutional network's cost is in its convolutions, whose
activations need ranges fixed in advance; QDQ format with uint8 activations and per-channel int8
weights, as ONNX Runtime's documentation recommends for x86 CPUs. Weights use 7 bits (`reduce_range`):
a file is handed on to machines without VNNI too, where 8-bit weights can saturate ONNX Runtime's
16-bit intermediate sums; the check on the test images says what that costs here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cxr import files
from cxr.errors import UserError
from cxr.inference.engines import onnx_predictor
from cxr.inference.export import INPUT_NAME, ExportError, export_onnx
from cxr.model_metadata import with_description
from cxr.run import Run

__all__ = ["CALIBRATION_BATCH", "MIN_AGREEMENT", "quantize_onnx", "quantize_run"]

MIN_AGREEMENT = 0.99
CALIBRATION_BATCH = 16  # images per calibration call (ORT keeps only each tensor's min and max of a call)


class _Calibration:
    """The validation images in batches, as ONNX Runtime's CalibrationDataReader protocol wants them."""

    def __init__(self, images: np.ndarray, batch: int, echo: Callable[[str], None]):
        self.batches = ({INPUT_NAME: np.ascontiguousarray(images[start:start + batch])}
                        for start in range(0, len(images), batch))
        self.count, self.echo, self.seen = len(images), echo, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is not None:
            self.seen += len(batch[INPUT_NAME])
            if self.seen == self.count or self.seen % 200 < CALIBRATION_BATCH:
                self.echo(f"  calibrating: {self.seen}/{self.count} images")
        return batch


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out: str | os.PathLike,
    calibration: np.ndarray,
    check: np.ndarray,
    *,
    min_agreement: float | None = None,
    echo: Callable[[str], None] = print,
    note: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Quantise an fp32 ONNX classifier to INT8 and write it to `out` only if it agrees with the fp32 model.

    Args:
        fp32_path: the fp32 file `cxr export` wrote (its metadata is carried over).
        out: the file to write; must not exist.
        calibration: uint8 (N, size, size, 1) images whose activation ranges fix the quantisation.
        check: uint8 images on which both models' top-1 classes are compared.
        min_agreement: the share of `check` on which they must agree (default MIN_AGREEMENT, 0.99).
        echo: where progress goes.
        note: what to record of the images (where they came from) in the file's description.

    Returns:
        The quantisation record (also in the file's metadata under `cxr` -> `quantization`): agreement,
        images used, and the `path` written.

    Raises:
        ExportError: the INT8 model agrees on fewer than `min_agreement` of the check images (nothing is
            written; the figures are in the message).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out = Path(fp32_path), Path(out)
    min_agreement = MIN_AGREEMENT if min_agreement is None else min_agreement
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another file with --out")
    if len(calibration) == 0 or len(check) == 0:
        raise UserError("INT8 quantisation needs calibration images (the run's val split) and images to check it "
                        "on (its test split); one of them is empty")
    with tempfile.TemporaryDirectory(prefix="cxr-int8-") as name:
        prepared, quantized = Path(name) / "prepared.onnx", Path(name) / "int8.onnx"
        # ONNX shape inference and graph fusions, as ORT advises (symbolic shapes are for transformers)
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        echo(f"quantising {fp32_path.name} to INT8, calibrated on {len(calibration)} images...")
        quantize_static(str(prepared), str(quantized), _Calibration(calibration, CALIBRATION_BATCH, echo),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                        calibrate_method=CalibrationMethod.MinMax)
        echo(f"checking the INT8 model against {fp32_path.name} on {len(check)} images...")
        fp32 = onnx_predictor(fp32_path)
        expected, got = fp32.predict(check), onnx_predictor(quantized).predict(check)
        proto = onnx.load(str(quantized))
    agreement = float(np.mean(expected.argmax(1) == got.argmax(1)))
    record = {"format": "QDQ", "activations": "uint8", "weights": "int8, per channel, 7-bit range",
              "calibration": "MinMax", "calibration_images": len(calibration), "check_images": len(check),
              "top1_agreement": agreement, "min_agreement": min_agreement,
              "max_abs_probability_difference": float(np.abs(expected - got).max()),
              "source_onnx_sha256": files.sha256(fp32_path), **(note or {})}
    if agreement < min_agreement:
        raise ExportError(f"the INT8 model picks the same class as the fp32 model on {agreement:.1%} of "
                          f"{len(check)} check images, under the {min_agreement:.0%} required (largest "
                          f"probability difference {record['max_abs_probability_difference']:.3f}); "
                          f"nothing was written. Use the fp32 model.onnx.")
    onnx.helper.set_model_props(proto, with_description(fp32.metadata, {**fp32.description, "quantization": record}))
    with files.atomic_path(out, new=True) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    echo(f"written {out} ({out.stat().st_size / 1e6:.1f} MB, fp32 {fp32_path.stat().st_size / 1e6:.1f} MB); "
         f"same top-1 class as fp32 on {agreement:.1%} of {len(check)} images")
    return {**record, "path": str(out)}


def quantize_run(
    model: str | os.PathLike,
    out: str | os.PathLike | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """`cxr export --quantize int8`: an INT8 model.int8.onnx beside a run's model.keras.

    The fp32 export is reused when it is current (made from this very model.keras), else made in a
    temporary folder. Calibration uses the run's validation images, the agreement check its test images.

    Args:
        model: a run folder, or a model.keras inside one (the images come from its split).
        out: the file to write (default model.int8.onnx beside the model); must not exist.
        echo: where progress goes.
        progress: show decoding progress.

    Returns:
        The quantisation record, with `path`.

    Raises:
        UserError: the model is not in a run folder, or the run's val or test split is empty.
        ExportError: the INT8 model disagrees with fp32 too often (nothing written).
    """
    from cxr.data.cache import load_split_images, resolve_cache_dir

    model_path = Run.model_of(model)
    run = Run.containing(model_path)
    if run is None:
        raise UserError(f"{model_path} is not in a run folder: INT8 calibration needs the run's validation "
                        "images (give the run folder)")
    out = Path(out) if out is not None else Run.int8_of(model_path)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another file with --out")
    config, split = run.config(), run.split()
    cache_dir = resolve_cache_dir(config.cache_dir, run.path.parent)
    with tempfile.TemporaryDirectory(prefix="cxr-int8-") as name:
        fp32 = _current_fp32(model_path, Path(name), echo)
        images = {part: load_split_images(cache_dir, split.root or config.data, split.frames[part]["file"],
                                          config.image_size,
                                          config.workers, progress, desc=f"decode {part}", echo=echo)
                  for part in ("val", "test")}
        return quantize_onnx(fp32, out, images["val"], images["test"], echo=echo,
                             note={"calibration_split": "val", "check_split": "test", "run": run.path.name})


def _meta(path: Path) -> dict[str, str]:
    import onnx

    return {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}


def _current_fp32(model_path: Path, folder: Path, echo: Callable[[str], None]) -> Path:
    """The fp32 ONNX export of this very model.keras: the one beside it when current, else a new one."""
    beside = model_path.with_suffix(".onnx")
    if beside.is_file() and _meta(beside).get("source_sha256") == files.sha256(model_path):
        return beside
    echo(f"no current fp32 export beside {model_path.name}: exporting one first (not kept)")
    path = folder / "model.onnx"
    export_onnx(model_path, path, echo=echo)
    return path
