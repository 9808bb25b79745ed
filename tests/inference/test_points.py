"""Operating points applied where a model answers: `cxr predict` and the server."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from cxr.cli import main
from cxr.errors import UserError
from cxr.evaluation.operating_points import choose_thresholds
from cxr.inference.engines import load_predictor
from cxr.inference.points import load_operating_points
from cxr.serve.app import create_app


def test_the_evaluation_chooses_thresholds_on_validation_predictions(tiny_run):
    chosen = json.loads((tiny_run / "eval" / "operating_points.json").read_text())
    val = pd.read_csv(tiny_run / "eval" / "predictions_val.csv")
    classes = chosen["classes_order"]
    again = choose_thresholds(np.array([classes.index(c) for c in val["true_label"]]),
                              val[[f"p_{c}" for c in classes]].to_numpy(), classes,
                              {name: point["target_sensitivity"] for name, point in chosen["classes"].items()})
    # The CSV holds float32 probabilities as text: the same thresholds to float32 precision.
    assert {n: p["threshold"] for n, p in again["classes"].items()} == pytest.approx(
        {n: p["threshold"] for n, p in chosen["classes"].items()}, rel=1e-6)
    assert "Normal" not in chosen["classes"] and set(chosen["classes"]) == {"COVID", "Lung_Opacity", "Viral Pneumonia"}
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert metrics["operating_points"]["scored_on"] == "test"
    assert all(not p["reliable"] and "fewer than 20" in p["note"] for p in chosen["classes"].values())
    assert "Operating points (test set)" in (tiny_run / "eval" / "report.html").read_text()


def test_predict_adds_a_call_per_class_at_its_threshold(tiny_run, phantoms, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(phantoms / "COVID" / "images"), "--operating-points", str(tiny_run),
                 "--csv", str(out)]) == 0
    printed = capsys.readouterr()
    points = json.loads((tiny_run / "eval" / "operating_points.json").read_text())
    table = pd.read_csv(out)
    for name, point in points["classes"].items():
        column = f"{name}@{point['threshold']:.3f}"
        expected = np.where(table[f"p_{name}"] >= point["threshold"], "positive", "negative")
        assert (table[column] == expected).all(), name
        assert f"{column}: positive when p_{name} >=" in printed.out
    assert "too few to rely on" in printed.out
    assert f"operating points: {tiny_run / 'eval' / 'operating_points.json'}" in printed.err

    assert main(["predict", str(tiny_run), str(phantoms / "COVID" / "images"), "--operating-points",
                 str(tiny_run / "eval" / "operating_points.json"), "--calibrated"]) == 2
    assert "leave out --calibrated" in capsys.readouterr().err


def test_operating_points_of_another_model_are_refused(tiny_run, tmp_path):
    predictor = load_predictor(tiny_run, "keras")
    points = json.loads((tiny_run / "eval" / "operating_points.json").read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**points, "classes_order": ["COVID", "Normal"]}))
    with pytest.raises(UserError, match="chosen for a model with classes COVID, Normal"):
        load_operating_points(other, predictor)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not a readable operating_points.json"):
        load_operating_points(tmp_path / "bad.json", predictor)
    retrained = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    with open(retrained / "model.keras", "ab") as model:  # another model file: no evaluation chose points for it
        model.write(b"\0")
    with pytest.raises(UserError, match="no evaluation with operating points for this model"):
        load_operating_points(retrained, dataclasses.replace(predictor, path=retrained / "model.keras"))


def test_the_server_answers_with_the_runs_operating_points(tiny_run, phantoms):
    client = TestClient(create_app(tiny_run, engine="keras", load_in_background=False))
    info = client.get("/v1/model").json()
    assert info["operating_points_file"] == str(tiny_run / "eval" / "operating_points.json")
    image = sorted((phantoms / "COVID" / "images").iterdir())[0]
    answer = client.post("/v1/predict", files={"file": (image.name, image.read_bytes(), "image/png")}).json()
    points = info["operating_points"]["classes"]
    assert set(answer["operating_points"]) == set(points)
    for name, call in answer["operating_points"].items():
        assert call["positive"] == (answer["probabilities"][name] >= points[name]["threshold"])
        assert call["text"].startswith(("positive at threshold", "negative at threshold"))
        assert "on validation" in call["text"]
