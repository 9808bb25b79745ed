"""Training control end to end: asking, NaN, the run lock, SIGKILL + resume, SIGINT and SIGTERM.

The subprocess tests run the real `cxr train` on the real sample with the tiny backbone at 128 px
(about a second per epoch here), kill it at a chosen moment and check what is left on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import only_run, read_state

from cxr.cli import main
from cxr.config import resolve
from cxr.errors import ConfigError, UserError
from cxr.files import remove_temporaries
from cxr.model import load_model
from cxr.run import Run, RunBusyError
from cxr.training.controller import DECISION_KEYS
from cxr.training.loop import resume, train
from cxr.training.stopping import StopSignals, TrainingStopped, terminal_reader

QUIET = dict(progress=False, echo=lambda *_: None)


def tiny_config(data, runs, **overrides):
    settings = dict(data=str(data), runs_dir=str(runs), backbone="tiny", weights="none", image_size=32,
                    epochs=3, batch_size=8, seed=1, bootstrap=100)
    return resolve(recipe="reference", **{**settings, **overrides})


@pytest.mark.slow
def test_the_answer_h_halts_and_is_recorded_in_the_history_and_state(phantoms, tmp_path):
    answers = iter(["not a number", "H"])
    run = train(tiny_config(phantoms, tmp_path, ask_epoch=1), read=lambda prompt: next(answers), **QUIET)
    history = pd.read_csv(run / "history.csv", keep_default_na=False)
    assert list(history["epoch"]) == [1]
    assert history.loc[0, "answer"] == "halted by the user after epoch 1"
    state = read_state(run)
    assert state["status"] == "halted" and state["epoch"] == 1
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["training"] == {"status": "halted", "epoch": 1, "epochs": 3, "best_epoch": 1,
                                   "ended": state["saved"]}
    # The user's H ends the run: resuming needs an explicit --epochs.
    with pytest.raises(ConfigError, match=r"is complete \(halted after epoch 1 of 3\); to train longer, add --epochs"):
        resume(run, **QUIET)
    # A run whose training ended but whose final evaluation did not is only evaluated.
    shutil.rmtree(run / "eval")
    messages = []
    resume(run, progress=False, echo=messages.append)
    assert f"resuming {run} after epoch 1 of 3: training is complete, evaluating it" in messages
    assert (run / "eval" / "metrics.json").is_file() and read_state(run)["status"] == "halted"


@pytest.mark.slow
def test_the_ask_schedule_survives_a_resume_without_a_terminal(phantoms, tmp_path):
    run = train(tiny_config(phantoms, tmp_path, ask_epoch=2, epochs=1), **QUIET)  # no terminal: no asking
    assert read_state(run)["ask"] == {"next_ask": 2}
    prompts = []
    resume(run, epochs=4, read=lambda prompt: prompts.append(prompt) or "H", **QUIET)
    assert len(prompts) == 1 and prompts[0].startswith("epoch 2/4 done.")
    assert read_state(run)["status"] == "halted" and read_state(run)["epoch"] == 2


@pytest.mark.slow
def test_a_run_stopped_early_resumes_only_with_more_epochs_and_a_fresh_allowance(phantoms, tmp_path, monkeypatch):
    import cxr.training.loop

    class NeverImproves(cxr.training.loop.AdaptiveLR):  # training accuracy falls after epoch 1, whatever happens
        def on_epoch_end(self, epoch, logs=None):
            judged = {**logs, "accuracy": 0.5 if epoch == 0 else 0.4}
            super().on_epoch_end(epoch, judged)
            logs.update({key: judged[key] for key in DECISION_KEYS})  # the decision travels in the epoch's logs

    monkeypatch.setattr(cxr.training.loop, "AdaptiveLR", NeverImproves)
    run = train(tiny_config(phantoms, tmp_path, epochs=6, stop_patience=2), **QUIET)
    assert read_state(run)["status"] == "stopped early" and read_state(run)["epoch"] == 3
    with pytest.raises(ConfigError, match=r"is complete \(stopped early after epoch 3 of 6\)"):
        resume(run, **QUIET)
    resume(run, epochs=8, **QUIET)  # two more reductions allowed: epochs 4 and 5, then it stops again
    history = pd.read_csv(run / "history.csv", keep_default_na=False)
    assert list(history["epoch"]) == [1, 2, 3, 4, 5] and read_state(run)["status"] == "stopped early"
    assert list(history["learning_rate"]) == [1e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4]
    assert history.loc[4, "action"].endswith("stop: 2 learning-rate reduction(s) without improvement")
    assert sorted(p.name for p in run.glob("eval*")) == ["eval", "eval-2"]  # the first evaluation stays


def test_a_run_without_resumable_checkpoints_is_refused(tmp_path, tiny_run):
    old = tmp_path / "old-run"
    old.mkdir()
    shutil.copy(tiny_run / "config.yaml", old)
    (old / "history.csv").write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(UserError, match="has no checkpoints/state.json: it was trained by an earlier version"):
        resume(old, **QUIET)


@pytest.mark.slow
def test_a_loss_that_is_not_finite_stops_with_a_clear_message(phantoms, tmp_path):
    with pytest.raises(TrainingStopped) as caught:
        train(tiny_config(phantoms, tmp_path, learning_rate=1e30), **QUIET)
    assert caught.value.kind == "nan" and caught.value.exit_code == 3
    assert "the training loss became" in str(caught.value) and "in epoch 1" in str(caught.value)
    assert "No epoch was completed, so no model was saved; start a new run with a lower --learning-rate" in str(
        caught.value)


def test_a_finished_run_is_not_resumed_without_more_epochs(tiny_run):
    expected = r"is complete \(finished after epoch 2 of 2\); to train longer, add --epochs N with N > 2"
    with pytest.raises(ConfigError, match=expected):
        resume(tiny_run, **QUIET)
    with pytest.raises(ConfigError, match="has trained 2 epoch"):
        resume(tiny_run, epochs=2, **QUIET)


def test_resume_takes_no_other_settings(capsys):
    assert main(["train", "--resume", "runs/x", "--batch-size", "4", "--epochs", "5", "--learning-rate", "0.1"]) == 2
    assert ("only --epochs, --learning-rate and --checkpoint-every may be given with it, not --batch-size"
            in capsys.readouterr().err)


def test_a_locked_run_is_refused_with_the_pid_of_its_owner(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from cxr.run import Run\n"
        f"with Run({str(tmp_path)!r}).lock():\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusyError, match=f"being written by a live process \\(pid {holder.pid}\\)"):
            with Run(tmp_path).lock():
                pass
    finally:
        holder.kill()
        holder.wait()
    with Run(tmp_path).lock():  # the dead holder's lock is gone
        pass


def test_training_imports_without_fcntl_as_on_windows():
    """Windows has no fcntl; the run lock must come from a portable library, so training still imports."""
    done = subprocess.run([sys.executable, "-c", (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'fcntl': raise ImportError('no fcntl on Windows')\n"
        "sys.meta_path.insert(0, Block()); sys.modules.pop('fcntl', None)\n"
        "import cxr.training.checkpoint, cxr.evaluation.evaluate, cxr.training.loop\n"
        "import filelock; assert filelock.FileLock is not None\n")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    leftovers = [tmp_path / "checkpoints" / ".epoch-0002.keras.x1y2z3.keras", tmp_path / ".history.csv.abc.csv"]
    kept = [tmp_path / ".lock", tmp_path / "checkpoints" / "epoch-0001.keras", tmp_path / "history.csv"]
    for path in leftovers + kept:
        path.write_text("x")
    assert remove_temporaries(tmp_path, echo=lambda _: None) == 2
    assert [p.exists() for p in leftovers + kept] == [False, False, True, True, True]


def test_a_state_naming_a_missing_model_file_is_reported(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"format": 1, "epoch": 2, "model": "epoch-0002.keras"}))
    with pytest.raises(UserError, match="names epoch-0002.keras, which is missing"):
        read_state(tmp_path)


# --- real processes ---------------------------------------------------------------------------

def cli_args(sample, runs, name, epochs, *extra):
    return [sys.executable, "-m", "cxr", "train", "--recipe", "reference", "--data", str(sample), "--backbone",
            "tiny", "--weights", "none",
            "--image-size", "128", "--batch-size", "8", "--epochs", str(epochs), "--seed", "5", "--deterministic",
            "--runs-dir", str(runs), "--name", name, "--bootstrap", "100", *extra]


def start(args, backend="tensorflow"):
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "KERAS_BACKEND": backend})


def run_cli(args, expect=0, backend="tensorflow"):
    done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": backend})
    assert done.returncode == expect, done.stdout + done.stderr
    return done.stdout + done.stderr


def wait_for_epoch(runs: Path, epoch: int, process: subprocess.Popen, timeout: float = 300,
                   inside: bool = False) -> Path:
    """Poll until some run under `runs` has saved `epoch` (with `inside`: 5 or more batches of epoch `epoch`);
    return its folder.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in runs.glob("*/checkpoints/state.json"):
            state = json.loads(path.read_text())  # replaced atomically: never half-read
            partial = state.get("partial") or {"epoch": 0, "batches": 0}
            if (partial["epoch"] >= epoch and partial["batches"] >= 5) if inside else state["epoch"] >= epoch:
                return path.parents[1]
        assert process.poll() is None, f"training exited early:\n{process.communicate()[0]}"
        time.sleep(0.01)
    raise AssertionError(f"no epoch {epoch} within {timeout} s")


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    return output


def run_outcome(run: Path) -> tuple[pd.DataFrame, list[np.ndarray], dict]:
    history = pd.read_csv(run / "history.csv").drop(columns=["seconds"])
    weights = load_model(run / "model.keras").get_weights()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["splits"]
    return history, weights, metrics


WHOLE_RUNS: dict[str, tuple] = {}  # backend -> the uninterrupted run's outcome, shared by the kill tests


def whole_run(sample, tmp_path_factory, backend: str) -> tuple:
    if backend not in WHOLE_RUNS:
        runs = tmp_path_factory.mktemp(f"whole-{backend}")
        run_cli(cli_args(sample, runs, "whole", 3), backend=backend)
        WHOLE_RUNS[backend] = run_outcome(only_run(runs))
    return WHOLE_RUNS[backend]


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "inside"), [("tensorflow", False), ("tensorflow", True), ("jax", True)],
                         ids=["tensorflow-after-epoch-1", "tensorflow-inside-epoch-2", "jax-inside-epoch-2"])
def test_sigkill_during_epoch_2_then_resume_equals_an_uninterrupted_run(sample, tmp_path, tmp_path_factory,
                                                                        backend, inside):
    whole = whole_run(sample, tmp_path_factory, backend)
    # Saving inside an epoch every 20 ms saves after nearly every batch (and changes no result).
    extra = ["--checkpoint-every", str(0.02 / 60)] if inside else []
    process = start(cli_args(sample, tmp_path / "killed", "killed", 3, *extra), backend)
    run = wait_for_epoch(tmp_path / "killed", 2, process, inside=True) if inside \
        else wait_for_epoch(tmp_path / "killed", 1, process)
    process.send_signal(signal.SIGKILL)
    finish(process)
    assert process.returncode == -signal.SIGKILL
    state = read_state(run)
    partial = state.get("partial")
    assert state["epoch"] == 1, "the kill was meant to land during epoch 2"
    assert len(pd.read_csv(run / "history.csv")) == 1 and not (run / "model.keras").exists()
    if inside:
        assert partial["epoch"] == 2 and 5 <= partial["batches"] < partial["of"] == 45, partial  # 356 images / 8
        assert (run / "checkpoints" / f"step-0002-{partial['batches']:06d}.keras").is_file()
    else:
        assert partial is None and not list((run / "checkpoints").glob("step-*"))

    output = run_cli([sys.executable, "-m", "cxr", "train", "--resume", str(run)], backend=backend)
    where = (f"in epoch 2 of 3, at batch {partial['batches'] + 1} of 45" if inside else "after epoch 1 of 3")
    assert f"resuming {run} {where}" in output and f"backend {backend}" in output
    assert "ran out of data" not in output
    history, weights, metrics = run_outcome(run)
    assert list(history["epoch"]) == [1, 2, 3] and read_state(run)["status"] == "finished"
    pd.testing.assert_frame_equal(history, whole[0])
    assert all(np.array_equal(a, b) for a, b in zip(weights, whole[1], strict=True))
    assert metrics == whole[2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        ["state.json", "epoch-0003.keras", f"best-{read_state(run)['best_epoch']:04d}.keras"])
    assert not [p for p in run.rglob(".*") if p.name not in (".lock", ".lock.pid")]  # no temporary file anywhere


@pytest.mark.slow
def test_sigint_stops_saves_evaluates_says_how_to_resume_and_resume_finishes(sample, tmp_path):
    run_cli(cli_args(sample, tmp_path / "whole", "whole", 6))
    whole = run_outcome(only_run(tmp_path / "whole"))
    process = start(cli_args(sample, tmp_path / "int", "int", 6))
    run = wait_for_epoch(tmp_path / "int", 1, process)
    with pytest.raises(RunBusyError, match=f"pid {process.pid}"):
        resume(run, **QUIET)  # a second process may not write into a live run
    process.send_signal(signal.SIGINT)
    output = finish(process)
    assert process.returncode == 130, output
    # During training "at the end of this batch"; during validation (rarer) "when this epoch's validation ends".
    assert "SIGINT received: stopping " in output
    assert "cxr: stopped: interrupted by SIGINT" in output
    assert f"Resume with: cxr train --resume {run}" in output
    state = read_state(run)
    done, partial = state["epoch"], state.get("partial")
    assert state["status"] == "interrupted" and 1 <= done < 6
    assert len(pd.read_csv(run / "history.csv")) == done
    if partial:  # stopped inside an epoch's training (not its validation): saved where it was
        assert partial["epoch"] == done + 1 and f"{partial['batches']} of 45 batches of epoch {done + 1} are saved" \
            in output
    metrics = json.loads((run / "eval-interrupted" / "metrics.json").read_text())
    assert sorted(metrics["splits"]) == ["test", "val"] and metrics["training"]["status"] == "interrupted"
    assert (run / "model.keras").is_file() and not (run / "eval").exists()

    output = run_cli([sys.executable, "-m", "cxr", "train", "--resume", str(run)])
    assert (f"in epoch {done + 1} of 6, at batch {partial['batches'] + 1} of 45" if partial
            else f"after epoch {done} of 6") in output
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert read_state(run)["status"] == "finished"
    assert sorted(json.loads((run / "eval" / "metrics.json").read_text())["splits"]) == ["test", "train", "val"]
    # Resumed from where SIGINT stopped it, the run ends as an uninterrupted one.
    history, weights, metrics = run_outcome(run)
    pd.testing.assert_frame_equal(history, whole[0])
    assert all(np.array_equal(a, b) for a, b in zip(weights, whole[1], strict=True)) and metrics == whole[2]


@pytest.mark.slow
def test_a_second_stop_signal_exits_at_once_and_keeps_the_last_epoch(sample, tmp_path):
    process = start(cli_args(sample, tmp_path, "twice", 50))
    run = wait_for_epoch(tmp_path, 1, process)
    os.kill(process.pid, signal.SIGTERM)
    os.kill(process.pid, signal.SIGINT)
    output = finish(process, timeout=60)
    assert process.returncode in (130, 143), output
    assert "exiting now" in output and f"Resume with: cxr train --resume {run}" in output
    state = read_state(run)
    assert state["epoch"] >= 1 and len(pd.read_csv(run / "history.csv")) >= state["epoch"]
    assert not (run / "eval-interrupted").exists()
    load_model(run / "checkpoints" / state["model"])  # the saved epoch is intact


@pytest.mark.slow
def test_a_nan_after_saved_epochs_keeps_and_evaluates_the_best_and_can_resume(phantoms, tmp_path, monkeypatch):
    import cxr.training.loop

    class NanInEpoch2(cxr.training.loop.StopGuard):
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, {"loss": float("nan")} if self.epoch == 2 else logs)

    class NanValidationInEpoch3(cxr.training.loop.StopGuard):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, {**logs, "val_loss": float("inf")} if epoch == 2 else logs)

    monkeypatch.setattr(cxr.training.loop, "StopGuard", NanInEpoch2)
    with pytest.raises(TrainingStopped) as caught:
        train(tiny_config(phantoms, tmp_path, epochs=4), **QUIET)
    run = only_run(tmp_path)
    assert caught.value.kind == "nan" and "the training loss became nan in epoch 2, batch 1" in str(caught.value)
    assert (f"Epoch 1 is saved; the best so far is model.keras, evaluated in {run / 'eval-interrupted'}. "
            f"Resume with: cxr train --resume {run} --learning-rate 0.0001") in str(caught.value)
    state = read_state(run)
    assert state["status"] == "nan" and state["epoch"] == 1 and (run / "model.keras").is_file()

    # A non-finite validation loss stops too, and that epoch's weights are not saved.
    monkeypatch.setattr(cxr.training.loop, "StopGuard", NanValidationInEpoch3)
    with pytest.raises(TrainingStopped, match="the validation loss became inf at the end of epoch 3"):
        resume(run, learning_rate=1e-4, **QUIET)
    assert read_state(run)["epoch"] == 2
    monkeypatch.undo()
    resume(run, **QUIET)
    history = pd.read_csv(run / "history.csv")
    assert read_state(run)["status"] == "finished" and list(history["epoch"]) == [1, 2, 3, 4]
    assert history.loc[1, "learning_rate"] == 1e-4  # the rate given to --resume


@pytest.mark.slow
def test_a_stop_in_epoch_1_keeps_its_batches_and_the_resume_ends_as_an_uninterrupted_run(phantoms, tmp_path,
                                                                                          monkeypatch):
    import cxr.training.loop
    import cxr.training.progress

    train(tiny_config(phantoms, tmp_path / "whole", deterministic=True), **QUIET)
    whole = only_run(tmp_path / "whole")

    class SignalAfterBatch3(cxr.training.loop.StopGuard):
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            if self.epoch == 1 and batch == 2:
                self.signals.received = "SIGTERM"  # as the handler does; acted on when batch 4 begins

    monkeypatch.setattr(cxr.training.loop, "StopGuard", SignalAfterBatch3)
    with pytest.raises(TrainingStopped) as caught:
        train(tiny_config(phantoms, tmp_path / "stopped", deterministic=True), **QUIET)
    run = only_run(tmp_path / "stopped")
    state = read_state(run)
    assert caught.value.exit_code == 143 and state["status"] == "interrupted" and state["epoch"] == 0
    assert state["partial"]["batches"] == 3 and state["partial"]["epoch"] == 1
    assert str(caught.value) == (f"interrupted by SIGTERM during epoch 1. No epoch was completed; 3 of "
                                 f"{state['partial']['of']} batches of epoch 1 are saved. Resume with: "
                                 f"cxr train --resume {run}")
    assert not (run / "model.keras").exists() and not (run / "eval-interrupted").exists()

    # The resume prints a progress line per batch (no terminal here), starting from batch 4.
    monkeypatch.undo()
    monkeypatch.setattr(cxr.training.progress, "PROGRESS_EVERY", 0.0)
    lines: list[str] = []
    resume(run, echo=lines.append, progress=True)
    assert f"resuming {run} in epoch 1 of 3, at batch 4 of {state['partial']['of']}" in lines
    assert any(line.startswith(f"epoch 1/3: batch 4/{state['partial']['of']}, ") and "images/s, about" in line
               for line in lines), lines
    history = pd.read_csv(run / "history.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(history, pd.read_csv(whole / "history.csv").drop(columns=["seconds"]))
    weights, expected = load_model(run / "model.keras").get_weights(), load_model(whole / "model.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(weights, expected, strict=True))
    assert not list((run / "checkpoints").glob("step-*"))  # the epoch's end replaced the step checkpoint


def test_a_stop_signal_that_came_while_saving_stops_instead_of_asking(monkeypatch):
    signals = StopSignals()
    read = terminal_reader(signals)
    monkeypatch.setattr("builtins.input", lambda prompt: (_ for _ in ()).throw(EOFError))
    assert read("go on? ") is None  # end of input
    signals.received = "SIGTERM"
    with pytest.raises(TrainingStopped, match="interrupted by SIGTERM after the epoch was saved") as caught:
        read("go on? ")
    assert caught.value.exit_code == 143 and caught.value.kind == "interrupted"
