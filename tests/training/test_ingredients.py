"""Training ingredients beyond the reference recipe (issue 18, part 1): augmentation, no flip, label
smoothing and class balance; each recorded in config.yaml, each set by the recipe, resumable bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import only_run, read_state, tensorboard_scalars

from cxr.config import DEFAULT_RECIPE, RECIPES, Config, resolve
from cxr.data.batches import ImageBatches, balanced_class_weights
from cxr.errors import ConfigError
from cxr.model import build_model, compile_model, load_model, warmup_cosine
from cxr.training.controller import AdaptiveLR
from cxr.training.history import EpochLog
from cxr.training.loop import TrainingStopped, resume, train

QUIET = dict(progress=False, echo=lambda *_: None)
INGREDIENTS = dict(augment="radiograph", flip=False, label_smoothing=0.1, class_balance=True, optimizer="adamw",
                   weight_decay=0.01, schedule="cosine", warmup_epochs=1)


def test_the_benchmarks_winner_is_the_default_and_the_reference_is_one_flag_away():
    config = resolve(data="x")
    assert config.recipe == DEFAULT_RECIPE == "augmented-cosine"  # benchmarks/results/recipe-*.json
    assert config == resolve(data="x", recipe="augmented-cosine")
    reference = resolve(data="x", recipe="reference")
    assert (reference.flip, reference.augment, reference.label_smoothing, reference.class_balance) == \
        (True, "none", 0.0, False)
    assert (reference.optimizer, reference.weight_decay, reference.schedule) == ("adamax", 0.0, "adaptive")
    assert dataclasses.replace(reference, recipe="reference") == Config(data="x")  # Config's own defaults


def test_a_warm_up_as_long_as_the_run_leaves_the_last_epoch_to_the_decay():
    one_epoch = warmup_cosine(1e-3, epochs=1, steps_per_epoch=10, warmup_epochs=1)  # the default recipe, --epochs 1
    assert float(one_epoch(0)) == pytest.approx(1e-3) and float(one_epoch(10)) == pytest.approx(0, abs=1e-12)
    three = warmup_cosine(1e-3, epochs=3, steps_per_epoch=10, warmup_epochs=3)
    assert float(three(0)) == 0 and float(three(20)) == pytest.approx(1e-3)  # 2 epochs of warm-up, then decay
    for name, value, message in (("augment", "colour", "augment must be one of none, radiograph"),
                                 ("optimizer", "sgd", "optimizer must be one of adamax, adamw"),
                                 ("schedule", "step", "schedule must be one of adaptive, cosine"),
                                 ("weight_decay", -1, "weight_decay must be a number of 0 or more"),
                                 ("label_smoothing", 1.0, "label_smoothing must be a number in"),
                                 ("flip", "yes", "flip must be true or false"),
                                 ("class_balance", 1, "class_balance must be true or false")):
        with pytest.raises(ConfigError, match=message):
            resolve(data="x", **{name: value})


def test_augmentation_acts_in_training_only_and_keeps_the_input_contract():
    plain = build_model(3, 32, weights="none", backbone="tiny")
    augmented = build_model(3, 32, weights="none", backbone="tiny", flip=False, augment="radiograph")
    names = {layer.name for layer in augmented.layers}
    assert {"augment_rotate", "augment_shift", "augment_zoom", "augment_brightness", "augment_contrast"} <= names
    assert "train_flip" not in names and "train_flip" in {layer.name for layer in plain.layers}
    assert augmented.input.dtype == "uint8"
    augmented.set_weights(plain.get_weights())  # the random layers have no weights: the same network
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
    np.testing.assert_allclose(augmented.predict(images, verbose=0), plain.predict(images, verbose=0), atol=1e-6)
    front = keras.Model(augmented.input, augmented.get_layer("imagenet_normalise").output)
    inference = keras.ops.convert_to_numpy(front(images, training=False))
    training = keras.ops.convert_to_numpy(front(images, training=True))
    assert not np.allclose(inference, training)  # training draws changes
    assert np.allclose(inference, keras.ops.convert_to_numpy(front(images, training=False)))


def test_label_smoothing_changes_the_loss_and_only_when_asked():
    model = build_model(2, 32, weights="none", backbone="tiny")
    assert compile_model(model, 1e-3).loss == "categorical_crossentropy"
    smoothed = compile_model(build_model(2, 32, weights="none", backbone="tiny"), 1e-3, label_smoothing=0.2).loss
    assert isinstance(smoothed, keras.losses.CategoricalCrossentropy)
    # The target becomes 0.9 / 0.1: the loss of a 0.9 / 0.1 prediction is then its entropy, not -log 0.9.
    loss = float(smoothed(np.array([[1.0, 0.0]]), np.array([[0.9, 0.1]])))
    assert loss == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)), rel=1e-5)


def test_class_balance_weights_each_class_as_if_the_counts_were_equal():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = balanced_class_weights(labels, 4)
    np.testing.assert_allclose(weights, [10 / 24, 10 / 12, 10 / 4, 0.0])  # N / (classes x count); absent: 0
    assert (np.bincount(labels, weights=weights[labels])[:3] == pytest.approx(10 / 4))  # equal total weight
    batches = ImageBatches(np.zeros((10, 4, 4, 1), np.uint8), labels, 4, batch_size=4, class_weights=weights)
    images, targets, sample_weights = batches[0]
    np.testing.assert_allclose(sample_weights, weights[labels[:4]])
    assert len(ImageBatches(np.zeros((10, 4, 4, 1), np.uint8), labels, 4, batch_size=4)[0]) == 2


def test_warmup_then_cosine_follows_the_optimizer_steps():
    schedule = warmup_cosine(0.01, epochs=5, steps_per_epoch=10, warmup_epochs=1)
    rate = [float(schedule(step)) for step in (0, 5, 10, 30, 50)]
    # 0 at the start, half-way up after half the warm-up epoch, the peak at its end, half the peak half-way
    # through the 40 decay steps, 0 at the end of the last epoch.
    assert rate == pytest.approx([0.0, 0.005, 0.01, 0.005, 0.0], abs=1e-7)
    model = compile_model(build_model(2, 32, weights="none", backbone="tiny"), schedule, optimizer="adamw",
                          weight_decay=0.05)
    assert isinstance(model.optimizer, keras.optimizers.AdamW) and model.optimizer.weight_decay == pytest.approx(0.05)
    assert isinstance(compile_model(build_model(2, 32, weights="none", backbone="tiny")).optimizer,
                      keras.optimizers.Adamax)


def test_under_a_schedule_the_epoch_line_shows_the_rates_the_epoch_began_and_ended_with():
    # Warm-up over the first of 5 epochs of 10 steps: epoch 1 begins at 0, which alone would read as if
    # nothing trained; the history row keeps the rate it began with.
    model = compile_model(build_model(2, 32, weights="none", backbone="tiny"),
                          warmup_cosine(0.01, epochs=5, steps_per_epoch=10, warmup_epochs=1))
    model.optimizer.build(model.trainable_variables)
    lines = []
    for scheduled in (True, False):
        log = EpochLog(5, echo=lines.append, scheduled=scheduled)
        log.set_model(model)
        model.optimizer.iterations.assign(0)
        log.on_epoch_begin(0)
        model.optimizer.iterations.assign(10)  # the epoch's 10 steps
        log.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5})
        assert log.rows[-1]["learning_rate"] == 0.0
    assert "  lr 0.00e+00 to 1.00e-02  " in lines[0]
    assert "  lr 0.00e+00  " in lines[1]


def test_under_a_schedule_the_controller_keeps_the_best_weights_and_changes_nothing_else():
    model = build_model(2, 32, weights="none", backbone="tiny")
    compile_model(model, 1e-3)
    controller = AdaptiveLR(adapt=False)
    controller.set_model(model)
    controller.on_train_begin()
    for epoch, val_loss in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):  # the reference would halve and stop
        logs = {"accuracy": 0.95, "val_loss": val_loss}
        controller.on_epoch_end(epoch, logs)
    assert not model.stop_training and controller.best_epoch == 1 and controller.reductions == 0
    assert logs["next_learning_rate"] == pytest.approx(1e-3) and logs["weights_restored"] is False


@pytest.mark.slow
def test_a_run_with_every_ingredient_stopped_inside_an_epoch_resumes_bit_for_bit(phantoms, tmp_path, monkeypatch):
    import cxr.training.loop

    def config(runs):
        return resolve(data=str(phantoms), runs_dir=str(runs), backbone="tiny", weights="none", image_size=32,
                       epochs=2, batch_size=8, seed=1, bootstrap=0, deterministic=True, **INGREDIENTS)

    train(config(tmp_path / "whole"), **QUIET)
    whole = only_run(tmp_path / "whole")
    recorded = yaml.safe_load((whole / "config.yaml").read_text())
    assert {key: recorded[key] for key in INGREDIENTS} == INGREDIENTS

    class SignalAfterBatch3(cxr.training.loop.StopGuard):
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            if self.epoch == 1 and batch == 2:
                self.signals.received = "SIGTERM"

    monkeypatch.setattr(cxr.training.loop, "StopGuard", SignalAfterBatch3)
    with pytest.raises(TrainingStopped):
        train(config(tmp_path / "stopped"), **QUIET)
    run = only_run(tmp_path / "stopped")
    assert read_state(run)["partial"]["batches"] == 3
    monkeypatch.undo()
    resume(run, **QUIET)
    history = pd.read_csv(run / "history.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(history, pd.read_csv(whole / "history.csv").drop(columns=["seconds"]))
    weights, expected = load_model(run / "model.keras").get_weights(), load_model(whole / "model.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(weights, expected, strict=True))
    # The rate each epoch began with, under the schedule: 0 before the warm-up, the peak after it (the
    # resumed part of epoch 1 began later, at a higher rate: the history keeps the epoch's own).
    assert history["learning_rate"].tolist() == pytest.approx([0.0, 1e-3], abs=1e-9)
    with pytest.raises(ConfigError, match="follows the cosine schedule; its rate cannot be replaced"):
        resume(run, epochs=3, learning_rate=1e-4, **QUIET)
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="follows the cosine schedule over 2 epochs; --epochs cannot change that"):
        resume(run, epochs=3, **QUIET)
    assert (run / "config.yaml").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_every_ingredient_trains_from_the_command_line(phantoms, tmp_path, backend):
    result = subprocess.run(
        [sys.executable, "-m", "cxr", "train", "--data", str(phantoms), "--runs-dir", str(tmp_path), "--backbone",
         "tiny", "--weights", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--bootstrap", "0",
         "--augment", "radiograph", "--no-flip", "--label-smoothing", "0.1", "--class-balance", "--optimizer",
         "adamw", "--weight-decay", "0.01", "--schedule", "cosine", "--warmup-epochs", "1", "--tensorboard"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
        env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch 1/2" in result.stdout and " lr 0.00e+00 to 1.00e-03 " in result.stdout  # the warm-up epoch
    run = only_run(tmp_path)
    # What the console showed is in train.log, in plain lines when it is not a terminal, and TensorBoard's
    # logs are written on either backend (Keras writes them with tf.summary).
    log = (run / "train.log").read_text()
    assert "\r" not in log and f"run folder: {run}" in log and "training finished after epoch 2 of 2" in log
    assert "scan: " in result.stderr and "\r" not in result.stderr
    assert len(tensorboard_scalars(run / "tensorboard")["train/epoch_loss"]) == 2
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2]
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert {key: recorded[key] for key in INGREDIENTS} == INGREDIENTS
    assert "augment_rotate" in {layer.name for layer in load_model(run / "model.keras").layers}


def test_a_recipe_sets_its_ingredients_and_every_flag_or_file_still_wins(tmp_path):
    modern = resolve(data="x", recipe="augmented-cosine")
    assert {key: getattr(modern, key) for key in RECIPES["augmented-cosine"]} == RECIPES["augmented-cosine"]
    assert modern.recipe == "augmented-cosine" and modern.learning_rate == 0.001  # what it leaves alone
    assert resolve(data="x", recipe="augmented-cosine", label_smoothing=0.0, flip=False).label_smoothing == 0.0
    settings = tmp_path / "settings.yaml"
    settings.write_text("recipe: augmented-cosine\nschedule: adaptive\n")
    from_file = resolve(settings, data="x")
    assert (from_file.recipe, from_file.schedule, from_file.optimizer) == ("augmented-cosine", "adaptive", "adamw")
    assert resolve(data="x") == resolve(data="x", recipe=DEFAULT_RECIPE)
    with pytest.raises(ConfigError, match="unknown recipe 'newest'; choose from reference, augmented-cosine"):
        resolve(data="x", recipe="newest")
