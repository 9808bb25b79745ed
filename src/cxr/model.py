"""The classifier: uint8 grayscale in, class probabilities out.

Conversion to float, gray-to-RGB, ImageNet normalisation and (in training only) horizontal
flips are layers of the model, so fit, predict, export and serving all feed the same bytes.
They are built-in Keras layers without weights, so a saved model loads with `safe_mode` and no
custom objects, and ImageNet weights files line up with the backbone layer for layer.

The backbone is built on the preprocessed tensor (`input_tensor=`), which keeps its layers in the
top-level model: Grad-CAM can reach `relu`, DenseNet169's last convolutional activation.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import layers

from cxr.config import AUGMENTATIONS, BACKBONES
from cxr.errors import WeightsError
from cxr.precision import precision_scope

__all__ = ["allow_jit", "augmentation", "build_model", "compile_model", "DENSENET169_NOTOP_FILE", "describe_weights",
           "DENSENET169_NOTOP_MD5", "DENSENET169_NOTOP_URL", "head", "IMAGENET_MEAN", "IMAGENET_STD",
           "imagenet_weights_path", "LAST_CONV_LAYER", "load_backbone_weights", "load_model", "predict_array",
           "preprocess", "resolve_weights", "warmup_cosine"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
DENSENET169_NOTOP_FILE = "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5"
DENSENET169_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/densenet/" + DENSENET169_NOTOP_FILE
)
DENSENET169_NOTOP_MD5 = "b8c4d4c20dd625c148057b9ff1c1176b"
LAST_CONV_LAYER = {"densenet169": "relu", "tiny": "tiny_relu3"}
# Keras' layers that say they cannot be compiled with XLA: true of TensorFlow's image transform, not of
# JAX's (jax.scipy.ndimage.map_coordinates). See allow_jit.
_XLA_SHY_LAYERS = (layers.RandomRotation, layers.RandomTranslation, layers.RandomZoom)


def augmentation(inputs: keras.KerasTensor, kind: str) -> keras.KerasTensor:
    """Training-only changes of a gray radiograph's geometry and exposure, as a film from another
    machine or another positioning would show (`kind` "radiograph"); nothing for "none".

    Small rotations (up to about 7 degrees), shifts (5 %) and zooms (10 %) with the edge pixels
    repeated, and brightness and contrast within 10 %: no colour changes (the images are gray) and
    no vertical flips (no film is taken upside down). Keras' preprocessing layers act only while
    training, so evaluation, prediction and export see the image as it is.
    """
    if kind == "none":
        return inputs
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; choose from {', '.join(AUGMENTATIONS)}")
    x = layers.Rescaling(1.0, name="augment_to_float")(inputs)  # the random layers need floats, 0-255
    x = layers.RandomRotation(0.02, fill_mode="nearest", name="augment_rotate")(x)
    x = layers.RandomTranslation(0.05, 0.05, fill_mode="nearest", name="augment_shift")(x)
    x = layers.RandomZoom(0.1, fill_mode="nearest", name="augment_zoom")(x)
    x = layers.RandomBrightness(0.1, value_range=(0, 255), name="augment_brightness")(x)
    return layers.RandomContrast(0.1, value_range=(0, 255), name="augment_contrast")(x)


def preprocess(inputs: keras.KerasTensor, flip: bool = True, augment: str = "none") -> keras.KerasTensor:
    """uint8 gray (H, W, 1) -> float RGB normalised as DenseNet's ImageNet weights expect, with the
    training-only augmentation: random horizontal flips (the reference's; `flip=False` leaves them out,
    since the heart is on the left of every chest film) and `augmentation(augment)`.
    """
    inputs = augmentation(inputs, augment)
    rgb = layers.Concatenate(axis=-1, name="gray_to_rgb")([inputs, inputs, inputs])
    # x / 255 then (x - mean) / std, per channel, in one weightless layer.
    normalised = layers.Rescaling(
        scale=(1.0 / (255.0 * IMAGENET_STD)).tolist(),
        offset=(-IMAGENET_MEAN / IMAGENET_STD).tolist(),
        name="imagenet_normalise",
    )(rgb)
    return layers.RandomFlip("horizontal", name="train_flip")(normalised) if flip else normalised


def _tiny_backbone(x: keras.KerasTensor) -> keras.KerasTensor:
    """A three-block CNN for fast tests and smoke runs; same head and contract as DenseNet169."""
    for index, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"tiny_conv{index}")(x)
        x = layers.BatchNormalization(name=f"tiny_bn{index}")(x)
        x = layers.Activation("relu", name=f"tiny_relu{index}")(x)
        if index < 3:
            x = layers.MaxPooling2D(name=f"tiny_pool{index}")(x)
    return layers.GlobalMaxPooling2D(name="max_pool")(x)


def head(features: keras.KerasTensor, n_classes: int) -> keras.KerasTensor:
    """The reference system's dense head on the pooled backbone features.

    It computes in float32 even under mixed precision: it is cheap, a bf16/fp16 softmax loses small
    probabilities, and its activity regulariser's loss must be float32 to be added to the others.
    """
    x = layers.BatchNormalization(momentum=0.99, epsilon=0.001, dtype="float32", name="head_bn")(features)
    x = layers.Dense(
        256,
        activation="relu",
        kernel_regularizer=keras.regularizers.l2(0.016),
        activity_regularizer=keras.regularizers.l1(0.006),
        bias_regularizer=keras.regularizers.l1(0.006),
        dtype="float32",
        name="head_dense",
    )(x)
    x = layers.Dropout(0.45, dtype="float32", name="head_dropout")(x)
    return layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def imagenet_weights_path() -> Path:
    """Keras' cached DenseNet169 ImageNet weights (no top), downloading them on first use."""
    try:
        return Path(
            keras.utils.get_file(
                DENSENET169_NOTOP_FILE,
                DENSENET169_NOTOP_URL,
                cache_subdir="models",
                file_hash=DENSENET169_NOTOP_MD5,
            )
        )
    except Exception as error:  # get_file raises bare Exception on network failure
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        raise WeightsError(
            f"could not get the ImageNet weights for DenseNet169 ({error}).\n"
            f"Without internet, download {DENSENET169_NOTOP_URL} on another machine and either "
            f"put it in {cache}/ or pass its path with --weights PATH; "
            "--weights none trains from scratch."
        ) from None


def resolve_weights(weights: str | os.PathLike | None, backbone: str = "densenet169") -> Path | None:
    """The local weights file for a `--weights` value (downloading ImageNet weights if needed).

    Called before any long work, so a missing file or network fails in seconds, not after a scan.
    """
    if weights in (None, "none"):
        return None
    if backbone != "densenet169":
        raise WeightsError(f"the {backbone} backbone has no pretrained weights; pass --weights none")
    if weights == "imagenet":
        return imagenet_weights_path()
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    return path


def describe_weights(weights: str | os.PathLike | None) -> str:
    """What a new run starts from, for its log: a user who meant to fine-tune must see at once that a run
    is training from scratch (or from which file).

    Args:
        weights: the `--weights` value.

    Returns:
        One phrase, e.g. "random weights (--weights none: from scratch)".
    """
    if weights in (None, "none"):
        return "random weights (--weights none: from scratch)"
    if weights == "imagenet":
        return "ImageNet weights for the DenseNet169 backbone (Keras' file, downloaded once); the head starts random"
    return f"the DenseNet169 backbone weights in {Path(weights).expanduser()}; the head starts random"


def load_backbone_weights(model: keras.Model, path: str | os.PathLike, image_size: int) -> None:
    """Load DenseNet169 (include_top=False) weights from a local .h5 into the model's backbone.

    The file is loaded into a standalone DenseNet169 first, then copied layer by layer by name,
    so Keras' own files (legacy .h5) and Keras 3 `.weights.h5` files both work.
    """
    path = Path(path)
    reference = keras.applications.DenseNet169(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3), pooling="max"
    )
    try:
        reference.load_weights(path)
    except Exception as error:
        raise WeightsError(
            f"{path} does not hold DenseNet169 weights without the top (include_top=False): {error}"
        ) from None
    for layer in reference.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


def build_model(
    n_classes: int,
    image_size: int = 224,
    weights: str | None = "imagenet",
    backbone: str = "densenet169",
    bn_momentum: float | None = None,
    precision: str = "fp32",
    flip: bool = True,
    augment: str = "none",
) -> keras.Model:
    """Build the classifier: uint8 gray image in, class probabilities out.

    Args:
        n_classes: the number of classes (at least 2).
        image_size: the square input size in pixels.
        weights: "imagenet", "none" or None, or a path to a DenseNet169 no-top .h5 file.
        backbone: "densenet169", or "tiny" (a small CNN for tests and smoke runs).
        bn_momentum: replaces the momentum of the backbone's batch-norm layers (the head keeps 0.99).
        precision: fp32, bf16 or fp16; saved with the model (see cxr.precision).
        flip: random horizontal flips in training (the reference's augmentation).
        augment: "none", or "radiograph" for the training-only changes of `augmentation`.

    Returns:
        The uncompiled Keras model (see compile_model).

    Raises:
        ValueError: an unknown backbone or fewer than 2 classes.
        WeightsError: the weights cannot be had or are not DenseNet169's.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes, got {n_classes}")
    with precision_scope(precision):
        inputs = keras.Input((image_size, image_size, 1), dtype="uint8", name="image")
        x = preprocess(inputs, flip, augment)
        if backbone == "densenet169":
            features = keras.applications.DenseNet169(
                include_top=False, weights=None, input_tensor=x, pooling="max"
            ).output
        else:
            features = _tiny_backbone(x)
        model = keras.Model(inputs, head(features, n_classes), name=f"cxr_{backbone}")
    if bn_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization) and layer.name != "head_bn":
                layer.momentum = float(bn_momentum)
    path = resolve_weights(weights, backbone)
    if path is not None:
        load_backbone_weights(model, path, image_size)
    return model


def compile_model(model: keras.Model, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
                  label_smoothing: float = 0.0, optimizer: str = "adamax", weight_decay: float = 0.0) -> keras.Model:
    """Adamax, categorical cross-entropy and accuracy, as in the reference system, or the ingredients
    that replace them.

    Args:
        model: the classifier.
        learning_rate: a rate, or a schedule of it (see warmup_cosine).
        label_smoothing: train towards (1 - s) on the true class and s / classes elsewhere, which keeps the
            model from pushing its probabilities to 0 and 1 (0: the reference's plain cross-entropy).
        optimizer: "adamax" (the reference's) or "adamw".
        weight_decay: decoupled weight decay (0: none, as the reference).

    Returns:
        The model, compiled.
    """
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing) if label_smoothing
            else "categorical_crossentropy")
    decay = {"weight_decay": weight_decay} if weight_decay else {}
    if optimizer == "adamax":
        chosen = keras.optimizers.Adamax(learning_rate, **decay)
    elif optimizer == "adamw":
        chosen = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from adamax, adamw")
    allow_jit(model)
    model.compile(optimizer=chosen, loss=loss, metrics=["accuracy"])
    return model


def allow_jit(model: keras.Model) -> keras.Model:
    """Under JAX, let Keras compile the steps of a model with the geometric augmentation layers.

    RandomRotation, RandomTranslation and RandomZoom set `supports_jit = False` (TensorFlow's image
    transform has no XLA kernel), and one such layer makes Keras run every train, test and predict step
    of the whole model op by op. Under JAX that cost DenseNet169 minutes of compiling single operations in
    the first epoch and slow steps after it (3.7 s against 0.24 s compiled at 32 px, batch 8; see the
    README); JAX's version of their transform compiles like any other op, so they are marked as
    supporting it. Under TensorFlow nothing changes (Keras does not use
    XLA there on a CPU, and these layers must not be). Call it before `compile`; on a model already
    compiled (a loaded one) it also turns compilation back on.

    Args:
        model: the classifier (its augmentation layers are top-level, see build_model).

    Returns:
        The same model.
    """
    if keras.backend.backend() != "jax":
        return model
    shy = [layer for layer in model.layers if isinstance(layer, _XLA_SHY_LAYERS)]
    for layer in shy:
        layer.supports_jit = True
    if shy and model.compiled:
        model.jit_compile = True
    return model


def warmup_cosine(learning_rate: float, epochs: int, steps_per_epoch: int,
                  warmup_epochs: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """A rate that rises linearly from 0 to `learning_rate` over the warm-up epochs, then falls along a
    cosine to 0 at the end of the last epoch: Keras' CosineDecay with its warm-up, counted in steps, so
    it follows the optimizer's step count and a resumed run continues it exactly. The warm-up is cut to
    leave at least the last epoch for the decay (a 1-epoch run, a smoke test, has none).
    """
    warmup_epochs = max(0, min(warmup_epochs, epochs - 1))
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, (epochs - warmup_epochs) * steps_per_epoch), warmup_target=learning_rate,
        warmup_steps=warmup_epochs * steps_per_epoch)


def load_model(path: str | os.PathLike, compile: bool = True) -> keras.Model:
    """Load a saved classifier safely (no deserialised code); `compile=False` leaves out the optimizer
    (for weights alone: a model saved before its first step has an optimizer with no state to load).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with warnings.catch_warnings():
        if keras.backend.backend() == "jax":
            # Keras compiles a loaded model before allow_jit can mark its augmentation layers, warns that it
            # proceeds without jit_compile, and allow_jit then turns it back on: the warning would mislead.
            warnings.filterwarnings("ignore", message="Model doesn't support `jit_compile=True`")
        model = keras.saving.load_model(path, safe_mode=True, compile=compile)
    return allow_jit(model)


def predict_array(model: keras.Model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class probabilities for a uint8 array or memory map, one slice at a time.

    `predict_on_batch` runs Keras' compiled predict step without building a data pipeline per call:
    on a 2-core CPU at 224 px it took 0.56x `model.predict`'s time for one image and gave 1.6x its
    images/s for batches of 32 (benchmarks/inference.py). Slicing keeps a memory map lazy.

    When there are several slices, a short last one is padded to the batch size (and its padding cut from
    the output): every call then has one shape, and JAX compiles one program, not two (a DenseNet169
    compile costs tens of seconds on a CPU). In inference mode each image's output is its own.
    """
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start:start + batch_size])
        short = batch_size - len(chunk) if len(images) > batch_size else 0
        if short:
            chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), dtype=chunk.dtype)])
        output = np.asarray(model.predict_on_batch(chunk))
        parts.append(output[:len(output) - short])
    return np.concatenate(parts) if parts else np.empty((0, model.output_shape[-1]), dtype="float32")
