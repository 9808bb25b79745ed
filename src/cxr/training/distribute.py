"""Data-parallel training on every device a run is given, through the engines Keras 3 supports:
`keras.distribution.DataParallel` on JAX (one process or several, joined by `jax.distributed`) and
`tf.distribute.MirroredStrategy` on TensorFlow (several GPUs of one host).

Each replica gets an equal slice of the global batch and the gradients are averaged, so with the same
global batch and seed the loss follows the single-device run (tests/test_distribute.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from cxr.config import DISTRIBUTE
from cxr.errors import ConfigError

__all__ = ["agree", "global_batch", "join_processes", "leave_processes", "Plan", "plan", "PROCESS_ENV",
           "scaled_learning_rate", "single_device", "synchronize_batch_norm"]

# The variables keras.distribution.initialize reads when a flag is not given.
PROCESS_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
               "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclass(frozen=True)
class Plan:
    """Where a run trains: its devices (all processes'), this process's place, and the TF strategy."""

    devices: tuple[str, ...]
    process_id: int = 0
    process_count: int = 1
    strategy: Any = None  # tf.distribute.MirroredStrategy on TensorFlow, else None

    @property
    def replicas(self) -> int:
        return len(self.devices)

    @property
    def chief(self) -> bool:
        """Process 0 alone writes the run's files."""
        return self.process_id == 0

    @property
    def batch_multiple(self) -> int:
        """Each of this process's batches must hold a multiple of this many images: JAX splits a batch
        evenly over the local devices; MirroredStrategy splits uneven batches itself.
        """
        return 1 if self.strategy is not None else self.replicas // self.process_count

    def scope(self) -> contextlib.AbstractContextManager:
        """Build, load and compile models inside this block."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        if self.replicas == 1:
            return f"1 device ({self.devices[0]})"
        engine = "MirroredStrategy" if self.strategy is not None else "DataParallel"
        hosts = f" in {self.process_count} processes" if self.process_count > 1 else ""
        return f"{self.replicas} devices{hosts} ({', '.join(self.devices)}), data parallel by {engine}"

    def shard(self, count: int) -> np.ndarray:
        """The indices of `count` items this process reads: every process_count-th from process_id,
        the same number for every process (a process with more batches would wait for ever).
        """
        per_process = count // self.process_count
        return np.arange(self.process_id, per_process * self.process_count, self.process_count)


def join_processes(coordinator: str | None = None, num_processes: int | None = None,
                   process_id: int | None = None, seed: int = 0, deterministic: bool = False) -> bool:
    """Join a multi-process JAX job (several hosts, or several processes of one) before anything else
    touches JAX. Flags win; unset ones come from KERAS_DISTRIBUTION_* variables. Returns whether it
    joined one.

    What must precede the backend's start comes first: the XLA flag for deterministic kernels, and the
    seed (without one, Keras compiles a seed agreement before the compilation cache is on).
    """
    if coordinator is None and num_processes is None and process_id is None and not any(
            os.environ.get(name) for name in PROCESS_ENV):
        return False
    if keras.backend.backend() != "jax":
        raise ConfigError("training in several processes needs the JAX backend (KERAS_BACKEND=jax); on TensorFlow "
                          "use the GPUs of one host")
    if deterministic:
        from cxr.backend import enable_determinism

        enable_determinism()
    keras.utils.set_random_seed(seed)
    keras.distribution.initialize(coordinator, num_processes, process_id)
    return True


def plan(mode: str = "auto") -> Plan:
    """Use every device of the default kind (GPUs, else TPUs, else CPUs, of which there is one
    unless XLA or TensorFlow were told to split the CPU); `none` keeps training on one device.
    """
    if mode not in DISTRIBUTE:
        raise ConfigError(f"distribute must be one of {', '.join(DISTRIBUTE)}, got {mode!r}")
    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        return Plan(("cpu:0",))  # the other backends train on their default device
    devices = tuple(keras.distribution.list_devices())
    process_id, process_count = 0, 1
    if backend == "jax":
        import jax

        process_id, process_count = jax.process_index(), jax.process_count()
    if process_count > 1 and mode == "none":
        raise ConfigError("--distribute none cannot be used in a job of several processes")
    if mode == "none" or len(devices) < 2:
        return Plan(devices[:1])
    if backend == "jax":
        # The run shards its own data over the processes (each decodes only its part).
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=list(devices),
                                                                            auto_shard_dataset=False))
        return Plan(devices, process_id, process_count)
    import tensorflow as tf

    names = [f"/{device.split(':')[0].upper()}:{device.split(':')[1]}" for device in devices]
    return Plan(devices, strategy=tf.distribute.MirroredStrategy(names))


def global_batch(batch_size: int, per_device_batch: int | None, replicas: int) -> int:
    """The images per training step over all devices: per-device batch × devices when given, else
    `batch_size`, which must then split evenly over the devices.
    """
    if per_device_batch is not None:
        return per_device_batch * replicas
    if batch_size % replicas:
        raise ConfigError(f"batch size {batch_size} does not split evenly over {replicas} devices; use a multiple "
                          f"of {replicas} or --per-device-batch")
    return batch_size


def scaled_learning_rate(learning_rate: float, batch_size: int, batch: int) -> float:
    """The linear scaling rule (Goyal et al., 2017): the rate tuned for `batch_size`, times how many
    times larger the global batch is.
    """
    return learning_rate * batch / batch_size


def synchronize_batch_norm(model: keras.Model, plan_: Plan) -> None:
    """Under MirroredStrategy, batch-norm layers compute their statistics over the global batch (as a
    single device and JAX's DataParallel do) instead of over each replica's slice. The saved model
    keeps `synchronized: false`, since it is a way of training, not of the model, and Keras refuses
    the setting on other backends.
    """
    if plan_.strategy is None:
        return
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            layer.get_config = _unsynchronized_config(layer)


def _unsynchronized_config(layer: keras.layers.BatchNormalization):
    def get_config() -> dict:
        return {**type(layer).get_config(layer), "synchronized": False}

    return get_config


def agree(plan_: Plan, value: bytes, what: str) -> None:
    """Stop every process of a job with one message when they hold different `value`s: a split made
    from different data would otherwise leave them waiting for each other at the first uneven step.
    """
    if plan_.process_count < 2:
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(value).digest(), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest))
    differ = [index for index, row in enumerate(digests) if not np.array_equal(row, digests[0])]
    if differ:
        raise ConfigError(f"the processes of this job have different {what}: process(es) "
                          f"{', '.join(map(str, differ))} differ from process 0; give every host the same data "
                          "and settings")


def leave_processes(plan_: Plan) -> None:
    """End a multi-process job once training is over: every process arrives here together, while
    process 0's evaluation afterwards may take longer than JAX's shutdown barrier would wait.
    """
    if plan_.process_count > 1:
        import jax

        jax.distributed.shutdown()


@contextlib.contextmanager
def single_device() -> Iterator[None]:
    """Run the block without the JAX distribution (the chief's final evaluation, on its own)."""
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)
