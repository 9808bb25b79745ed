"""`cxr train --init-from`: a model adapted from a trained one starts where its parent was, not at chance."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pytest

from cxr.cli import main
from cxr.errors import WeightsError
from cxr.model import build_model, compile_model, load_model
from cxr.model_metadata import describe, read_description, write_keras_with_description
from cxr.run import Run
from cxr.training.init_from import HEAD_LAYERS, initialise_from

pytestmark = pytest.mark.slow  # trains a parent model and three short runs

SIZE = 48


def lesion_image(rng, lesion: bool) -> np.ndarray:
    """A smooth mid-grey field, with a bright round 'lesion' somewhere when `lesion`."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = 70 + 10 * np.sin(xx / 7.0 + rng.uniform(0, 6)) + rng.normal(0, 3, (SIZE, SIZE))
    if lesion:
        x, y = rng.uniform(8, SIZE - 8, 2)
        image += 120 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.5**2))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A hospital's own labelled folder: 'clear' and 'lesion' films, 60 of each."""
    root = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(7)
    for label in ("clear", "lesion"):
        (root / label).mkdir()
        for k in range(60):
            cv2.imwrite(str(root / label / f"{label}-{k:03d}.png"), lesion_image(rng, label == "lesion"))
    return root


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A model trained elsewhere on the same task (tiny backbone), as `cxr train` would have saved it."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    labels = np.arange(400) % 2
    images = np.stack([lesion_image(rng, bool(label)) for label in labels])[..., None]
    model = compile_model(build_model(2, SIZE, weights="none", backbone="tiny", bn_momentum=0.9))
    model.fit(images[:320], keras.utils.to_categorical(labels[:320], 2), epochs=8, batch_size=32, verbose=0)
    accuracy = np.mean(model.predict_on_batch(images[320:]).argmax(axis=1) == labels[320:])
    assert accuracy >= 0.9, f"the parent did not learn its task (accuracy {accuracy:.2f})"
    folder = tmp_path_factory.mktemp("parent")
    model.save(folder / "plain.keras")
    return write_keras_with_description(folder / "plain.keras", folder / "model.keras",
                                        describe(["clear", "lesion"], SIZE, run="parent-run"))


def train_on_site(site, tmp_path, *extra):
    args = ["train", "--recipe", "reference", "--data", str(site), "--runs-dir", str(tmp_path), "--backbone", "tiny",
            "--image-size",
            str(SIZE), "--epochs", "1", "--batch-size", "16", "--learning-rate", "1e-6", "--bootstrap", "0",
            "--ask-epoch", "0", "--seed", "3", *extra]
    assert main(args) == 0
    return next(p for p in tmp_path.iterdir() if p.name != "cache")


def test_a_fine_tuned_run_starts_at_its_parents_accuracy_not_at_chance(site, parent, tmp_path, capsys):
    adapted = train_on_site(site, tmp_path / "adapted", "--init-from", str(parent))
    out = capsys.readouterr().out
    assert f"initialised from {parent}: backbone and head" in out
    scratch = train_on_site(site, tmp_path / "scratch", "--weights", "none")
    first_epoch = Run(adapted).history()["val_accuracy"].iloc[0]
    assert first_epoch >= 0.9, f"epoch 1 of the adapted run: {first_epoch:.2f}"
    assert Run(scratch).history()["val_accuracy"].iloc[0] <= 0.75  # from scratch, one epoch: near chance
    record = json.loads((adapted / "init_from.json").read_text())
    assert record["model"] == str(parent) and record["head"] == "kept" and record["classes"] == ["clear", "lesion"]
    assert read_description(adapted / "model.keras")["init_from"] == record  # the model says where it started
    assert Run(adapted).config().init_from == str(parent)


def test_other_classes_keep_the_backbone_and_get_a_new_head(parent):
    model = build_model(3, SIZE, weights="none", backbone="tiny")
    notes = []
    record = initialise_from(model, parent, ["a", "b", "c"], echo=notes.append)
    assert record["head"] == "new" and "the head starts new because the parent's classes (clear, lesion) are " \
                                      "not this run's (a, b, c)" in notes[0]
    trained = load_model(parent, compile=False)
    for layer in trained.layers:
        if layer.weights and layer.name not in HEAD_LAYERS:
            for mine, theirs in zip(model.get_layer(layer.name).get_weights(), layer.get_weights(), strict=True):
                np.testing.assert_array_equal(mine, theirs)
    assert model.get_layer("probabilities").get_weights()[0].shape == (trained.get_layer("head_dense").units, 3)


def test_a_parent_of_another_architecture_or_no_model_is_refused(parent, tmp_path, site, capsys):
    with pytest.raises(WeightsError, match="is a cxr_tiny model; this run builds cxr_densenet169: no layers in "
                                           "common"):
        initialise_from(build_model(2, 32, weights="none", backbone="densenet169"), parent, ["clear", "lesion"],
                        echo=lambda _: None)
    assert main(["train", "--data", str(site), "--runs-dir", str(tmp_path), "--init-from",
                 str(tmp_path / "nothing")]) == 2
    assert (f"--init-from needs a trained run folder or a .keras model file; {tmp_path / 'nothing'} is not one"
            in capsys.readouterr().err)
    assert not any(tmp_path.iterdir())  # refused before a run folder was made
