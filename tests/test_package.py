"""`cxr package`: a folder another person can predict with, serve and read, with the run's calibration and points."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxr import files
from cxr.cli import main
from cxr.errors import UserError
from cxr.evaluation.evaluate import evaluate_run
from cxr.inference.engines import load_predictor
from cxr.inference.points import load_operating_points
from cxr.inference.predict import predict_files
from cxr.model import load_model
from cxr.model_metadata import read_description
from cxr.package import package_run
from cxr.run import Run

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


@pytest.fixture(scope="module")
def packaged(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("handed-on") / "covid-model"
    assert main(["package", str(tiny_run), "--out", str(out)]) == 0
    return out


def test_the_package_holds_the_model_card_report_metrics_and_training_record(packaged, tiny_run):
    found = sorted(str(p.relative_to(packaged)) for p in packaged.rglob("*") if p.is_file())
    for name in ("model.keras", "README.md", "report.html", "metrics.json", "calibration.json",
                 "operating_points.json", "classification_report.txt", "confusion_matrix.png",
                 "training/config.yaml", "training/history.csv", "training/split/dataset.yaml"):
        assert name in found
    assert not (packaged / "config.yaml").exists()  # not a run folder: the model files speak for themselves
    assert packaged.stat().st_mode & 0o777 == files.DIR_MODE  # an ordinary folder, not a private temporary one
    assert getattr(load_model(packaged / "model.keras"), "optimizer", None) is None  # no state for resuming
    assert not [name for name in found if name.startswith(".")]
    latest = Run(tiny_run).evaluation_of()[0]
    assert (packaged / "README.md").read_text() == (latest.path / "MODEL_CARD.md").read_text()
    assert json.loads((packaged / "metrics.json").read_text()) == latest.read_metrics()
    # Every file in `sha256sum -c` form; the records' model digest is the run's, which the model names.
    listed = dict(reversed(line.split("  ", 1)) for line in (packaged / "SHA256SUMS").read_text().splitlines())
    assert sorted(listed) == [name for name in found if name != "SHA256SUMS"]
    assert all(files.sha256(packaged / name) == digest for name, digest in listed.items())
    assert (read_description(packaged / "model.keras")["source_model_sha256"]
            == latest.read_metrics()["calibration"]["model_sha256"] == files.sha256(tiny_run / "model.keras"))


def test_the_packaged_model_carries_the_runs_temperature_and_operating_points(packaged, tiny_run):
    run = Run(tiny_run)
    description = read_description(packaged / "model.keras")
    assert description["temperature"] == run.temperature()[0]
    assert description["operating_points"] == run.operating_points()[0]
    assert description["classes"] == CLASSES and description["run"] == tiny_run.name
    assert description["evaluation"] == run.evaluation_of()[0].name


def test_predict_and_its_options_work_on_the_package_as_on_the_run(packaged, tiny_run, phantoms):
    images = [phantoms / f for f in pd.read_csv(tiny_run / "split" / "test.csv")["file"]]
    columns = [f"p_{c}" for c in CLASSES]
    for calibrated in (False, True):
        from_run = predict_files(load_predictor(tiny_run, engine="keras", calibrated=calibrated), images)
        from_package = predict_files(load_predictor(packaged, engine="keras", calibrated=calibrated), images)
        np.testing.assert_allclose(from_package[columns], from_run[columns], rtol=1e-6, atol=1e-7)
    predictor = load_predictor(packaged, engine="keras", calibrated=True)
    assert predictor.metadata["temperature_file"] == str(packaged / "model.keras")
    points, source = load_operating_points(packaged, predictor)
    assert points == Run(tiny_run).operating_points()[0] and source == packaged / "model.keras"


def test_a_model_file_from_the_package_is_enough_alone(packaged, tmp_path, phantoms):
    alone = shutil.copyfile(packaged / "model.keras", tmp_path / "model.keras")
    predictor = load_predictor(alone, calibrated=True)
    assert predictor.classes == CLASSES and float(predictor.metadata["temperature"]) > 0
    assert load_operating_points(alone, predictor)[1] == alone


def test_package_refuses_an_existing_folder_and_an_unevaluated_model(tiny_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert main(["package", str(tiny_run), "--out", str(tmp_path / "taken")]) == 2
    assert "taken already exists; choose a new folder with --out" in capsys.readouterr().err
    trained_further = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    model = trained_further / "model.keras"
    model.write_bytes(model.read_bytes() + b"\0")  # as if trained again: no evaluation of this model yet
    with pytest.raises(UserError, match=r"model.keras has not been evaluated since it was last trained; run: "
                                        r"cxr evaluate .*run"):
        package_run(trained_further, tmp_path / "out", echo=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_every_evaluation_writes_a_model_card_from_its_own_figures(tiny_run, tmp_path):
    run_copy = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    metrics = evaluate_run(run_copy, progress=False, echo=lambda *_: None, bootstrap=50)
    card = (tmp_path / "run" / metrics["eval_dir"].split("/")[-1] / "MODEL_CARD.md").read_text()
    assert card.startswith("---\nlibrary_name: keras\npipeline_tag: image-classification\n")
    for heading in ("## Model details", "## Intended use", "## Training data", "## Training procedure",
                    "## Evaluation", "## Results per source", "## Limitations", "## How to use", "## References"):
        assert f"\n{heading}\n" in card
    accuracy = metrics["clinical"]["overall"]["accuracy"]
    assert f"| accuracy | {accuracy['value']:.3f} ({accuracy['ci_low']:.3f}-{accuracy['ci_high']:.3f}) |" in card
    assert "Research use only. This is not a medical device" in card
    assert "| recipe | reference |" in card and "| optimizer | adamax |" in card
    assert "2 run of 2 planned (finished)" in card
    split = Run(run_copy).split()
    for label in CLASSES:
        counts = [int((split.frames[name]["label"] == label).sum()) for name in ("train", "val", "test")]
        assert f"| {label} | {' | '.join(map(str, counts))} | {sum(counts)} |" in card
    assert f"temperature scaling with T = {metrics['calibration']['temperature']:.3f}" in card
