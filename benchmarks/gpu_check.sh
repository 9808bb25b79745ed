#!/usr/bin/env bash
# GPU check: training images/s of the real DenseNet169 at 224 px, batch 16 per device, on the JAX backend
# with the decode-once cache, in fp32 and bf16, on one device and, where there are several GPUs, data
# parallel on every local device with the scaling efficiency (benchmarks/training.py on synthetic files;
# no download).
# Needs an NVIDIA GPU, JAX with CUDA, and cxr importable (pip install -e . keras; TensorFlow is not needed).
# Bounded to 7 minutes. Usage: bash benchmarks/gpu_check.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
export KERAS_BACKEND=jax
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
# Each row is a process of its own whose first step compiles for about 75 s (H200, fp32, 224 px): on a
# machine with one GPU the data-parallel rows would only repeat the single-device ones.
pipelines=cxr-fp32,cxr-bf16
if [ "$(nvidia-smi -L | wc -l)" -gt 1 ]; then pipelines=$pipelines,cxr-fp32-all,cxr-bf16-all; fi
# training.py rewrites its JSON after every row: a row cut off by the limit leaves the ones before it.
timeout 420 "$PY" benchmarks/training.py --sizes 224 --pipelines "$pipelines" \
    --steps 20 --repeats 5 --images 1280 --out "${OUT:-benchmarks/results}"
