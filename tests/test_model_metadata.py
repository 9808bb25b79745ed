"""Model files that describe themselves: a model.keras or model.onnx copied alone still names its classes."""

from __future__ import annotations

import json
import shutil
import zipfile

import keras
import numpy as np
import pytest

from cxr.inference.engines import keras_predictor
from cxr.model import load_model
from cxr.model_metadata import (
    INPUT_CONTRACT,
    KEY,
    describe,
    onnx_description,
    read_description,
    with_description,
    write_keras_with_description,
)
from cxr.run import Run

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def test_a_trained_model_carries_its_classes_contract_and_training_record(tiny_run):
    description = read_description(tiny_run / "model.keras")
    run = Run(tiny_run)
    assert description["classes"] == CLASSES == run.config().classes
    assert description["image_size"] == 32
    assert description["input"] == {"dtype": "uint8", "shape": [32, 32, 1], "contract": INPUT_CONTRACT}
    assert description["run"] == tiny_run.name and description["recipe"] == "reference"
    assert description["backend"] == keras.backend.backend()
    assert description["trained"]["status"] == "finished" and description["trained"]["epoch"] == 2
    assert "temperature" not in description and "operating_points" not in description  # evaluation comes later
    assert "Research use only" in description["notice"]
    # Keras' own metadata stays, and the file loads with safe_mode and no custom objects.
    with zipfile.ZipFile(tiny_run / "model.keras") as archive:
        metadata = json.loads(archive.read("metadata.json"))
        assert set(metadata) == {"keras_version", "date_saved", KEY}
        assert len(archive.namelist()) == 3
    assert load_model(tiny_run / "model.keras").output_shape == (None, 4)


def test_a_model_file_copied_alone_names_its_classes(tiny_run, tmp_path):
    alone = shutil.copyfile(tiny_run / "model.keras", tmp_path / "anything.keras")
    predictor = keras_predictor(alone)
    assert predictor.classes == CLASSES and predictor.image_size == 32
    assert predictor.description["classes"] == CLASSES


def test_an_older_bare_file_without_a_description_gets_generic_names(tiny_run, tmp_path):
    bare = tmp_path / "old.keras"
    load_model(tiny_run / "model.keras").save(bare)  # Keras' own save: no description
    assert read_description(bare) == {}
    assert keras_predictor(bare).classes == ["class_0", "class_1", "class_2", "class_3"]


def test_writing_a_description_copies_every_other_member_byte_for_byte(tiny_run, tmp_path):
    out = write_keras_with_description(tiny_run / "model.keras", tmp_path / "m.keras",
                                       describe(["a", "b", "c", "d"], 32, temperature=1.5))
    with zipfile.ZipFile(tiny_run / "model.keras") as before, zipfile.ZipFile(out) as after:
        assert before.namelist() == after.namelist()
        for name in before.namelist():
            if name != "metadata.json":
                assert before.read(name) == after.read(name)
                assert before.getinfo(name).compress_type == after.getinfo(name).compress_type
    assert read_description(out)["temperature"] == 1.5 and read_description(out)["classes"] == ["a", "b", "c", "d"]
    probe = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
    np.testing.assert_array_equal(load_model(out).predict_on_batch(probe),
                                  load_model(tiny_run / "model.keras").predict_on_batch(probe))
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]  # no temporary left behind


def test_unreadable_or_foreign_files_have_no_description(tmp_path):
    (tmp_path / "text.keras").write_text("not an archive")
    assert read_description(tmp_path / "text.keras") == {}
    assert read_description(tmp_path / "missing.keras") == {}
    with pytest.raises(ValueError, match="is not a .keras archive"):
        write_keras_with_description(tmp_path / "text.keras", tmp_path / "out.keras", describe(["a", "b"], 8))
    assert not (tmp_path / "out.keras").exists()


def test_describe_leaves_out_what_is_unknown():
    assert describe(["a", "b"], 64) == {"format": 1, "classes": ["a", "b"], "image_size": 64,
                                        "input": {"dtype": "uint8", "shape": [64, 64, 1], "contract": INPUT_CONTRACT},
                                        "notice": describe(["a"], 1)["notice"],
                                        "cxr_version": describe(["a"], 1)["cxr_version"]}


def test_onnx_props_carry_the_description_and_older_exports_still_give_classes():
    description = describe(["a", "b"], 64, temperature=0.8, operating_points={"classes": {}})
    props = with_description({"source_sha256": "x"}, description)
    assert props["source_sha256"] == "x" and props["classes"] == '["a", "b"]' and props["image_size"] == "64"
    assert onnx_description(props) == description
    assert onnx_description({"classes": '["a", "b"]', "image_size": "64"}) == {"classes": ["a", "b"], "image_size": 64}
    assert onnx_description({}) == {}
