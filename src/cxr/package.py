"""`cxr package RUN --out DIR`: one folder with what another person needs to use and judge a trained model.

The folder holds the model files (without the optimizer state a run keeps for resuming), each carrying its
description with the run's temperature and operating points (cxr.model_metadata), the model card as
README.md (the name the Hugging Face Hub and GitHub show), the newest evaluation's report, metrics and
tables, any external evaluations' reports and metrics, and the training record. It is not a run folder
(no config.yaml at its top), so `cxr predict DIR` and `cxr serve DIR` use what the model files say about
themselves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr import files
from cxr.errors import UserError
from cxr.evaluation.model_card import CARD_FILE, build_model_card
from cxr.inference.temperature import fitted_tta
from cxr.model_metadata import (
    describe,
    onnx_description,
    read_description,
    with_description,
    write_keras_with_description,
)
from cxr.run import MODEL_FILE, EvalDir, Run

__all__ = ["EVALUATION_FILES", "package_run"]

# What an evaluation folder contributes, where it has it.
EVALUATION_FILES = ("report.html", "metrics.json", "calibration.json", "operating_points.json",
                    "operating_points.csv", "classification_report.txt", "confusion_matrix.png", "confusion_matrix.csv",
                    "metrics_per_class.csv", "metrics_per_source.csv")
CHECKSUMS_FILE = "SHA256SUMS"
TRAINING_FILES = ("config.yaml", "history.csv", "split/dataset.yaml", "split/duplicates.csv", "split/skipped.csv")


def package_run(run_dir: str | os.PathLike, out: str | os.PathLike,
                echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Gather a trained and evaluated run into a new folder `out` (which must not exist).

    Args:
        run_dir: the run folder; its model.keras must have been evaluated (`cxr evaluate RUN`).
        out: the folder to create; it appears complete or not at all.
        echo: where progress goes.

    Returns:
        {"path", "files", "evaluation", "temperature", "operating_points"}.

    Raises:
        FileExistsError: `out` exists.
        UserError: not a trained run, or no evaluation of its current model.
    """
    run, out = Run(run_dir), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder with --out")
    if not run.config_path.is_file() or not run.model_path.is_file():
        raise UserError(f"{run} is not a trained run folder (it needs config.yaml and {MODEL_FILE})")
    evaluations = run.evaluation_of(run.model_path)
    if not evaluations:
        raise UserError(f"{run.model_path} has not been evaluated since it was last trained; run: cxr evaluate {run}")
    evaluation = evaluations[0]
    temperature = run.temperature(run.model_path)
    points = run.operating_points(run.model_path)
    config = run.config()
    source_digest = files.sha256(run.model_path)  # the model.keras the evaluation's records name by SHA-256
    description = {**describe(config.classes, config.image_size, run=run.path.name, trained=run.training_summary(),
                              recipe=config.recipe, backend=(run.environment() or {}).get("backend")),
                   **read_description(run.model_path),
                   "temperature": temperature[0] if temperature else None,
                   "temperature_tta": fitted_tta(temperature[1]) if temperature else None,
                   "operating_points": points[0] if points else None, "evaluation": evaluation.name,
                   "source_model_sha256": source_digest}
    description = {key: value for key, value in description.items() if value is not None}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = _gather(run, evaluation, description, staging, echo)
        written.append(_write_checksums(staging, written))
        os.chmod(staging, files.DIR_MODE)
        os.replace(staging, out)  # the folder appears whole, or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    echo(f"packaged {run} into {out}: {', '.join(written)}")
    echo(f"use it with: cxr predict {out} IMAGE...   or: cxr serve {out}")
    return {"path": str(out), "files": written, "evaluation": str(evaluation.path),
            "temperature": description.get("temperature"), "operating_points": bool(points)}


def _gather(run: Run, evaluation: EvalDir, description: dict, folder: Path, echo: Callable[[str], None]) -> list[str]:
    written = []

    def copy(source: Path, name: str) -> None:
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folder / name)
            written.append(name)

    _model_without_optimizer(run.model_path, folder / "plain.keras")
    write_keras_with_description(folder / "plain.keras", folder / MODEL_FILE, description)
    (folder / "plain.keras").unlink()
    written.append(MODEL_FILE)
    exports = [path for path in (run.model_path.with_suffix(".onnx"), Run.int8_of(run.model_path)) if path.is_file()]
    if exports:  # each hashed once: model.keras files are 50-150 MB
        digests = description["source_model_sha256"], files.sha256(folder / MODEL_FILE)
        for onnx_file in exports:
            written += _onnx_copy(run, onnx_file, folder, description, digests, echo)
    # The card from the evaluation's own figures (an evaluation from before cards existed has none yet).
    files.write_text(folder / "README.md", build_model_card(evaluation.read_metrics(), run.config().to_dict(),
                                                            run.split(), run.history(), run.environment()))
    written.append("README.md")
    for name in EVALUATION_FILES:
        copy(evaluation.path / name, name)
    for external in run.evaluation_of(run.model_path, external=True):
        for name in ("report.html", "metrics.json", CARD_FILE):
            copy(external.path / name, f"{external.name}/{name}")
    for name in TRAINING_FILES:
        copy(run.path / name, f"training/{name}")
    return written


def _write_checksums(folder: Path, names: list[str]) -> str:
    """SHA256SUMS: every packaged file's SHA-256, in the format `sha256sum -c SHA256SUMS` checks, so that a
    recipient can tell the files arrived as written. (The evaluation's records name the run's own
    model.keras, which kept the optimizer; the packaged one records that digest as source_model_sha256.)
    """
    lines = [f"{files.sha256(folder / name)}  {name}\n" for name in sorted(names)]
    files.write_text(folder / CHECKSUMS_FILE, "".join(lines))
    return CHECKSUMS_FILE


def _model_without_optimizer(source: Path, out: Path) -> None:
    """The model alone: a run's model.keras also holds the optimizer's state for resuming (Adamax keeps two
    values per weight, so DenseNet169's file is about three times its weights), which a user of the model
    does not need.
    """
    from cxr.model import load_model

    load_model(source, compile=False).save(out)


def _onnx_copy(run: Run, onnx_file: Path, folder: Path, description: dict, digests: tuple[str, str],
               echo: Callable[[str], None]) -> list[str]:
    """The run's ONNX export (fp32 or INT8) with the same description, when it is an export of the current
    model.keras; an INT8 file keeps its quantisation record. `digests`: the SHA-256 of the run's model.keras
    and of the packaged one.
    """
    try:
        import onnx
    except ImportError:
        echo(f"note: {onnx_file} left out: rewriting its metadata needs the onnx package (pip install 'cxr[onnx]')")
        return []
    proto = onnx.load(str(onnx_file))
    props = {prop.key: prop.value for prop in proto.metadata_props}
    source, packaged = digests
    if props.get("source_sha256") != source:
        echo(f"note: {onnx_file} left out: it was exported from an earlier {MODEL_FILE} "
             f"(export again: cxr export {run})")
        return []
    quantization = onnx_description(props).get("quantization")
    props = with_description({**props, "source_sha256": packaged},
                             {**description, **({"quantization": quantization} if quantization else {})})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(folder / onnx_file.name))
    return [onnx_file.name]

