"""`cxr demo`: the whole pipeline on a built-in synthetic dataset, with no download."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cxr.config import resolve
from cxr.data.synthetic import write_synthetic_dataset
from cxr.run import Run
from cxr.training.loop import train

__all__ = ["demo", "demo_data", "DEMO_DEFAULTS"]

DEMO_DEFAULTS = {"per_class": 150, "source_size": 128, "image_size": 64, "epochs": 10, "batch_size": 16,
                 "bn_momentum": 0.9}


def demo_data(runs_dir: str | os.PathLike, per_class: int, size: int, seed: int) -> Path:
    """The phantom dataset for these settings, generated once and reused by later demos.

    It is written to a temporary folder and renamed into place, so a demo killed mid-way never
    leaves a half-made dataset that a later demo would trust.
    """
    parent = Path(runs_dir) / "demo-data"
    folder = parent / f"phantoms-{per_class}x{size}px-seed{seed}"
    if folder.is_dir():
        return folder
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    try:
        write_synthetic_dataset(tmp, per_class=per_class, size=size, seed=seed)
        tmp.rename(folder)
    except OSError:
        if not folder.is_dir():  # a concurrent demo may have won the rename; that is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def demo(
    runs_dir: str = "runs",
    epochs: int = DEMO_DEFAULTS["epochs"],
    per_class: int = DEMO_DEFAULTS["per_class"],
    image_size: int = DEMO_DEFAULTS["image_size"],
    backbone: str = "densenet169",
    seed: int = 0,
    precision: str = "fp32",
    progress: bool = True,
    echo=print,
) -> Path:
    """Generate phantoms, train DenseNet169 from scratch briefly, evaluate; return the run folder."""
    data = demo_data(runs_dir, per_class, DEMO_DEFAULTS["source_size"], seed)
    echo(f"demo dataset: {data} ({per_class} synthetic phantoms per class)")
    config = resolve(
        data=str(data), name="demo", runs_dir=runs_dir, image_size=image_size, epochs=epochs,
        batch_size=DEMO_DEFAULTS["batch_size"], bn_momentum=DEMO_DEFAULTS["bn_momentum"], weights="none",
        backbone=backbone, seed=seed, precision=precision, ask_epoch=0,  # the demo runs unattended to the end
        recipe="reference",  # what the README's demo figure was measured with
    )
    run = Run(train(config, progress=progress, echo=echo))
    evaluation = run.latest_eval()
    echo(
        "\nDemo finished. Look at:\n"
        f"  {evaluation.metrics}  loss and accuracy per split\n"
        f"  {evaluation.figure('confusion_matrix')}  test confusion matrix\n"
        f"  {evaluation.classification_report_text}  precision, recall, F1 per class\n"
        f"  {run.history_path}  one row per epoch\n"
        f"Predict on files:  cxr predict {run.model_path} {data / 'COVID' / 'images'}\n"
        "These are synthetic phantoms: the figures show the software works, not clinical skill."
    )
    return run.path
