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
