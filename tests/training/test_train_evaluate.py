"""Training and evaluation with the tiny backbone on phantoms: the run folder's contract."""

import importlib.util
import json
from pathlib import Path

import keras
import pandas as pd
import pytest
import yaml

from cxr.cli import main
from cxr.config import resolve
from cxr.data.split import SPLITS
from cxr.evaluation.evaluate import cross_entropy, report_frame
from cxr.training.loop import train


def test_a_run_folder_holds_everything_it_promises(tiny_run):
    names = sorted(p.relative_to(tiny_run).as_posix() for p in tiny_run.rglob("*")
                   if p.is_file() and not p.relative_to(tiny_run).as_posix().startswith("tensorboard/"))
    # Keras' TensorBoard logs, by default when the tensorboard package is installed (their names hold a time)
    boards = sorted(p.parent.name for p in (tiny_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert boards == (["train", "validation"] if importlib.util.find_spec("tensorboard") else [])
    best = json.loads((tiny_run / "checkpoints" / "state.json").read_text())["best_model"]
    assert names == sorted([
        ".lock", ".lock.pid", f"checkpoints/{best}", "checkpoints/epoch-0002.keras", "checkpoints/state.json",
        "config.yaml", "eval/calibration.json", "eval/classification_report.csv", "eval/classification_report.txt",
        "eval/confusion_matrix.csv", "eval/confusion_matrix.png", "eval/metrics.json", "eval/metrics_per_class.csv",
        "eval/reliability.csv", "eval/reliability.png", "eval/predictions_test.csv", "eval/report.html",
        "eval/roc_pr.png", "eval/gradcam_test.png", "eval/training_curves.png",
        "eval/operating_points.json", "eval/operating_points.csv", "eval/MODEL_CARD.md",
        "eval/predictions_train.csv", "eval/predictions_val.csv", "history.csv", "model.keras",
        "split/dataset.yaml", "split/duplicates.csv", "split/hashes.csv", "split/skipped.csv", "split/test.csv",
        "split/train.csv", "split/val.csv", "train.log",
    ])


def test_config_and_metrics_record_the_software_that_made_them(tiny_run):
    import yaml

    from cxr.environment import record

    recorded = yaml.safe_load((tiny_run / "config.yaml").read_text())["environment"]
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert recorded == metrics["software"] == record()
    assert recorded["backend"] == keras.backend.backend() and recorded["keras"] == keras.__version__


def test_history_has_one_row_per_epoch_with_learning_rate_time_and_decision(tiny_run):
    history = pd.read_csv(tiny_run / "history.csv", keep_default_na=False)
    assert list(history.columns) == [
        "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds",
        "monitor", "improvement_pct", "next_learning_rate", "weights_restored", "action", "answer"]
    assert history["epoch"].tolist() == [1, 2]
    assert history.loc[0, "learning_rate"] == 0.001 and (history["seconds"] > 0).all()
    assert set(history["monitor"]) <= {"accuracy", "val_loss"} and history.loc[0, "action"].endswith("best")
    # The rate of epoch 2 is the one the controller chose after epoch 1.
    assert history.loc[1, "learning_rate"] == history.loc[0, "next_learning_rate"]
    state = json.loads((tiny_run / "checkpoints" / "state.json").read_text())
    assert state["status"] == "finished" and state["epoch"] == 2 and len(state["history"]) == 2


def test_config_records_the_resolved_classes_and_data(tiny_run, phantoms):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["classes"] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert config["data"] == str(phantoms) and config["epochs"] == 2 and config["backbone"] == "tiny"


def test_metrics_agree_with_the_predictions_files(tiny_run):
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert set(metrics["splits"]) == set(SPLITS)
    for name in SPLITS:
        predictions = pd.read_csv(tiny_run / "eval" / f"predictions_{name}.csv")
        split = pd.read_csv(tiny_run / "split" / f"{name}.csv")
        assert predictions["file"].tolist() == split["file"].tolist()
        assert predictions["group"].tolist() == split["group"].tolist()  # cxr compare resamples copies together
        assert metrics["splits"][name]["images"] == len(split)
        assert metrics["splits"][name]["accuracy"] == pytest.approx(predictions["correct"].mean())
    test = pd.read_csv(tiny_run / "eval" / "predictions_test.csv")
    matrix = pd.read_csv(tiny_run / "eval" / "confusion_matrix.csv", index_col=0)
    assert matrix.to_numpy().sum() == len(test)
    assert sum(matrix.loc[c, c] for c in matrix.columns) == test["correct"].sum()
    report = pd.read_csv(tiny_run / "eval" / "classification_report.csv").set_index("class")
    assert report.loc["accuracy", "f1-score"] == pytest.approx(test["correct"].mean())
    assert report.loc["COVID", "support"] == (test["true_label"] == "COVID").sum()


def test_re_evaluation_writes_a_new_folder_and_agrees(tiny_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))  # others share tiny_run
    assert main(["evaluate", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "test" in printed and "accuracy" in printed
    first = json.loads((run / "eval" / "metrics.json").read_text())
    again = json.loads((run / "eval-2" / "metrics.json").read_text())
    for name in SPLITS:
        assert again["splits"][name]["accuracy"] == first["splits"][name]["accuracy"]
        assert again["splits"][name]["loss"] == pytest.approx(first["splits"][name]["loss"], rel=1e-5)


def test_a_split_can_be_reused(tiny_run, tmp_path):
    config = resolve(recipe="reference", split=str(tiny_run / "split"), runs_dir=str(tmp_path), backbone="tiny",
                     weights="none",
                     image_size=32, epochs=1, batch_size=8, bootstrap=100)
    run = train(config, progress=False, echo=lambda *_: None)
    for name in SPLITS:
        assert (run / "split" / f"{name}.csv").read_text() == (tiny_run / "split" / f"{name}.csv").read_text()


def test_cross_entropy_is_the_mean_negative_log_probability_of_the_truth():
    import numpy as np

    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    expected = -(np.log(0.7) + np.log(0.8)) / 2
    assert cross_entropy(np.array([0, 2]), probabilities, 3) == pytest.approx(expected)


def test_report_frame_keeps_accuracy_as_its_own_row():
    report = {"a": {"precision": 1.0, "recall": 0.5, "f1-score": 0.667, "support": 2}, "accuracy": 0.75}
    frame = report_frame(report, 4)
    assert frame["class"].tolist() == ["a", "accuracy"]
    assert frame.loc[1, "f1-score"] == 0.75 and frame.loc[1, "support"] == 4


def test_weights_problems_fail_before_any_run_folder_is_made(tmp_path, phantoms, capsys):
    code = main(["train", "--data", str(phantoms), "--weights", str(tmp_path / "nope.h5"),
                 "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "weights file not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_dataset_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none"), "--weights", "none",
                 "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_evaluate_says_when_the_dataset_folder_is_gone_and_leaves_no_empty_folder(tiny_run, tmp_path, capsys):
    import shutil

    copy = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    config = yaml.safe_load((copy / "config.yaml").read_text())
    assert Path(config["data"]).is_absolute()  # recorded so, it is found from any working folder
    for path, key in ((copy / "config.yaml", "data"), (copy / "split" / "dataset.yaml", "root")):
        settings = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**settings, key: "runs/demo-data/phantoms"}))  # as older runs wrote it
    assert main(["evaluate", str(copy)]) == 2
    assert ("the dataset folder of" in (err := capsys.readouterr().err) and "runs/demo-data/phantoms" in err
            and "relative to the folder the run was trained from" in err)
    assert not (copy / "eval-2").exists()


def test_a_refused_resume_changes_nothing_and_an_empty_split_is_refused(tiny_run, tmp_path):
    import shutil

    from cxr.errors import ConfigError, DatasetError
    from cxr.training.loop import resume

    copy = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    before = (copy / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="learning_rate must be positive"):
        resume(copy, epochs=20, learning_rate=0.0, progress=False, echo=lambda *_: None)
    assert (copy / "config.yaml").read_bytes() == before  # a later plain --resume does not train to 20
    header = (copy / "split" / "val.csv").read_text().splitlines()[0]
    (copy / "split" / "val.csv").write_text(header + "\n")  # as a new run on too few images leaves its folder
    with pytest.raises(DatasetError, match="the val split"):
        resume(copy, epochs=3, progress=False, echo=lambda *_: None)
    assert (copy / "config.yaml").read_bytes() == before


def test_a_scheduled_run_cannot_be_shortened_or_lengthened_on_resume(tmp_path):
    from cxr.errors import ConfigError
    from cxr.run import Run
    from cxr.training.loop import _continuation

    config = resolve(recipe="augmented-cosine", data="d", epochs=4)
    state = {"epoch": 1, "status": "interrupted", "adaptive": {"wait": 0, "reductions": 0}}
    for epochs in (2, 6):  # the saved optimizer's cosine runs over 4 epochs either way
        with pytest.raises(ConfigError, match=f"over 4 epochs; --epochs cannot change that to {epochs}"):
            _continuation(Run(tmp_path), config, state, epochs)
    assert _continuation(Run(tmp_path), config, state, None) == (config, state, False)
    adaptive = resolve(recipe="reference", data="d", epochs=4)
    assert _continuation(Run(tmp_path), adaptive, state, 2)[0].epochs == 2


def test_after_a_nan_a_scheduled_run_is_told_to_start_again_lower(tiny_run, tmp_path):
    import shutil

    from cxr.run import Run
    from cxr.training.loop import _next_step

    copy = Run(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))
    assert _next_step(copy, "nan", 1e-3) == f"Resume with: cxr train --resume {copy} --learning-rate 0.0001"
    assert _next_step(copy, "interrupted", 1e-3) == f"Resume with: cxr train --resume {copy}"
    settings = yaml.safe_load((copy.path / "config.yaml").read_text())
    (copy.path / "config.yaml").write_text(yaml.safe_dump({**settings, "schedule": "cosine", "learning_rate": 0.002}))
    assert _next_step(copy, "nan", 1e-4) == ("Its cosine schedule cannot change on --resume: start a new run with "
                                             "a lower peak rate, e.g. --learning-rate 0.0002")


def test_a_signal_after_the_controllers_stop_leaves_the_run_stopped_early(tmp_path):
    import types

    from cxr.run import Run
    from cxr.training.loop import _continuation, _status
    from cxr.training.stopping import StopSignals

    config = resolve(recipe="reference", data="d", epochs=10)
    signals = StopSignals()
    signals.received = "SIGTERM"  # during the validation of the epoch after which the controller stopped
    late = signals.stopped("after the last epoch")
    controller = types.SimpleNamespace(reductions=3, stop_patience=3)
    saved = types.SimpleNamespace(state={"epoch": 5})
    loop = types.SimpleNamespace(controller=controller, prompt=None, checkpoint=saved)
    assert _status(config, loop, None, late, finalize=False) == "stopped early"
    controller.reductions = 2  # no decision yet: the signal interrupted the run
    assert _status(config, loop, None, late, finalize=False) == "interrupted"
    # Killed after the epoch's save but before the status was written: the saved controller says it stopped.
    state = {"epoch": 5, "status": "running", "adaptive": {"wait": 0, "reductions": 3}}
    assert _continuation(Run(tmp_path), config, state, None)[2] is True  # evaluate it, train no more
    controller.reductions = 3  # as restored from that state: it is recorded as stopped early, not finished
    assert _status(config, loop, state, None, finalize=True) == "stopped early"
    controller.reductions = 2
    assert _status(config, loop, state, None, finalize=True) == "finished"
    assert _continuation(Run(tmp_path), config, {**state, "adaptive": {"reductions": 2}}, None)[2] is False
