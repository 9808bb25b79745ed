"""Saving and resuming inside an epoch, and progress lines for logs: the parts that need no training.

The end-to-end proof (kill -9 inside an epoch, resume, the same weights as an uninterrupted run) is in
test_training_control.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr.data.batches import ImageBatches
from cxr.run import Run
from cxr.training.checkpoint import RunCheckpoint, WithinEpoch
from cxr.training.controller import AdaptiveLR
from cxr.training.history import EpochLog
from cxr.training.progress import ProgressLines, duration


def batches(n: int = 21, batch: int = 8) -> ImageBatches:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
    return ImageBatches(images, np.arange(n) % 2, 2, batch, shuffle=True, seed=3)


def test_a_resumed_epoch_starts_at_the_saved_batch_and_later_epochs_are_whole():
    whole, resumed = batches(), batches()
    resumed.start_at(1, 2)
    for epoch in range(3):
        whole.set_epoch(epoch)
        resumed.set_epoch(epoch)
        expected = [whole[i][0].ravel().tolist() for i in range(len(whole))]
        if epoch == 1:
            assert len(resumed) == 1 and resumed.skip == 2 and whole.batches_per_epoch == 3
            assert [resumed[0][0].ravel().tolist()] == expected[2:]  # the same images as batch 3 of the epoch
        else:
            assert len(resumed) == 3 and resumed.skip == 0
            assert [resumed[i][0].ravel().tolist() for i in range(3)] == expected


def test_a_start_outside_the_epoch_is_refused():
    with pytest.raises(ValueError, match="batch 3 is outside an epoch of 3 batches"):
        batches().start_at(0, 3)


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (45, "45 s"), (90, "2 min"), (720, "12 min"),
                                               (3600, "1 h 00 min"), (7500, "2 h 05 min")])
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert duration(seconds) == text


def test_progress_lines_come_every_interval_with_rate_and_time_left():
    now = [100.0]
    lines: list[str] = []
    progress = ProgressLines(epochs=30, batches_per_epoch=100, images_per_batch=16, first_batch=lambda: 0,
                             echo=lines.append, every=180, clock=lambda: now[0])
    progress.on_epoch_begin(2)
    for batch in range(40):
        now[0] += 10  # 1.6 images/s
        progress.on_train_batch_end(batch)
    # At 180 s (batch 18) and 360 s (batch 36): 1.6 images/s, 82 and 64 batches of 16 left.
    assert lines == ["epoch 3/30: batch 18/100, 1.6 images/s, about 14 min left in this epoch",
                     "epoch 3/30: batch 36/100, 1.6 images/s, about 11 min left in this epoch"]


def test_progress_lines_of_a_resumed_epoch_count_from_where_it_starts():
    now = [0.0]
    lines: list[str] = []
    progress = ProgressLines(epochs=3, batches_per_epoch=100, images_per_batch=10, first_batch=lambda: 60,
                             echo=lines.append, every=5, clock=lambda: now[0])
    progress.on_epoch_begin(0)
    now[0] = 5.0
    progress.on_train_batch_end(4)  # 5 batches of 10 in 5 s since the resume
    assert lines == ["epoch 1/3: batch 65/100, 10.0 images/s, about 35 s left in this epoch"]


def checkpoint_with(tmp_path, state: dict | None) -> RunCheckpoint:
    return RunCheckpoint(Run(tmp_path), 10, EpochLog(10, echo=lambda _: None), AdaptiveLR(), state=state)


@pytest.mark.parametrize(("epoch", "partial", "text"), [
    (0, None, "no epoch was completed"),
    (1, None, "epoch 1 is saved"),
    (3, None, "epochs 1-3 are saved"),
    (0, {"epoch": 1, "batches": 37, "of": 51}, "37 of 51 batches of epoch 1 are saved"),
    (1, {"epoch": 2, "batches": 5, "of": 51}, "epoch 1 and 5 of 51 batches of epoch 2 are saved"),
    (2, {"epoch": 3, "batches": 50, "of": 51}, "epochs 1-2 and 50 of 51 batches of epoch 3 are saved"),
])
def test_what_is_saved_is_said_in_words(tmp_path, epoch, partial, text):
    state = {"format": 1, "epoch": epoch, "model": None, "best_model": None, "ask": {}}
    if partial:
        state["partial"] = {**partial, "model": "step.keras"}
    assert checkpoint_with(tmp_path, state).saved() == text


def test_nothing_is_saved_inside_an_epoch_without_a_batch_done_or_when_it_is_off(tmp_path):
    checkpoint = checkpoint_with(tmp_path, None)
    assert checkpoint.save_partial() is False  # off (a job of several processes): no model is touched
    checkpoint.within_epoch = WithinEpoch(51, 60.0)
    assert checkpoint.save_partial() is False  # no batch of the epoch done yet
    checkpoint.batches_done = 51  # the epoch's batches are all done: its own save is moments away
    assert checkpoint.save_partial() is False
    assert not (tmp_path / "checkpoints").exists()


def test_weights_that_are_not_finite_are_never_saved_inside_an_epoch(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    checkpoint = checkpoint_with(tmp_path, None)
    checkpoint.set_model(model)
    checkpoint.within_epoch = WithinEpoch(51, 60.0)
    checkpoint.batches_done = 7
    kernel, bias = model.get_weights()
    model.set_weights([kernel, bias + np.nan])  # the last batch's update overflowed; its logged loss was finite
    assert checkpoint.save_partial() is False and "partial" not in checkpoint.state
    model.set_weights([kernel, bias])
    assert checkpoint.save_partial() is True and checkpoint.state["partial"]["batches"] == 7


@pytest.mark.parametrize(("state", "fits"), [
    ({"epoch": 0}, [(0, 5)]),
    ({"epoch": 2}, [(2, 5)]),
    ({"epoch": 2, "partial": {"epoch": 3}}, [(2, 3), (3, 5)]),  # the resumed epoch in a fit of its own
    ({"epoch": 4, "partial": {"epoch": 5}}, [(4, 5)]),
])
def test_a_run_saved_inside_an_epoch_finishes_that_epoch_in_a_fit_of_its_own(state, fits):
    from cxr.training.loop import _fits

    assert _fits(state, 5) == fits


@pytest.mark.parametrize("value", [-1, "10", True])
def test_checkpoint_every_must_be_minutes(value):
    from cxr.config import resolve
    from cxr.errors import ConfigError

    with pytest.raises(ConfigError, match=f"checkpoint_every must be a number of minutes, 0 or more, got {value!r}"):
        resolve(recipe="reference", data="x", checkpoint_every=value)


def test_a_save_before_epoch_1_ends_writes_the_state_and_no_empty_history(tmp_path):
    checkpoint = checkpoint_with(tmp_path, None)
    checkpoint.commit("interrupted")
    run = Run(tmp_path)
    assert run.state()["status"] == "interrupted" and not run.history_path.exists()
    run.history_path.write_text("\n")  # as cxr wrote it before
    assert run.history() is None


def test_a_run_that_died_between_its_first_history_and_state_starts_again(tmp_path):
    from cxr.errors import UserError
    from cxr.training.loop import _resumable_state

    run = Run(tmp_path)
    run.write_history([{"epoch": 1, "loss": 1.0}])  # the first epoch's history, and no state.json after it
    with pytest.raises(UserError, match="trained by an earlier version of cxr"):  # no checkpoints: an older cxr's
        _resumable_state(run)
    run.checkpoints.mkdir()
    (run.checkpoints / "epoch-0001.keras").write_bytes(b"the first epoch's model")
    assert _resumable_state(run) is None
