"""Test-time flip: the mean over an image and its mirror, in predict and in evaluate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxr.cli import main
from cxr.errors import UserError
from cxr.inference.engines import load_predictor
from cxr.inference.tta import with_tta


def test_flip_averages_the_image_and_its_mirror():
    def left_brightness(batch):  # "probability" of class 0: the mean of the image's left half
        left = batch[:, :, : batch.shape[2] // 2, 0].mean(axis=(1, 2)) / 255
        return np.stack([left, 1 - left], axis=1)

    image = np.zeros((1, 4, 4, 1), np.uint8)
    image[0, :, :2] = 255  # bright on the left only
    assert left_brightness(image)[0].tolist() == [1.0, 0.0]
    assert with_tta(left_brightness, "flip")(image)[0].tolist() == [0.5, 0.5]
    assert with_tta(left_brightness, "none") is left_brightness and with_tta(left_brightness, None) is left_brightness
    with pytest.raises(UserError, match="unknown test-time augmentation 'rotate'; choose from none, flip"):
        with_tta(left_brightness, "rotate")


def test_predict_and_evaluate_with_flip(tiny_run, phantoms, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    folder = phantoms / "COVID" / "images"
    plain = load_predictor(run, "keras")
    images = np.stack([np.asarray(__import__("cv2").imread(str(p), 0)) for p in sorted(folder.iterdir())[:3]])
    from cxr.data.images import resize_square

    batch = np.stack([resize_square(i, plain.image_size) for i in images])[..., None]
    expected = (plain.predict(batch) + plain.predict(batch[:, :, ::-1].copy())) / 2
    flipped = load_predictor(run, "keras", tta="flip")
    assert flipped.metadata["tta"] == "flip"
    np.testing.assert_allclose(flipped.predict(batch), expected, rtol=1e-6, atol=1e-7)

    assert main(["predict", str(run), str(folder), "--tta", "flip", "--csv", str(tmp_path / "p.csv")]) == 0
    assert "test-time flip" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--tta", "flip", "--bootstrap", "0"]) == 0
    metrics = json.loads((run / "eval-2" / "metrics.json").read_text())
    assert metrics["tta"] == "flip" and metrics["operating_points"]["chosen"]["tta"] == "flip"
    first = pd.read_csv(run / "eval" / "predictions_test.csv")
    second = pd.read_csv(run / "eval-2" / "predictions_test.csv")
    assert (first["file"] == second["file"]).all()
    assert not np.allclose(first.filter(like="p_").to_numpy(), second.filter(like="p_").to_numpy())
    assert "test-time flip" in capsys.readouterr().out

    # The temperature and thresholds of that evaluation were fitted on flip-averaged probabilities: applying
    # them to plain ones is said, by predict and by the server, and --tta flip makes them agree.
    assert json.loads((run / "eval-2" / "calibration.json").read_text())["tta"] == "flip"
    image = str(sorted(folder.iterdir())[0])
    assert main(["predict", str(run), image, "--calibrated"]) == 0
    assert ("note: this temperature was fitted with --tta flip, and these predictions use --tta none: what it "
            "reached on validation may not hold (use --tta flip)" in capsys.readouterr().err)
    assert main(["predict", str(run), image, "--operating-points", str(run)]) == 0
    assert ("note: these thresholds were chosen with --tta flip, and these predictions use --tta none"
            in capsys.readouterr().err)
    assert main(["predict", str(run), image, "--calibrated", "--tta", "flip"]) == 0
    assert main(["predict", str(run), image, "--operating-points", str(run), "--tta", "flip"]) == 0
    assert "note:" not in capsys.readouterr().err
    from fastapi.testclient import TestClient

    from cxr.serve.app import create_app

    plain_server = TestClient(create_app(run, engine="keras", load_in_background=False)).get("/v1/model").json()
    assert [note.split(",")[0] for note in plain_server["notes"]] == [
        "note: this temperature was fitted with --tta flip", "note: these thresholds were chosen with --tta flip"]
    flip_server = TestClient(create_app(run, engine="keras", load_in_background=False, tta="flip"))
    assert flip_server.get("/v1/model").json()["notes"] == [] and flip_server.app.state.served.tta == "flip"
    answer = flip_server.post("/v1/predict", files={"file": ("x.png", open(image, "rb").read())},
                              params={"explain": "true"}).json()
    picture = np.asarray(__import__("cv2").imread(image, 0))
    expected = flipped.predict(resize_square(picture, plain.image_size)[None, ..., None])[0]
    np.testing.assert_allclose(list(answer["probabilities"].values()), expected, rtol=1e-5, atol=1e-6)
    assert answer["explained_class"] == answer["predicted"]
