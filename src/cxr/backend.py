"""What must differ per Keras backend: deterministic kernels, the compiled-program cache, gradients, devices."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

__all__ = ["accelerators", "enable_compilation_cache", "enable_determinism", "gradient"]


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
    whether one is on.
    """
    if keras.backend.backend() != "jax":
        return False
    import jax

    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)  # small programs compile faster than they load
    return True


def accelerators() -> list[str]:
    """The local GPUs or TPUs the active backend sees ("gpu:0", ...); empty on a CPU-only machine."""
    return [device for device in keras.distribution.list_devices() if not device.startswith("cpu")]


def gradient(function, x: np.ndarray):
    """D sum(function(x)) / dx with the active backend's automatic differentiation (for Grad-CAM)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(function(x))
        return tape.gradient(total, x)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return jax.grad(lambda value: jnp.sum(function(value)))(jnp.asarray(x))
    if backend == "torch":
        import torch

        x = torch.tensor(np.asarray(x), requires_grad=True)
        function(x).sum().backward()
        return x.grad
    raise NotImplementedError(f"gradients on the {backend} backend")
