"""What must differ per Keras backend: deterministic kernels and the compiled-program cache."""

from __future__ import annotations

import os
from pathlib import Path

import keras


def enable_determinism() -> None:
    """Ask the backend for deterministic kernels (the seed is set separately)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "jax":
        # Takes effect on GPU when set before JAX starts its backend; JAX on CPU is deterministic.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def enable_compilation_cache(folder: str | os.PathLike) -> bool:
    """JAX: keep compiled XLA programs in `folder`, so the next run of the same model (a resume, another
    seed) loads its train step instead of compiling it again. TensorFlow has no such cache; returns
    whether one is on."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)  # small programs compile faster than they load
    return True
