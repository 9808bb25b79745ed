"""What a run says is kept: train.log through logging, TensorBoard curves, and progress a log file can hold."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cxr import logs
from cxr.config import resolve
from cxr.training.loop import resume, train


def tensorboard_scalars(folder) -> dict[str, list[float]]:
    """Every scalar in the event files under `folder`, by tag, in step order."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    scalars: dict[str, list[float]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                scalars.setdefault(f"{path.parent.name}/{value.tag}", []).append(float(number))
    return scalars


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_file():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    ticks = iter(range(0, 1000, 25))  # 25 s per item
    to_file = io.StringIO()
    assert list(logs.progress(range(10), 10, "scan", stream=to_file, every=60, clock=lambda: next(ticks))) == \
        list(range(10))
    assert to_file.getvalue().splitlines() == ["scan: 3/10 (30 %), 75 s", "scan: 6/10 (60 %), 150 s",
                                               "scan: 9/10 (90 %), 225 s", "scan: 10/10 done in 275 s"]
    assert "\r" not in to_file.getvalue()
    terminal = Terminal()
    assert list(logs.progress(range(3), 3, "scan", stream=terminal)) == [0, 1, 2]
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()  # tqdm's bar
    silent = io.StringIO()
    assert list(logs.progress(range(3), 3, "scan", enabled=False, stream=silent)) == [0, 1, 2]
    assert silent.getvalue() == ""


@pytest.mark.slow
def test_a_run_keeps_what_the_console_showed_in_train_log_and_a_resume_appends(phantoms, tmp_path):
    shown = []
    config = resolve(recipe="reference", data=str(phantoms), runs_dir=str(tmp_path), name="logged", backbone="tiny",
                     weights="none",
                     image_size=32, epochs=1, batch_size=8, seed=1, bootstrap=0, tensorboard=True)
    run = train(config, progress=False, echo=shown.append)
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    text = (run / "train.log").read_text()
    assert len(re.findall(stamp, text, flags=re.M)) == len(shown)  # one timed record per message
    assert re.sub(stamp, "", text, flags=re.M) == "".join(line + "\n" for line in shown)  # all of it, in order
    assert shown[0].startswith(f"dataset {phantoms}")  # said before the run folder existed
    resumed = []
    resume(run, epochs=2, progress=False, echo=resumed.append)
    after = re.sub(stamp, "", (run / "train.log").read_text(), flags=re.M)
    assert after == "".join(line + "\n" for line in shown + resumed) and resumed[0].startswith(f"resuming {run}")
    scalars = tensorboard_scalars(run / "tensorboard")
    assert len(scalars["train/epoch_loss"]) == 2 and len(scalars["validation/epoch_accuracy"]) == 2
    history = __import__("pandas").read_csv(run / "history.csv")
    np.testing.assert_allclose(scalars["train/epoch_loss"], history["loss"], rtol=1e-5)
    np.testing.assert_allclose(scalars["validation/epoch_accuracy"], history["val_accuracy"], rtol=1e-5)


@pytest.mark.slow
def test_no_tensorboard_logs_unless_asked_or_installed(phantoms, tmp_path):
    config = resolve(recipe="reference", data=str(phantoms), runs_dir=str(tmp_path), name="plain", backbone="tiny",
                     weights="none",
                     image_size=32, epochs=1, batch_size=8, seed=1, bootstrap=0, tensorboard=False)
    run = train(config, progress=False, echo=lambda _: None)
    assert not (run / "tensorboard").exists() and (run / "train.log").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax"])
def test_train_log_and_tensorboard_under_jax_from_the_command_line(phantoms, tmp_path, backend):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-m", "cxr", "train", "--data", str(phantoms), "--runs-dir",
                             str(tmp_path), "--backbone", "tiny", "--weights", "none", "--image-size", "32",
                             "--epochs", "1", "--batch-size", "8", "--bootstrap", "0", "--tensorboard"],
                            env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    run = next(p for p in tmp_path.iterdir() if p.name != "cache")
    log = (run / "train.log").read_text()
    assert "\r" not in log and f"run folder: {run}" in log and "training finished after epoch 1 of 1" in log
    assert "scan: " in result.stderr and "\r" not in result.stderr  # not a terminal: plain progress lines
    assert len(tensorboard_scalars(run / "tensorboard")["train/epoch_loss"]) == 1
