"""Calibration maths on known cases, and what an evaluation writes about metrics and calibration."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxr import files
from cxr.cli import main
from cxr.errors import UserError
from cxr.evaluation import calibration
from cxr.evaluation.metrics import PER_CLASS, point_metrics
from cxr.inference.engines import load_predictor
from cxr.inference.predict import predict_files
from cxr.inference.temperature import apply_temperature, find_temperature

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def test_expected_calibration_error_by_hand():
    # Confidences 0.9, 0.9 (one right) and 0.6, 0.6 (both right): |0.5-0.9|*2/4 + |1-0.6|*2/4 = 0.4.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    truth = np.array([0, 1, 1, 1])
    assert calibration.expected_calibration_error(truth, probabilities, bins=10) == pytest.approx(0.4)
    table = calibration.reliability_bins(truth, probabilities, bins=10)
    assert table["count"].sum() == 4 and table.loc[table["count"] > 0, "accuracy"].tolist() == [1.0, 0.5]


def test_probabilities_that_are_not_finite_are_an_error_not_a_quieter_figure():
    probabilities = np.array([[0.9, 0.1], [np.nan, np.nan], [0.4, 0.6]])
    for compute in (calibration.expected_calibration_error, calibration.fit_temperature):
        with pytest.raises(ValueError, match="1 of 3 rows of probabilities are not finite"):
            compute(np.array([0, 1, 1]), probabilities)


def test_temperature_one_is_identity_and_a_large_one_flattens():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05]])
    np.testing.assert_allclose(apply_temperature(probabilities, 1.0), probabilities, atol=1e-12)
    np.testing.assert_allclose(apply_temperature(probabilities, 1e6), 1 / 3, atol=1e-5)


def test_fitting_recovers_the_temperature_of_overconfident_outputs():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(20000, 4))
    true_probabilities = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(4, p=p) for p in true_probabilities])
    overconfident = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    temperature = calibration.fit_temperature(truth, overconfident)
    assert temperature == pytest.approx(2.5, rel=0.05)
    scaled = apply_temperature(overconfident, temperature)
    assert calibration.expected_calibration_error(truth, scaled) < calibration.expected_calibration_error(
        truth, overconfident) / 3


def test_evaluation_writes_clinical_metrics_consistent_with_its_predictions(tiny_run):
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    predictions = pd.read_csv(tiny_run / "eval" / "predictions_test.csv")
    truth = predictions["true_label"].map(CLASSES.index).to_numpy()
    probabilities = predictions[[f"p_{c}" for c in CLASSES]].to_numpy()
    point = point_metrics(truth, probabilities)
    clinical = metrics["clinical"]
    assert clinical["split"] == "test" and clinical["bootstrap"]["resamples"] == 200
    assert clinical["overall"]["balanced_accuracy"]["value"] == pytest.approx(point["balanced_accuracy"])
    for k, name in enumerate(CLASSES):
        entry = clinical["per_class"][name]
        assert entry["support"] == int((truth == k).sum())
        assert entry["specificity"]["value"] == pytest.approx(point[f"specificity/{k}"])
        assert entry["specificity"]["ci_low"] <= entry["specificity"]["value"] <= entry["specificity"]["ci_high"]

    table = pd.read_csv(tiny_run / "eval" / "metrics_per_class.csv")
    assert table["class"].tolist() == CLASSES + ["macro avg", "weighted avg"]
    assert list(table.columns[:2]) == ["class", "support"] and f"{PER_CLASS[0]}_ci_low" in table.columns
    assert table.loc[table["class"] == "macro avg", "f1"].item() == pytest.approx(point["macro/f1"])


def test_evaluation_fits_and_keeps_a_temperature_for_the_model(tiny_run):
    record = json.loads((tiny_run / "eval" / "calibration.json").read_text())
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert metrics["calibration"] == record
    assert record["model_sha256"] == files.sha256(tiny_run / "model.keras") and record["fitted_on"] == "val"
    val = pd.read_csv(tiny_run / "eval" / "predictions_val.csv")
    val_probabilities = val[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert record["temperature"] == pytest.approx(
        calibration.fit_temperature(val["true_label"].map(CLASSES.index).to_numpy(), val_probabilities), rel=1e-4)
    test = pd.read_csv(tiny_run / "eval" / "predictions_test.csv")
    truth = test["true_label"].map(CLASSES.index).to_numpy()
    probabilities = test[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert record["test_ece_before"] == pytest.approx(calibration.expected_calibration_error(truth, probabilities))
    assert (tiny_run / "eval" / "reliability.png").read_bytes().startswith(b"\x89PNG")
    assert len(pd.read_csv(tiny_run / "eval" / "reliability.csv")) == 2 * record["bins"]


def test_calibrated_prediction_uses_the_temperature_and_refuses_a_stale_one(tiny_run, phantoms, tmp_path):
    image = phantoms / "COVID" / "images" / "COVID-1.png"
    temperature = json.loads((tiny_run / "eval" / "calibration.json").read_text())["temperature"]
    raw = predict_files(tiny_run, [image], engine="keras")
    scaled = predict_files(load_predictor(tiny_run, engine="keras", calibrated=True), [image])
    columns = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(scaled[columns].to_numpy(),
                               apply_temperature(raw[columns].to_numpy(), temperature), atol=1e-6)

    copy = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    (copy / "model.keras").write_bytes((copy / "model.keras").read_bytes() + b"\0")
    with pytest.raises(UserError, match="was fitted for another version of the model"):
        load_predictor(copy, engine="keras", calibrated=True)
    assert main(["predict", str(copy), str(image), "--calibrated"]) == 2


def test_evaluate_accepts_bootstrap_settings(tiny_run, tmp_path, capsys):
    copy = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    assert main(["evaluate", str(copy), "--bootstrap", "30", "--bootstrap-seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "test metrics with 30 stratified bootstrap resamples" in out and "95 % bootstrap intervals" in out
    assert json.loads((copy / "eval-2" / "metrics.json").read_text())["clinical"]["bootstrap"]["seed"] == 4


def test_evaluate_without_intervals_prints_the_values_alone(tiny_run, tmp_path, capsys):
    copy = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    assert main(["evaluate", str(copy), "--bootstrap", "0"]) == 0
    accuracy = json.loads((copy / "eval-2" / "metrics.json").read_text())["clinical"]["overall"]["accuracy"]
    assert accuracy["ci_low"] is None
    assert f"accuracy {accuracy['value']:.3f};" in capsys.readouterr().out


def test_each_evaluation_keeps_its_own_temperature_and_the_newest_is_used(tiny_run, phantoms, tmp_path, capsys):
    copy = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    first = (copy / "eval" / "calibration.json").read_bytes()
    assert main(["evaluate", str(copy), "--bootstrap", "0"]) == 0
    assert f"saved in {copy / 'eval-2' / 'calibration.json'}" in capsys.readouterr().out
    assert (copy / "eval" / "calibration.json").read_bytes() == first  # never overwritten
    assert not (copy / "calibration.json").exists()
    assert (json.loads((copy / "eval-2" / "metrics.json").read_text())["evaluated"]
            > json.loads((copy / "eval" / "metrics.json").read_text())["evaluated"])

    def set_temperature(folder, value):
        record = json.loads((folder / "calibration.json").read_text())
        files.write_json(folder / "calibration.json", {**record, "temperature": value})

    set_temperature(copy / "eval-2", 2.5)  # as if the second evaluation had fitted another temperature
    set_temperature(copy / "eval", 3.0)
    image = phantoms / "COVID" / "images" / "COVID-1.png"
    raw = predict_files(copy, [image], engine="keras")
    assert main(["predict", str(copy), str(image), "--calibrated", "--csv", str(tmp_path / "p.csv")]) == 0
    assert f"temperature 2.500 from {copy / 'eval-2' / 'calibration.json'}" in capsys.readouterr().err
    columns = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")[columns].to_numpy(),
                               apply_temperature(raw[columns].to_numpy(), 2.5), atol=1e-6)

    # A run evaluated before each evaluation kept its own temperature has one calibration.json beside the model.
    for folder in ("eval", "eval-2"):
        (copy / folder / "calibration.json").rename(copy / folder / "old.json")
    files.write_json(copy / "calibration.json", json.loads((copy / "eval" / "old.json").read_text()))
    assert find_temperature(copy / "model.keras") == (3.0, copy / "calibration.json")
