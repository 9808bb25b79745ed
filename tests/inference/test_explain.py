"""Grad-CAM: the map points at what the model looks at, on TensorFlow and JAX alike."""

import json
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
from helpers import needs_tensorflow

from cxr.cli import main
from cxr.inference.explain import gradcam, overlay, split_model
from cxr.model import build_model, compile_model, load_model

SIZE = 64


def lesion_image(rng, x=None, y=None):
    """A smooth mid-grey field, with a bright round 'lesion' at (x, y) when given."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = 70 + 10 * np.sin(xx / 7.0 + rng.uniform(0, 6)) + rng.normal(0, 3, (SIZE, SIZE))
    if x is not None:
        image += 120 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.5**2))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lesion_model(tmp_path_factory):
    """The tiny backbone trained to tell images with a lesion anywhere from images without one."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    labels = np.arange(480) % 2
    images = np.stack([lesion_image(rng, *(rng.uniform(10, SIZE - 10, 2) if label else (None, None)))
                       for label in labels])[..., None]
    model = compile_model(build_model(2, SIZE, weights="none", backbone="tiny", bn_momentum=0.9))
    model.fit(images[:400], keras.utils.to_categorical(labels[:400], 2), epochs=8, batch_size=32, verbose=0)
    accuracy = np.mean(model.predict_on_batch(images[400:]).argmax(axis=1) == labels[400:])
    assert accuracy >= 0.9, f"the lesion model did not learn its task (accuracy {accuracy:.2f})"
    path = tmp_path_factory.mktemp("lesion") / "model.keras"
    model.save(path)
    return path


POSITIONS = [(16, 16), (48, 40), (20, 46), (44, 14)]


def lesion_batch():
    rng = np.random.default_rng(1)
    return np.stack([lesion_image(rng, x, y) for x, y in POSITIONS])[..., None]


def test_the_map_is_nontrivial_and_moves_with_the_lesion(lesion_model):
    model = load_model(lesion_model)
    heat, probabilities = gradcam(model, lesion_batch(), class_index=1)
    assert heat.shape == (len(POSITIONS), 16, 16) and heat.min() >= 0 and heat.max() <= 1
    assert (probabilities.argmax(axis=1) == 1).all()
    for (x, y), one in zip(POSITIONS, heat, strict=True):
        full = cv2.resize(one, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        peak_y, peak_x = np.unravel_index(full.argmax(), full.shape)
        assert abs(peak_x - x) <= 8 and abs(peak_y - y) <= 8, ((x, y), (peak_x, peak_y))
        assert 0.0 < (full > 0.5).mean() < 0.25  # a focused map, neither empty nor everywhere


@pytest.mark.slow
def test_split_model_reproduces_the_model_and_reaches_the_densenet_backbone():
    model = build_model(3, 64, weights="none")  # the backbone's layers are in the top-level model
    features, tail = split_model(model)
    assert features.output.shape[1:] == (2, 2, 1664) and [layer.name for layer in tail][0] == "max_pool"
    images = lesion_batch()[:2]
    from cxr.inference.explain import run_tail

    np.testing.assert_allclose(keras.ops.convert_to_numpy(run_tail(tail, features(images, training=False))),
                               model.predict_on_batch(images), atol=1e-5)


JAX_GRADCAM = """
import sys, numpy as np
from cxr.inference.explain import gradcam
from cxr.model import load_model
heat, _ = gradcam(load_model(sys.argv[1]), np.load(sys.argv[2]), class_index=1)
np.save(sys.argv[3], heat)
"""


@needs_tensorflow  # the map it is compared with comes from this process
def test_jax_gradients_give_the_same_map_as_tensorflow(lesion_model, tmp_path):
    images = lesion_batch()
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", JAX_GRADCAM, str(lesion_model), str(tmp_path / "images.npy"),
                           str(tmp_path / "heat.npy")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 0, done.stderr[-2000:]
    tensorflow_heat, _ = gradcam(load_model(lesion_model), images, class_index=1)
    np.testing.assert_allclose(np.load(tmp_path / "heat.npy"), tensorflow_heat, atol=1e-3)


def test_overlay_has_the_image_size_and_colours_the_hot_region():
    gray = np.full((100, 80), 100, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    image = overlay(gray, heat)
    assert image.shape == (100, 80, 3)
    assert image[5, 5, 2] > image[95, 75, 2]  # red where the map is hot (BGR)


def test_cli_explain_writes_overlays_and_a_table(lesion_model, tmp_path, capsys):
    rng = np.random.default_rng(2)
    for name, (x, y) in (("left.png", (16, 30)), ("right.png", (50, 30))):
        cv2.imwrite(str(tmp_path / name), cv2.resize(lesion_image(rng, x, y), (128, 128)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "cams"
    paths = [str(tmp_path / n) for n in ("left.png", "right.png", "broken.png")]
    assert main(["explain", str(lesion_model), *paths, "--out", str(out)]) == 0
    table = pd.read_csv(out / "explanations.csv", keep_default_na=False)
    assert table["overlay"].tolist() == ["left-gradcam.png", "right-gradcam.png", ""]
    assert table["error"].tolist()[2] == "PNG cannot be decoded (truncated or corrupt)"
    left = cv2.imread(str(out / "left-gradcam.png"))
    assert left.shape == (128, 128, 3)  # the original image's size, not the model's
    assert "2 overlay(s) written" in capsys.readouterr().out

    assert main(["explain", str(lesion_model), paths[0], "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["explain", str(lesion_model), paths[0], "--out", str(tmp_path / "x"), "--class", "Nope"]) == 2
    assert "unknown class 'Nope'; the model's classes are class_0, class_1" in capsys.readouterr().err
    assert main(["explain", str(lesion_model), paths[0], "--out", str(tmp_path / "y"), "--class", "class_0"]) == 0
    assert json.loads(pd.read_csv(tmp_path / "y" / "explanations.csv").to_json(orient="records"))[0][
        "explained_class"] == "class_0"

    folder = tmp_path / "export"  # a folder with an image named without an extension, and a note
    folder.mkdir()
    (folder / "IM0001").write_bytes((tmp_path / "left.png").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    assert main(["explain", str(lesion_model), str(folder), "--out", str(tmp_path / "z")]) == 0
    assert "looked at 2 file(s) in the given folder(s): 1 image(s); 1 not image(s) left out (notes.txt)" in \
        capsys.readouterr().out
    assert (tmp_path / "z" / "IM0001-gradcam.png").is_file()
