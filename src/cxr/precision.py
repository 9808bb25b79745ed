"""Numeric precision: fp32, or Keras mixed precision (bf16 / fp16 compute, float32 weights).

Mixed precision is a Keras dtype policy, set before the model is built and saved with it, so a
checkpoint resumes and predicts in the precision it was trained in. The probabilities layer always
computes in float32 (see cxr.model), and Keras wraps the optimizer in loss scaling for fp16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras

from cxr.config import PRECISIONS

__all__ = ["hardware_note", "model_precision", "POLICIES", "precision_scope", "with_precision"]

POLICIES = dict(zip(PRECISIONS, ("float32", "mixed_bfloat16", "mixed_float16"), strict=True))


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """Build models in this precision inside the block; the process-wide policy is put back after."""
    if precision not in POLICIES:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def model_precision(model: keras.Model) -> str:
    """The precision the backbone computes in (the head is float32 in every precision)."""
    policy = next((layer.dtype_policy.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)),
                  model.dtype_policy.name)
    return {policy: name for name, policy in POLICIES.items()}.get(policy, policy)


def _with_policy(config: Any, policy: str) -> Any:
    """A model config with every float dtype policy replaced (uint8 and other non-float inputs kept)."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and "float" in config.get("config", {}).get("name", ""):
            return policy
        return {key: _with_policy(value, policy) for key, value in config.items()}
    if isinstance(config, list):
        return [_with_policy(value, policy) for value in config]
    return config


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """The same classifier, weights included, computing in another precision (for inference and export)."""
    if model_precision(model) == precision:
        return model
    with precision_scope(precision):
        copy = keras.Model.from_config(_with_policy(model.get_config(), POLICIES[precision]))
    copy.set_weights(model.get_weights())
    return copy


def hardware_note(precision: str) -> str | None:
    """A warning when this machine has no fast path for the precision (it still works, emulated)."""
    if precision == "fp32":
        return None
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if jax.default_backend() == "gpu":
            return None
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return None
    flags = _cpu_flags()
    if precision == "bf16" and flags & {"avx512_bf16", "amx_bf16"}:
        return None
    if precision == "fp16" and flags & {"avx512_fp16", "amx_fp16"}:
        return None
    return (f"this CPU has no native {precision} instructions; {precision} will be emulated and probably slower "
            "than fp32 (it pays off on GPUs and on CPUs with AVX512-BF16 or AMX)")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()
