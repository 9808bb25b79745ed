"""The run folder: its name, its records and the order of its evaluations, without training anything."""

import json
import time

import pytest

from cxr import files
from cxr.config import Config
from cxr.errors import ConfigError, UserError
from cxr.run import EvalDir, Run


def test_run_folders_are_never_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")  # two runs in one second
    first, second = Run.create(tmp_path, "my run/1"), Run.create(tmp_path, "my run/1")
    assert first.path != second.path and first.path.is_dir() and second.path.is_dir()
    assert first.path.name == "20260101-000000-my-run-1" and second.path.name == "20260101-000000-my-run-1-2"


def test_a_model_argument_is_a_file_or_a_run_folder_and_a_run_is_known_by_its_config(tmp_path):
    run = Run(tmp_path)
    assert Run.model_of(tmp_path) == tmp_path / "model.keras"
    assert Run.model_of(tmp_path / "x.onnx") == tmp_path / "x.onnx"
    assert Run.containing(tmp_path / "model.keras") is None
    run.write_config(Config(data="/d", classes=["a", "b"]), environment={"cxr": "0.1.0"})
    assert Run.containing(tmp_path / "model.onnx").path == tmp_path
    assert run.config() == Config(data="/d", classes=["a", "b"]) and run.environment() == {"cxr": "0.1.0"}
    (tmp_path / "config.yaml").write_text("data: /d\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        run.config()


def test_checkpoint_names_and_a_state_naming_a_missing_file_is_refused(tmp_path):
    run = Run(tmp_path)
    assert Run.checkpoint_name("epoch", 3) == "epoch-0003.keras" and Run.checkpoint_name("best", 0) == "best-0000.keras"
    assert run.state() is None and run.training_summary() is None
    run.write_state({"format": 1, "epoch": 2, "model": "epoch-0002.keras", "status": "finished", "saved": "t"})
    with pytest.raises(UserError, match="names epoch-0002.keras, which is missing"):
        run.state()
    assert run.training_summary() == {"status": "finished", "epoch": 2, "epochs": None, "best_epoch": None,
                                      "ended": "t"}


def evaluation(run: Run, kind: str, evaluated: str | None, temperature: float, sha: str) -> EvalDir:
    folder = run.new_eval_dir(kind)
    files.write_json(folder.metrics, {"evaluated": evaluated} if evaluated else {})
    files.write_json(folder.calibration, {"temperature": temperature, "model_sha256": sha})
    return folder


def test_evaluations_are_ordered_by_the_time_they_record_and_the_temperature_follows_the_model(tmp_path):
    run = Run(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"model one")
    one = files.sha256(tmp_path / "model.keras")
    old = evaluation(run, "eval", None, 1.0, one)  # written before evaluations recorded their time
    interrupted = evaluation(run, "eval-interrupted", "2026-12-01T10:00:00.000+00:00", 2.0, one)
    later = evaluation(run, "eval", "2026-12-01T09:00:00.000+01:00", 3.0, "another model")
    assert later.name == "eval-2"
    assert [e.name for e in run.evaluations()] == ["eval-interrupted", "eval-2", "eval"]  # 10:00Z, 08:00Z, no time
    assert run.latest_eval().name == "eval-2"  # an interrupted training's evaluation is not the final one
    assert run.temperature() == (2.0, interrupted.calibration)
    (tmp_path / "eval-2" / "metrics.json").unlink()  # an evaluation that never finished does not count
    assert run.latest_eval().name == "eval" and old.path.is_dir()
    (tmp_path / "model.keras").write_bytes(b"model two")  # trained further: no evaluation fits it yet
    assert run.temperature() is None


def test_the_lock_file_and_the_owner_pid_stay_and_temporaries_go(tmp_path):
    run = Run(tmp_path)
    with run.lock():
        assert json.loads((tmp_path / ".lock.pid").read_text()) > 0
    (tmp_path / ".model.keras.abc123.keras").write_bytes(b"partial")
    assert run.remove_temporaries(echo=lambda _: None) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".lock.pid"]
