"""The real DenseNet169 through the real command line: train -> evaluate -> predict, and the demo.

Slow by nature (graph building dominates); CI runs them under TensorFlow and JAX.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import only_run

from cxr import allocator
from cxr.data.split import read_split
from cxr.data.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow


def cxr(*args: str, backend: str = "tensorflow", cwd: Path | None = None, timeout: int = 900, **env: str) -> str:
    """Run `python -m cxr ARGS` as a user would, with no standard input; return its stdout."""
    env = {**os.environ, "KERAS_BACKEND": backend, **env}
    result = subprocess.run([sys.executable, "-m", "cxr", *args], capture_output=True, text=True, env=env,
                            cwd=cwd, stdin=subprocess.DEVNULL, timeout=timeout)
    assert result.returncode == 0, f"cxr {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_train_evaluate_predict_on_the_real_sample(sample, tmp_path, backend):
    runs = tmp_path / "runs"
    # Training takes cxr's default allocator (tcmalloc where installed, as on CI); the re-evaluation below
    # (TensorFlow's) runs with the system's, as CXR_ALLOCATOR=system asks.
    # Both backends train the default recipe (under JAX its geometric augmentation is compiled, see
    # cxr.model.allow_jit).
    # Under JAX each batch shape compiles DenseNet169's step again: batches of 15 divide the 360 training and
    # 45 validation images, so there is no short last batch to compile for.
    batch = "15" if backend == "jax" else "16"
    printed = cxr("train", "--data", str(sample), "--name", "e2e", "--runs-dir", str(runs), "--weights", "none",
                  "--image-size", "32", "--epochs", "2", "--batch-size", batch, backend=backend)
    library = allocator.find("auto")
    expected = "system" if library is None else "tcmalloc" if "tcmalloc" in library.name else "jemalloc"
    recorded = yaml.safe_load((only_run(runs) / "config.yaml").read_text())["environment"]
    assert recorded["allocator"] == expected and recorded["cpu"]["model"]
    assert ("memory allocator: the system's" if expected == "system" else f"memory allocator: {expected}") in printed
    run = only_run(runs)
    assert run.name.endswith("-e2e")
    assert "epoch 1/2" in printed and "epoch 2/2" in printed and f"backend {backend}" in printed
    assert "13,076,547 parameters" in printed  # DenseNet169 + head for the sample's 3 classes
    assert "starting from random weights (--weights none: from scratch)" in printed

    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [1, 2] and history["val_loss"].notna().all()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["classes"] == ["COVID", "Normal", "Viral Pneumonia"]
    assert {k: v["images"] for k, v in metrics["splits"].items()} == {"train": 360, "val": 45, "test": 45}
    predictions = pd.read_csv(run / "eval" / "predictions_test.csv")
    assert len(predictions) == 45
    assert metrics["splits"]["test"]["accuracy"] == pytest.approx(predictions["correct"].mean())
    assert "Viral Pneumonia" in (run / "eval" / "classification_report.txt").read_text()
    assert (run / "eval" / "confusion_matrix.png").stat().st_size > 10_000

    # A second evaluation, an external one: their logic does not depend on the backend, and JAX's evaluation
    # already ran at the end of training; once is enough for CI's time.
    if backend == "tensorflow":
        again = cxr("evaluate", str(run), backend=backend, CXR_ALLOCATOR="system")
        assert "eval-2" in again
        evaluated = json.loads((run / "eval-2" / "metrics.json").read_text())
        assert evaluated["splits"]["test"]["accuracy"] == metrics["splits"]["test"]["accuracy"]
        assert evaluated["software"]["allocator"] == "system" and metrics["software"]["allocator"] == expected
        _external_validation(run, tmp_path)

    out_csv = tmp_path / "predictions.csv"
    table = cxr("predict", str(run / "model.keras"), str(sample / "Viral Pneumonia" / "images"),
                "--csv", str(out_csv), backend=backend)
    assert "Viral Pneumonia-" in table
    predicted = pd.read_csv(out_csv)
    assert len(predicted) == 150 and (predicted["error"].isna() | (predicted["error"] == "")).all()


def _external_validation(run: Path, tmp_path: Path) -> None:
    """`cxr evaluate RUN --data`: phantoms of two of the run's classes, plus a copy of one of its training
    images (left out) and of one of its test images (kept), as a user's folder from elsewhere.
    """
    root = write_synthetic_dataset(tmp_path / "elsewhere", per_class=4, size=96, seed=5, classes=("COVID", "Normal"))
    split = read_split(run / "split")
    train, test = split.frames["train"].iloc[0], split.frames["test"].iloc[0]
    for kind, row in (("train", train), ("test", test)):
        folder = root / row["label"] / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(split.root) / row["file"], folder / f"copy-of-{kind}.png")
    printed = cxr("evaluate", str(run), "--data", str(root), "--name", "elsewhere", "--bootstrap", "100")
    out = run / "external-elsewhere"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "external" and metrics["external"]["overlap"]["by_split"] == {
        "train": 1, "val": 0, "test": 1}
    scored = pd.read_csv(out / "predictions_external.csv")
    assert len(scored) == 8 + 1 and not scored["file"].str.contains("copy-of-train").any()
    assert set(metrics["clinical"]["averaged_over"]) <= {"COVID", "Normal"}
    assert "leakage check: 2 of the 10 external images are copies of run images" in printed
    assert (out / "report.html").stat().st_size > 50_000  # the figures are embedded


def test_demo_beats_chance_clearly(tmp_path):
    printed = cxr("demo", "--runs-dir", str(tmp_path))
    run = only_run(tmp_path)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["classes"] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert metrics["splits"]["test"]["images"] == 60
    assert metrics["splits"]["test"]["accuracy"] >= 0.6, metrics  # chance is 0.25
    assert "Demo finished. Look at:" in printed and str(run / "eval" / "confusion_matrix.png") in printed
    assert len(pd.read_csv(run / "history.csv")) == 10
