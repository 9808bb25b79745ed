"""INT8 export: calibrated on val, checked against fp32 on test, refused below the agreement asked, and used
only when asked for.
"""

import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
from helpers import needs_tensorflow

from cxr.cli import main
from cxr.errors import UserError
from cxr.inference import quantize
from cxr.inference.engines import load_predictor
from cxr.inference.predict import predict_files
from cxr.model_metadata import onnx_description
from cxr.run import Run

pytestmark = needs_tensorflow  # the fp32 export it starts from converts a TensorFlow graph

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))


def _description(path) -> dict:
    return onnx_description({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def test_int8_export_is_calibrated_on_val_checked_on_test_and_describes_itself(run_copy, phantoms, monkeypatch,
                                                                              capsys):
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 0.0)  # a 2-epoch tiny model: the agreement is what it is
    assert main(["export", str(run_copy), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "no current fp32 export beside model.keras: exporting one first (not kept)" in out
    assert not (run_copy / "model.onnx").exists()
    int8 = run_copy / "model.int8.onnx"
    proto = onnx.load(str(int8))
    operators = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= operators
    assert any(tensor.data_type == onnx.TensorProto.INT8 for tensor in proto.graph.initializer)

    description = _description(int8)
    record = description["quantization"]
    val, test = (pd.read_csv(run_copy / "split" / f"{name}.csv") for name in ("val", "test"))
    assert description["classes"] == CLASSES and description["image_size"] == 32
    assert (record["calibration_images"], record["check_images"]) == (len(val), len(test))
    assert (record["calibration_split"], record["check_split"], record["run"]) == ("val", "test", run_copy.name)

    # The recorded agreement is the one a user measures with the two engines on the test images.
    main(["export", str(run_copy)])
    files = [phantoms / name for name in test["file"]]
    fp32 = predict_files(run_copy, files, engine="onnx")
    quantized = predict_files(run_copy, files, engine="onnx-int8")
    assert record["top1_agreement"] == pytest.approx(float(np.mean(fp32["predicted"] == quantized["predicted"])))
    assert f"{record['top1_agreement']:.1%} of {len(test)} images" in out


def test_int8_below_the_agreement_asked_is_refused_with_its_figures(run_copy, monkeypatch, capsys):
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)
    assert main(["export", str(run_copy), "--quantize", "int8"]) == 2
    error = capsys.readouterr().err
    assert "the INT8 model picks the same class as the fp32 model on" in error
    assert "under the 101% required" in error and "nothing was written" in error
    assert not (run_copy / "model.int8.onnx").exists()


def test_int8_is_used_only_when_asked_for(run_copy, monkeypatch, capsys):
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 0.0)
    with pytest.raises(FileNotFoundError, match="make one with: cxr export RUN --quantize int8"):
        load_predictor(run_copy, engine="onnx-int8")
    assert main(["export", str(run_copy)]) == 0
    assert main(["export", str(run_copy), "--quantize", "int8"]) == 0
    assert "exporting one first" not in capsys.readouterr().out  # the current fp32 export was reused
    assert load_predictor(run_copy).engine == "onnx"  # auto: fp32 ONNX, never the quantised file
    for model, engine in [(run_copy, "onnx-int8"), (run_copy / "model.keras", "onnx-int8"),
                          (run_copy / "model.int8.onnx", "auto"), (run_copy / "model.int8.onnx", "onnx")]:
        predictor = load_predictor(model, engine=engine)
        assert (predictor.engine, predictor.precision, predictor.classes) == ("onnx-int8", "int8", CLASSES)
        assert predictor.path == run_copy / "model.int8.onnx"
    assert main(["export", str(run_copy), "--quantize", "int8"]) == 2
    assert "model.int8.onnx already exists" in capsys.readouterr().err

    # The server says which file it runs: the run is named, the INT8 file is what is hashed and run.
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cxr import files
    from cxr.serve.app import create_app

    app = create_app(run_copy, engine="onnx-int8", load_in_background=False)
    info = TestClient(app).get("/v1/model").json()
    assert (info["engine"], info["precision"]) == ("onnx-int8", "int8")
    assert info["model_file"] == str(run_copy / "model.int8.onnx")
    assert info["model_id"] == files.sha256(run_copy / "model.int8.onnx")[:12]
    # Named directly, the INT8 file still finds its model.keras (Grad-CAM) and the run's evaluation of it.
    info = TestClient(create_app(run_copy / "model.int8.onnx", load_in_background=False)).get("/v1/model").json()
    assert info["engine"] == "onnx-int8" and info["explanations"] is True
    assert info["temperature"] == Run(run_copy).temperature()[0] is not None


def test_int8_needs_the_run_its_images_come_from(run_copy, tmp_path):
    alone = shutil.copyfile(run_copy / "model.keras", tmp_path / "model.keras")
    with pytest.raises(UserError, match="not in a run folder: INT8 calibration needs the run's validation images"):
        quantize.quantize_run(alone, echo=lambda *_: None)


def test_int8_file_names():
    assert Run.int8_of("a/model.keras").as_posix() == "a/model.int8.onnx"
    assert Run.int8_of("a/model.onnx").as_posix() == "a/model.int8.onnx"
    assert Run.int8_of("a/model.int8.onnx").as_posix() == "a/model.int8.onnx"
    assert quantize.MIN_AGREEMENT == 0.99  # the threshold
