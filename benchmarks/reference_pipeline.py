"""The reference Kaggle pipeline, re-created for comparison only: cxr never imports this file.

What the notebook did, on the TensorFlow backend: a pandas frame of file paths and labels, an 80/10/10
stratified split with scikit-learn, `ImageDataGenerator(horizontal_flip=True).flow_from_dataframe(...)`
reading and resizing every file in every epoch (RGB, batch 16, no other preprocessing), an ImageNet
DenseNet169 without its top (max pooling) under BatchNormalization, Dense(256, L2/L1 regularisers),
Dropout(0.45) and a softmax, Adamax at 0.001, categorical cross-entropy with accuracy, `model.fit` and
`model.predict`. benchmarks/training.py times it against cxr on the same files.

    .venv/bin/python benchmarks/reference_pipeline.py --data DATASET [--epochs 1] [--image-size 224]
        [--weights imagenet|none]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

BATCH = 16


def dataset_frame(root: str | os.PathLike) -> pd.DataFrame:
    """Every image of a Kaggle-layout folder (<Class>/images/*.png) with its class, as the notebook listed them."""
    rows = [(str(path), path.parent.parent.name) for path in sorted(Path(root).glob("*/images/*"))
            if path.suffix.lower() in (".png", ".jpg", ".jpeg")]
    return pd.DataFrame(rows, columns=["filepaths", "labels"])


def split_frame(frame: pd.DataFrame, seed: int = 123) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    train, rest = train_test_split(frame, train_size=0.8, shuffle=True, random_state=seed, stratify=frame["labels"])
    valid, test = train_test_split(rest, train_size=0.5, shuffle=True, random_state=seed, stratify=rest["labels"])
    return train, valid, test


def flow(frame: pd.DataFrame, size: int, train: bool, batch_size: int = BATCH, seed: int = 123):
    """The notebook's generator: flips for training only; decodes and resizes files on every pass."""
    generator = tf.keras.preprocessing.image.ImageDataGenerator(horizontal_flip=train)
    return generator.flow_from_dataframe(frame, x_col="filepaths", y_col="labels", target_size=(size, size),
                                         class_mode="categorical", color_mode="rgb", shuffle=train,
                                         batch_size=batch_size, seed=seed)


def reference_model(n_classes: int, size: int, weights: str | None = "imagenet") -> tf.keras.Model:
    keras = tf.keras
    base = keras.applications.DenseNet169(include_top=False, weights=weights, input_shape=(size, size, 3),
                                          pooling="max")
    x = keras.layers.BatchNormalization(axis=-1, momentum=0.99, epsilon=0.001)(base.output)
    x = keras.layers.Dense(256, kernel_regularizer=keras.regularizers.l2(0.016),
                           activity_regularizer=keras.regularizers.l1(0.006),
                           bias_regularizer=keras.regularizers.l1(0.006), activation="relu")(x)
    x = keras.layers.Dropout(rate=0.45, seed=123)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(base.input, outputs)
    model.compile(keras.optimizers.Adamax(learning_rate=0.001), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder in the Kaggle layout")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--weights", default="imagenet", help="imagenet (downloads) or none")
    args = parser.parse_args()

    train, valid, test = split_frame(dataset_frame(args.data))
    print(f"train {len(train)}, valid {len(valid)}, test {len(test)} images")
    generators = [flow(frame, args.image_size, train=name == "train")
                  for name, frame in (("train", train), ("valid", valid), ("test", test))]
    model = reference_model(len(train["labels"].unique()), args.image_size,
                            None if args.weights == "none" else args.weights)
    model.fit(generators[0], epochs=args.epochs, validation_data=generators[1], shuffle=False)
    for name, generator in zip(("train", "valid", "test"), generators, strict=True):
        loss, accuracy = model.evaluate(generator, verbose=0)
        print(f"{name:<6} loss {loss:.4f}  accuracy {accuracy:.4f}")
    probabilities = model.predict(generators[2])
    accuracy = float(np.mean(probabilities.argmax(axis=1) == generators[2].classes))
    print(f"test accuracy from model.predict: {accuracy:.4f}")


if __name__ == "__main__":
    main()
