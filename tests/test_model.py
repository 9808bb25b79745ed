import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format  # writes the format of Keras' hosted weight files

from cxr import model as cxr_model
from cxr.errors import WeightsError
from cxr.model import IMAGENET_MEAN, IMAGENET_STD, build_model, load_model


@pytest.mark.slow
def test_densenet169_with_head_has_the_reference_parameter_count():
    model = build_model(4, 224, weights="none")
    assert model.count_params() == 13_076_804
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 224, 224, 1)
    assert tuple(model.output.shape) == (None, 4)
    # The backbone is flat in the model, so Grad-CAM can reach its last activation.
    assert model.get_layer("relu").output.shape[-1] == 1664
    head = model.get_layer("head_dense")
    assert head.units == 256 and float(head.kernel_regularizer.l2) == pytest.approx(0.016)
    assert float(head.activity_regularizer.l1) == pytest.approx(0.006)
    assert float(head.bias_regularizer.l1) == pytest.approx(0.006)
    assert model.get_layer("head_dropout").rate == 0.45
    bn = model.get_layer("head_bn")
    assert (bn.momentum, bn.epsilon) == (0.99, 0.001)


def test_preprocessing_is_gray_to_rgb_then_imagenet_normalisation():
    model = build_model(3, 32, weights="none", backbone="tiny")
    front = keras.Model(model.input, model.get_layer("imagenet_normalise").output)
    image = np.arange(32 * 32, dtype=np.int64).reshape(1, 32, 32, 1) % 256
    out = keras.ops.convert_to_numpy(front(image.astype(np.uint8)))
    expected = (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_flip_happens_in_training_only():
    model = build_model(2, 32, weights="none", backbone="tiny")
    flip = keras.Model(model.input, model.get_layer("train_flip").output)
    image = np.tile(np.arange(32, dtype=np.uint8) * 8, (64, 32, 1))[..., None]
    inference = keras.ops.convert_to_numpy(flip(image, training=False))
    np.testing.assert_array_equal(inference, keras.ops.convert_to_numpy(flip(image, training=False)))
    assert inference[0, 0, 0, 0] < inference[0, 0, -1, 0]  # never flipped
    training = keras.ops.convert_to_numpy(flip(image, training=True))
    flipped = training[:, 0, 0, 0] > training[:, 0, -1, 0]
    assert 0 < flipped.sum() < len(flipped)  # some flipped, some not
    np.testing.assert_allclose(training[flipped], inference[flipped][:, :, ::-1], atol=1e-6)


def test_model_saves_and_loads_safely_without_custom_objects(tmp_path):
    model = build_model(4, 32, weights="none", backbone="tiny")
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def densenet_notop(size: int) -> keras.Model:
    keras.utils.set_random_seed(123)
    return keras.applications.DenseNet169(include_top=False, weights=None, input_shape=(size, size, 3), pooling="max")


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_weights_from_a_local_file_land_in_the_backbone(tmp_path, suffix):
    source = densenet_notop(32)
    path = tmp_path / f"densenet169_notop{suffix}"
    if suffix == ".h5":  # the layout of Keras' own downloaded file
        with h5py.File(path, "w") as handle:
            legacy_h5_format.save_weights_to_hdf5_group(handle, source)
    else:
        source.save_weights(path)
    model = build_model(4, 32, weights=str(path))
    for name in ("conv1_conv", "conv5_block32_2_conv", "bn"):
        for got, want in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    # The random-initialised model differs, so the test would catch weights that never loaded.
    fresh = build_model(4, 32, weights="none")
    kernel = source.get_layer("conv1_conv").get_weights()[0]
    assert not np.array_equal(fresh.get_layer("conv1_conv").get_weights()[0], kernel)


@pytest.mark.slow
def test_a_file_that_is_not_densenet_weights_is_a_clear_error(tmp_path):
    bad = tmp_path / "other.h5"
    with h5py.File(bad, "w") as handle:
        handle.attrs["layer_names"] = [b"dense"]
        handle.create_group("dense").attrs["weight_names"] = []
    with pytest.raises(WeightsError, match=r"other.h5 does not hold DenseNet169 weights without the top"):
        build_model(4, 32, weights=str(bad))
    with pytest.raises(WeightsError, match="weights file not found: .*missing.h5"):
        build_model(4, 32, weights=str(tmp_path / "missing.h5"))


def test_imagenet_download_failure_says_how_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(cxr_model, "DENSENET169_NOTOP_URL", "http://127.0.0.1:9/densenet169_notop.h5")
    with pytest.raises(WeightsError) as caught:
        cxr_model.resolve_weights("imagenet")
    message = str(caught.value)
    assert "could not get the ImageNet weights for DenseNet169" in message
    assert "--weights PATH" in message and "--weights none" in message
    assert str(tmp_path / "models") in message


def test_tiny_backbone_has_no_pretrained_weights():
    with pytest.raises(WeightsError, match="the tiny backbone has no pretrained weights; pass --weights none"):
        build_model(4, 32, weights="imagenet", backbone="tiny")


def test_bn_momentum_applies_to_the_backbone_only():
    model = build_model(4, 32, weights="none", backbone="tiny", bn_momentum=0.9)
    assert model.get_layer("tiny_bn1").momentum == 0.9
    assert model.get_layer("head_bn").momentum == 0.99


def test_predict_array_agrees_with_model_predict_in_uneven_batches():
    from cxr.model import predict_array

    model = build_model(3, 32, weights="none", backbone="tiny")
    images = np.random.default_rng(0).integers(0, 256, (21, 32, 32, 1), dtype=np.uint8)
    expected = model.predict(images, batch_size=8, verbose=0)
    probabilities = predict_array(model, images, batch_size=8)  # batches of 8, 8 and 5
    assert probabilities.shape == (21, 3)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert predict_array(model, images[:0]).shape == (0, 3)


class ShapeRecorder:
    """predict_on_batch of a model whose output for an image is its mean pixel (and a second column)."""

    output_shape = (None, 2)

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        means = batch.reshape(len(batch), -1).mean(axis=1)
        return np.stack([means, -means], axis=1)


def test_predict_array_calls_the_model_with_one_shape_and_returns_one_row_per_image():
    from cxr.model import predict_array

    images = np.arange(70 * 4, dtype=np.uint8).reshape(70, 2, 2, 1)
    model = ShapeRecorder()
    outputs = predict_array(model, images, batch_size=32)
    assert model.shapes == [(32, 2, 2, 1)] * 3  # the last 6 images padded to 32: one compiled program
    np.testing.assert_array_equal(outputs[:, 0], images.reshape(70, -1).mean(axis=1))
    few = ShapeRecorder()
    assert predict_array(few, images[:5], batch_size=32).shape == (5, 2) and few.shapes == [(5, 2, 2, 1)]


def test_a_runs_log_says_what_its_weights_start_from(tmp_path):
    from cxr.model import describe_weights

    assert describe_weights("none") == "random weights (--weights none: from scratch)"
    assert describe_weights("imagenet") == ("ImageNet weights for the DenseNet169 backbone (Keras' file, downloaded "
                                            "once); the head starts random")
    assert describe_weights(str(tmp_path / "w.h5")) == (f"the DenseNet169 backbone weights in {tmp_path / 'w.h5'}; "
                                                        "the head starts random")
