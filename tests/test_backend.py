"""Per-backend set-up: JAX keeps compiled programs on disk; TensorFlow has nothing to keep."""

import os
import subprocess
import sys

from helpers import needs_tensorflow

from cxr.backend import enable_compilation_cache

JAX_RUN = """
import sys
import jax, keras, numpy as np
from cxr.backend import enable_compilation_cache
assert enable_compilation_cache(sys.argv[1])
assert jax.config.jax_compilation_cache_dir == sys.argv[1]
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # so that this small program is kept
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
model.compile(optimizer="adam", loss="mse")
model.fit(np.ones((4, 8)), np.ones((4, 4)), verbose=0)
"""


@needs_tensorflow
def test_tensorflow_has_no_compilation_cache(tmp_path):
    assert enable_compilation_cache(tmp_path / "xla") is False
    assert not (tmp_path / "xla").exists()


def test_jax_writes_compiled_steps_into_the_cache_folder(tmp_path):
    folder = tmp_path / "xla"
    done = subprocess.run([sys.executable, "-c", JAX_RUN, str(folder)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(folder.iterdir()), "nothing was cached"


JAX_AUGMENTED = """
import sys, warnings
import keras, numpy as np
from keras.src.trainers.trainer import model_supports_jit
from cxr.model import build_model, compile_model, load_model
model = build_model(3, 16, weights="none", backbone="tiny", augment="radiograph")
assert not model_supports_jit(model)  # Keras' own answer: RandomRotation & co. say no, for TensorFlow's sake
compile_model(model)
assert model.jit_compile is True
images, labels = np.zeros((4, 16, 16, 1), "uint8"), np.eye(3)[[0, 1, 2, 0]]
model.fit(images, labels, batch_size=4, verbose=0)
model.save(sys.argv[1])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loaded = load_model(sys.argv[1])
assert loaded.jit_compile is True
assert not [w for w in caught if "jit_compile" in str(w.message)], [str(w.message) for w in caught]
loaded.fit(images, labels, batch_size=4, verbose=0)
print("compiled", type(loaded.train_function).__name__)
"""


def test_jax_compiles_the_steps_of_a_model_with_geometric_augmentation(tmp_path):
    # Without cxr.model.allow_jit, Keras ran such a model's steps op by op under JAX: for DenseNet169,
    # minutes of first epoch compiling single operations and slow steps after it.
    done = subprocess.run([sys.executable, "-c", JAX_AUGMENTED, str(tmp_path / "m.keras")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compiled" in done.stdout


@needs_tensorflow
def test_tensorflow_keeps_keras_choice_for_the_augmentation_layers():
    from cxr.model import build_model, compile_model

    model = compile_model(build_model(3, 16, weights="none", backbone="tiny", augment="radiograph"))
    assert model.jit_compile is False
    assert not model.get_layer("augment_rotate").supports_jit
