"""Mixed precision: bf16/fp16 backbones with a float32 head, saved with the model, convertible for export."""

import keras
import numpy as np
import pytest
from helpers import needs_tensorflow

from cxr import precision
from cxr.config import resolve
from cxr.errors import ConfigError, UserError
from cxr.inference.engines import load_predictor
from cxr.inference.export import export_onnx, probe_images
from cxr.model import build_model, compile_model, load_model
from cxr.training.controller import current_learning_rate
from cxr.training.loop import train


def test_bf16_backbone_float32_head_and_the_global_policy_is_left_alone():
    model = build_model(3, 32, weights="none", backbone="tiny", precision="bf16")
    assert keras.config.dtype_policy().name == "float32"
    assert model.get_layer("tiny_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("tiny_conv1").variable_dtype == "float32"
    assert {model.get_layer(name).compute_dtype for name in ("head_bn", "head_dense", "probabilities")} == {"float32"}
    assert precision.model_precision(model) == "bf16"
    compile_model(model)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1), dtype=np.uint8)
    loss, _ = model.train_on_batch(images, keras.utils.to_categorical(np.arange(8) % 3, 3))
    assert np.isfinite(loss)  # the float32 head's regularisation losses add up with the rest
    assert model.predict_on_batch(images).dtype == np.float32


def test_fp16_gets_loss_scaling_and_its_learning_rate_can_still_be_changed():
    model = compile_model(build_model(3, 32, weights="none", backbone="tiny", precision="fp16"), 1e-3)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    model.optimizer.learning_rate = 5e-4
    assert current_learning_rate(model) == pytest.approx(5e-4)


def test_with_precision_keeps_weights_and_input_and_changes_only_the_compute_type():
    model = build_model(3, 32, weights="none", backbone="tiny", precision="bf16")
    copy = precision.with_precision(model, "fp32")
    assert precision.model_precision(copy) == "fp32" and copy.input.dtype == "uint8"
    for original, converted in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(original, converted)
    images = probe_images(32)
    np.testing.assert_allclose(copy.predict_on_batch(images), model.predict_on_batch(images), atol=0.02)
    assert precision.with_precision(copy, "fp32") is copy


def test_hardware_note_says_when_a_precision_would_be_emulated(monkeypatch):
    assert precision.hardware_note("fp32") is None
    monkeypatch.setattr(precision, "_cpu_flags", lambda: set())
    assert "no native bf16 instructions" in precision.hardware_note("bf16")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512_bf16"})
    assert precision.hardware_note("bf16") is None
    assert "no native fp16" in precision.hardware_note("fp16")


def test_an_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16, got 'int8'"):
        resolve(recipe="reference", data="x", precision="int8")


@pytest.mark.slow
@needs_tensorflow  # it exports to ONNX
def test_a_bf16_run_trains_saves_its_precision_predicts_and_exports(phantoms, tmp_path):
    config = resolve(recipe="reference", data=str(phantoms), runs_dir=str(tmp_path), name="bf16", backbone="tiny",
                     weights="none",
                     image_size=32, epochs=2, batch_size=8, seed=1, precision="bf16", ask_epoch=0,
                     bootstrap=100)
    lines = []
    run = train(config, progress=False, echo=lines.append)
    assert any("tiny" in line and ", bf16" in line for line in lines), lines
    assert precision.model_precision(load_model(run / "model.keras")) == "bf16"
    images = [phantoms / "COVID" / "images" / f"COVID-{i}.png" for i in range(1, 5)]
    from cxr.inference.predict import predict_files

    own = predict_files(run, images, engine="keras")
    assert load_predictor(run, engine="keras").precision == "bf16"
    fp32 = load_predictor(run, precision="fp32")
    assert (fp32.engine, fp32.precision) == ("keras", "fp32")
    as_fp32 = predict_files(fp32, images)
    columns = [c for c in own.columns if c.startswith("p_")]
    np.testing.assert_allclose(as_fp32[columns], own[columns], atol=0.02)

    result = export_onnx(run, echo=lambda *_: None)  # exported as the float32 copy
    assert result["max_abs_difference"] <= 1e-4
    onnx_frame = predict_files(run, images, engine="onnx")
    np.testing.assert_allclose(onnx_frame[columns], as_fp32[columns], atol=1e-4)
    with pytest.raises(UserError, match="ONNX models compute in fp32; bf16 needs the keras engine"):
        load_predictor(run, engine="onnx", precision="bf16")
