"""Data-parallel training: the batch arithmetic, then real jobs in subprocesses (the device count of a
backend is fixed when it starts): 2 virtual JAX CPU devices, 2 logical TensorFlow CPUs, and a job of
two JAX processes joined over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import only_run

from cxr.config import resolve
from cxr.data.batches import ImageBatches
from cxr.errors import ConfigError
from cxr.training import distribute

TRAIN = ["train", "--recipe", "reference", "--backbone", "tiny", "--weights", "none", "--image-size", "32",
         "--epochs", "3",
         "--batch-size", "8", "--ask-epoch", "0", "--bootstrap", "0", "--seed", "1"]


def cxr(args: list, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def python(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env}, stdin=subprocess.DEVNULL)


# One plain SGD step of 8 images on one device and on two, from the same weights. SGD, not Adamax: Adamax's
# first steps are about lr * sign(gradient), so a weight whose gradient is rounding noise moves by a whole
# learning rate either way, and any two summation orders (another CPU's kernels, another device count)
# separate after a few steps. That chaos is not what these tests are about; one step is.
ONE_STEP = """
import json, keras, numpy as np
from cxr.training import distribute
from cxr.model import build_model
rng = np.random.default_rng(0)
half = rng.integers(0, 255, (8, 32, 16, 1), dtype=np.uint8)
x = np.concatenate([half, half[:, :, ::-1]], axis=2)  # a flip leaves these images unchanged
y = keras.utils.to_categorical(rng.integers(0, 4, 8), 4)
out = {}
for mode in ("none", "auto"):
    plan = distribute.plan(mode)
    keras.utils.set_random_seed(1)
    with plan.scope():
        model = build_model(4, 32, "none", "tiny")
        model.get_layer("head_dropout").rate = 0.0  # each replica would draw its own mask
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="categorical_crossentropy")
    distribute.synchronize_batch_norm(model, plan)
    before = [np.array(w) for w in model.get_weights()]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    out[mode] = {"replicas": plan.replicas, "names": [w.path for w in model.weights],
                 "updates": [(w - b).tolist() for w, b in zip(model.get_weights(), before)],
                 "probabilities": model.predict(x, verbose=0).tolist(),
                 "saved_synchronized": any(layer.get_config().get("synchronized") for layer in model.layers),
                 "synchronized": any(getattr(layer, "synchronized", False) for layer in model.layers)}
print(json.dumps(out))
"""
LEARNING_RATE = 0.01
# How far the two updates may differ, per weight tensor. A gradient here is a float32 sum of up to
# 8 x 32 x 32 = 8,192 terms, added in another order when each replica sums its 4 images and the replicas
# are then all-reduced; synchronised batch norm computes the variance as E[x^2] - E[x]^2, which loses bits
# when the mean is large beside the spread. Float32 rounding of an n-term sum is bounded by n * eps
# = 8,192 * 1.2e-7 ~ 1e-3 of the sum's magnitude (typically sqrt(n) * eps ~ 1e-5): so 1e-3 of the update's
# norm, plus an absolute floor for tensors whose gradient is itself rounding noise (a beta behind a ReLU
# that every image leaves dead): lr * eps * sqrt(size) * 100.
RTOL = 1e-3
EPS32 = float(np.finfo(np.float32).eps)


def assert_same_step(one: dict, two: dict) -> None:
    """Two one-step results (ONE_STEP's JSON) took the same step within float32 rounding."""
    assert (one["replicas"], two["replicas"]) == (1, 2)
    for name, u, v in zip(one["names"], one["updates"], two["updates"], strict=True):
        u, v = np.asarray(u), np.asarray(v)
        bound = RTOL * np.linalg.norm(u) + LEARNING_RATE * EPS32 * np.sqrt(u.size) * 100
        assert np.linalg.norm(u - v) <= bound, (name, float(np.linalg.norm(u - v)), float(bound))
    # The step moves each probability by well under 0.1; 1e-3 of that is 1e-4.
    np.testing.assert_allclose(two["probabilities"], one["probabilities"], atol=1e-4)


def test_the_global_batch_is_per_device_batch_times_devices_or_must_split_evenly():
    assert distribute.global_batch(16, None, 1) == 16
    assert distribute.global_batch(16, None, 4) == 16
    assert distribute.global_batch(16, 32, 4) == 128
    with pytest.raises(ConfigError, match="batch size 15 does not split evenly over 2 devices"):
        distribute.global_batch(15, None, 2)
    assert distribute.scaled_learning_rate(0.001, 16, 128) == pytest.approx(0.008)


def test_each_process_gets_an_equal_disjoint_shard():
    shards = [distribute.Plan(("cpu:0", "cpu:1", "cpu:2"), process_id=p, process_count=3).shard(10) for p in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # image 9 would give one process more
    assert distribute.Plan(("gpu:0",)).shard(5).tolist() == [0, 1, 2, 3, 4]


def test_a_short_last_batch_is_cut_to_a_multiple_of_the_devices():
    images, labels = np.zeros((21, 4, 4, 1), np.uint8), np.arange(21) % 2
    batches = ImageBatches(images, labels, 2, 8, multiple_of=4)
    assert batches.used == 20 and len(batches) == 3 and [len(batches[i][0]) for i in range(3)] == [8, 8, 4]
    assert ImageBatches(images[:17], labels[:17], 2, 8, multiple_of=2).__len__() == 2  # 1 left over: dropped
    assert ImageBatches(images, labels, 2, 8).used == 21


def test_one_device_needs_no_distribution_and_settings_are_checked():
    plan = distribute.plan("auto")  # this machine: one CPU device
    assert plan.replicas == 1 and plan.chief and plan.strategy is None and plan.describe().startswith("1 device")
    with pytest.raises(ConfigError, match="distribute must be auto or none"):
        resolve(recipe="reference", data="x", distribute="all")
    with pytest.raises(ConfigError, match="per_device_batch must be empty or a positive integer"):
        resolve(recipe="reference", data="x", per_device_batch=0)


@pytest.mark.slow
def test_jax_on_two_devices_shards_the_batch_and_matches_one_device(phantoms, tmp_path):
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    layout = python("""
        import json, keras, numpy as np
        from cxr.training import distribute
        from cxr.model import build_model
        plan = distribute.plan("auto")
        model = build_model(4, 32, "none", "tiny")
        batch = keras.distribution.distribute_tensor(np.zeros((8, 32, 32, 1), "uint8"),
                                                     keras.distribution.distribution().get_data_layout((8, 32, 32, 1)))
        print(json.dumps({"replicas": plan.replicas, "shard": list(batch.sharding.shard_shape(batch.shape)),
                          "devices": len(batch.sharding.device_set),
                          "replicated": all(w.value.sharding.is_fully_replicated for w in model.weights)}))
    """, env)
    assert layout.returncode == 0, layout.stderr[-3000:]
    assert json.loads(layout.stdout.strip().splitlines()[-1]) == {"replicas": 2, "shard": [4, 32, 32, 1],
                                                                  "devices": 2, "replicated": True}
    uneven = cxr([*TRAIN, "--data", phantoms, "--runs-dir", tmp_path / "uneven", "--batch-size", "15"], env)
    assert uneven.returncode == 2 and not (tmp_path / "uneven").exists()  # refused before any work
    assert "batch size 15 does not split evenly over 2 devices" in uneven.stderr
    step = python(ONE_STEP.replace("LEARNING_RATE", str(LEARNING_RATE)), env)
    assert step.returncode == 0, step.stderr[-3000:]
    steps = json.loads(step.stdout.strip().splitlines()[-1])
    assert_same_step(steps["none"], steps["auto"])

    histories, outputs = {}, {}
    for mode in ("auto", "none"):
        result = cxr([*TRAIN, "--data", phantoms, "--runs-dir", tmp_path / mode, "--distribute", mode], env)
        assert result.returncode == 0, result.stderr[-3000:]
        histories[mode], outputs[mode] = pd.read_csv(only_run(tmp_path / mode) / "history.csv"), result.stdout
    assert "devices: 2 devices (cpu:0, cpu:1), data parallel by DataParallel, 4 images per device per step" \
        in outputs["auto"]
    assert "devices: 1 device (cpu:0)" in outputs["none"]
    # cxr's own recipe (Adamax, flips, dropout) for 3 epochs: the same training, not the same bits (see
    # ONE_STEP on why Adamax trajectories separate); they stay within a few percent.
    np.testing.assert_allclose(histories["auto"][["loss", "val_loss"]], histories["none"][["loss", "val_loss"]],
                               rtol=0.05)


@pytest.mark.slow
def test_tensorflow_mirrored_strategy_on_two_logical_cpus_takes_the_single_device_step():
    split_cpu = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
    result = python(split_cpu + ONE_STEP.replace("LEARNING_RATE", str(LEARNING_RATE)), {"KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    one, two = out["none"], out["auto"]
    assert two["synchronized"] and not two["saved_synchronized"]  # the saved model loads on any backend
    assert_same_step(one, two)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job(args: list, tmp_path: Path, name: str,
        extra: tuple[list, list] = ([], [])) -> list[subprocess.CompletedProcess]:
    """Two `cxr train` processes joined into one JAX job over loopback (`extra`: each one's own flags)."""
    port = free_port()
    processes = [subprocess.Popen([sys.executable, "-m", "cxr", *map(str, args), *map(str, extra[rank]),
                                   "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                   "--process-id", str(rank)],
                                  stdout=open(tmp_path / f"{name}-{rank}.out", "w"),
                                  stderr=open(tmp_path / f"{name}-{rank}.err", "w"),
                                  env={**os.environ, "KERAS_BACKEND": "jax"}, stdin=subprocess.DEVNULL)
                 for rank in (0, 1)]
    codes = [process.wait(timeout=600) for process in processes]
    return [subprocess.CompletedProcess(process.args, code, (tmp_path / f"{name}-{rank}.out").read_text(),
                                        (tmp_path / f"{name}-{rank}.err").read_text())
            for rank, (process, code) in enumerate(zip(processes, codes, strict=True))]


@pytest.mark.slow
def test_two_jax_processes_train_one_run_written_by_process_0_and_resume_it(phantoms, tmp_path):
    runs = tmp_path / "runs"
    chief, worker = job([*TRAIN, "--data", phantoms, "--runs-dir", runs], tmp_path, "train")
    assert chief.returncode == 0, chief.stderr[-3000:]
    assert worker.returncode == 0, worker.stderr[-3000:]
    run = only_run(runs)  # one run folder, made by process 0
    assert "devices: 2 devices in 2 processes" in chief.stdout and "run folder" not in worker.stdout
    assert [line for line in worker.stdout.splitlines() if not line.startswith("[Gloo]")] == []  # 0 speaks
    assert len(pd.read_csv(run / "history.csv")) == 3 and (run / "eval" / "metrics.json").is_file()

    # Processes that split differently (another seed here, other data in life) stop together, with a reason.
    differ = job([*TRAIN, "--data", phantoms, "--runs-dir", tmp_path / "differ"], tmp_path, "differ",
                 extra=([], ["--seed", "2"]))
    assert [p.returncode for p in differ] == [2, 2] and not (tmp_path / "differ").exists()
    assert "the processes of this job have different splits: process(es) 1 differ from process 0" in differ[0].stderr
    refused = job(["train", "--resume", run, "--epochs", "2"], tmp_path, "refused")  # every process refuses
    assert [p.returncode for p in refused] == [2, 2] and "has trained 3 epoch(s) already" in refused[1].stderr
    chief, worker = job(["train", "--resume", run, "--epochs", "4"], tmp_path, "resume")
    assert chief.returncode == 0 and worker.returncode == 0, chief.stderr[-3000:] + worker.stderr[-3000:]
    assert f"resuming {run} after epoch 3 of 4" in chief.stdout
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4] and (run / "eval-2" / "metrics.json").is_file()
    assert only_run(runs) == run
