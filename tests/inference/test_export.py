"""ONNX export: same probabilities as Keras, self-describing files, and inference without TensorFlow."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pandas as pd
import pytest
from helpers import needs_tensorflow

from cxr import files
from cxr.cli import main
from cxr.errors import UserError
from cxr.inference import export
from cxr.inference.engines import load_predictor
from cxr.inference.predict import predict_files

pytestmark = needs_tensorflow  # the export converts a TensorFlow graph in this process

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the trained tiny run, so exports never change what other tests see."""
    return shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))


@pytest.fixture
def exported(run_copy):
    assert main(["export", str(run_copy)]) == 0
    return run_copy


def test_export_writes_a_self_describing_onnx_file_that_matches_keras(run_copy, phantoms, capsys):
    assert main(["export", str(run_copy)]) == 0
    assert "largest difference from Keras on 8 probe images" in capsys.readouterr().out
    exported = run_copy
    session = onnxruntime.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["classes"]) == CLASSES and metadata["image_size"] == "32"
    assert metadata["source_sha256"] == files.sha256(exported / "model.keras")
    assert [(i.name, i.type, i.shape[1:]) for i in session.get_inputs()] == [("image", "tensor(uint8)", [32, 32, 1])]

    test_files = [phantoms / f for f in pd.read_csv(exported / "split" / "test.csv")["file"]]
    keras_frame = predict_files(exported, test_files, engine="keras")
    onnx_frame = predict_files(exported, test_files, engine="onnx")
    columns = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(onnx_frame[columns], keras_frame[columns], atol=1e-4)
    assert (onnx_frame["predicted"] == keras_frame["predicted"]).all()


def test_export_never_overwrites_and_can_write_elsewhere(exported, tmp_path, capsys):
    before = (exported / "model.onnx").read_bytes()
    assert main(["export", str(exported)]) == 2
    assert "model.onnx already exists; choose another file with --out" in capsys.readouterr().err
    assert (exported / "model.onnx").read_bytes() == before
    assert main(["export", str(exported / "model.keras"), "--out", str(tmp_path / "copy.onnx")]) == 0
    assert load_predictor(tmp_path / "copy.onnx").classes == CLASSES


def test_auto_engine_uses_a_current_export_and_falls_back_to_keras_for_a_stale_one(exported, capsys):
    assert load_predictor(exported).engine == "onnx"
    assert load_predictor(exported, engine="keras").engine == "keras"
    # Training the run further replaces model.keras; its old export must not be used silently.
    keras_file = exported / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes() + b"\0")
    notes = []
    assert load_predictor(exported, echo=notes.append).engine == "keras"
    assert "was exported from an earlier model.keras" in notes[0]
    # Asked for by engine, it is served, and the server says so (its temperature and Grad-CAM are the new model's).
    from fastapi.testclient import TestClient

    from cxr.serve.app import create_app

    info = TestClient(create_app(exported, engine="onnx", load_in_background=False)).get("/v1/model").json()
    assert info["engine"] == "onnx" and "was exported from an earlier model.keras" in info["notes"][0]


def test_a_mismatching_export_is_refused_and_nothing_is_written(run_copy, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    with pytest.raises(export.ExportError, match="differ from Keras' by .*nothing was written"):
        export.export_onnx(run_copy, echo=lambda *_: None)
    assert not (run_copy / "model.onnx").exists()
    assert [p.name for p in run_copy.iterdir() if p.name.startswith(".model")] == []


def test_export_outside_tensorflow_says_how_to_run_it(run_copy, monkeypatch):
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(export.ExportError, match="run it with KERAS_BACKEND=tensorflow"):
        export.export_onnx(run_copy, echo=lambda *_: None)


def test_onnx_engine_errors_name_the_file(tmp_path, run_copy):
    with pytest.raises(FileNotFoundError, match=r"model.onnx \(make one with: cxr export RUN\)"):
        load_predictor(run_copy, engine="onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="bad.onnx: not a usable ONNX model"):
        load_predictor(tmp_path / "bad.onnx")


BLOCK_BACKENDS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "jax", "tf2onnx"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from cxr.cli import main
code = main(sys.argv[1:])
assert not {"tensorflow", "keras", "jax"} & set(sys.modules), "a deep-learning framework was imported"
raise SystemExit(code)
"""


def test_onnx_prediction_runs_without_tensorflow_or_keras(exported, phantoms, tmp_path):
    images = phantoms / "Normal" / "images"
    done = subprocess.run([sys.executable, "-c", BLOCK_BACKENDS, "predict", str(exported), str(images), "--engine",
                           "onnx", "--csv", str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Normal-1.png" in done.stdout and "(onnx, fp32)" in done.stderr
    expected = predict_files(exported, [images], engine="keras")
    got = pd.read_csv(tmp_path / "p.csv")
    assert len(got) == 12 and (got["predicted"] == expected["predicted"]).all()
    columns = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(got[columns], expected[columns], atol=1e-4)


@pytest.mark.slow
def test_densenet169_exports_within_tolerance(tmp_path):
    """The real backbone (random weights, moved batch-norm statistics) at a small size."""
    import keras

    from cxr.model import build_model

    model = build_model(3, 64, weights="none")
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma, beta, mean + rng.normal(0, 0.1, mean.shape),
                               variance * rng.uniform(0.5, 1.5, variance.shape)])
    model.save(tmp_path / "model.keras")
    result = export.export_onnx(tmp_path / "model.keras", echo=lambda *_: None)
    assert result["max_abs_difference"] <= 1e-4 and result["classes"] == ["class_0", "class_1", "class_2"]
    predictor = load_predictor(tmp_path / "model.onnx")
    probe = export.probe_images(64)
    np.testing.assert_allclose(predictor.predict(probe), model.predict_on_batch(probe), atol=1e-4)


def test_cxr_uses_only_keras_public_api():
    """A private Keras module (`keras.src...`) may move in any minor release; the export and everything
    else must go through `keras.*` as documented."""
    import ast
    from pathlib import Path

    private = []
    import cxr

    for path in sorted(Path(cxr.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            private += [f"{path.name}: {name}" for name in names if name.startswith("keras.src")]
    assert private == []



def test_a_package_of_an_exported_run_carries_the_onnx_file_described_alike(exported, tmp_path):
    from cxr.model_metadata import read_description
    from cxr.package import package_run

    package_run(exported, tmp_path / "package", echo=lambda _: None)
    keras_description = read_description(tmp_path / "package" / "model.keras")
    onnx_description = read_description(tmp_path / "package" / "model.onnx")
    assert onnx_description == keras_description and "temperature" in onnx_description
    predictor = load_predictor(tmp_path / "package", calibrated=True)
    assert predictor.engine == "onnx"  # the packaged export is of the packaged model.keras
    assert predictor.metadata["source_sha256"] == files.sha256(tmp_path / "package" / "model.keras")
    assert float(predictor.metadata["temperature"]) == keras_description["temperature"]
    alone = shutil.copyfile(tmp_path / "package" / "model.onnx", tmp_path / "alone.onnx")
    assert load_predictor(alone, calibrated=True).classes == CLASSES


def test_a_stale_export_is_left_out_of_a_package_with_a_note(exported, tmp_path):
    from cxr.evaluation.evaluate import evaluate_run
    from cxr.package import package_run

    keras_file = exported / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes() + b"\0")  # trained further after the export
    evaluate_run(exported, progress=False, echo=lambda *_: None, bootstrap=20)
    notes = []
    result = package_run(exported, tmp_path / "package", echo=notes.append)
    assert "model.onnx" not in result["files"] and not (tmp_path / "package" / "model.onnx").exists()
    assert any("left out: it was exported from an earlier model.keras" in note for note in notes)
