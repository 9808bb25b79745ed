"""What a run says is kept: train.log through logging, TensorBoard curves, and progress a log file can hold."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from helpers import tensorboard_scalars

from cxr import logs
from cxr.config import resolve
from cxr.training.loop import resume, train


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
