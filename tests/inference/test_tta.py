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
