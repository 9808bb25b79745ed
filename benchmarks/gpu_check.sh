#!/usr/bin/env bash
# GPU check: training images/s of the real DenseNet169 at 224 px, batch 16, on the JAX backend with the
# decode-once cache, in fp32 and bf16 (benchmarks/training.py on synthetic files; no download).
# Needs an NVIDIA GPU, JAX with CUDA, and cxr importable (pip install -e . keras; TensorFlow is not needed).
# Bounded to 5 minutes. Usage: bash benchmarks/gpu_check.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
export KERAS_BACKEND=jax
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
timeout 300 "$PY" benchmarks/training.py --sizes 224 --pipelines cxr-fp32,cxr-bf16 --steps 20 --repeats 5 \
    --images 640 --out "${OUT:-benchmarks/results}"
