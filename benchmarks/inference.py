"""CPU inference at 224 px with the real DenseNet169 classifier: `model.predict` (what the reference
used) against a direct call of the model, a compiled (`tf.function`) call, `predict_on_batch`
(Keras' compiled predict step without the data pipeline; `cxr predict --engine keras`), ONNX Runtime
on the file `cxr export` writes (`cxr predict --engine onnx`) and on its INT8 quantisation (`cxr export
--quantize int8`, `cxr predict --engine onnx-int8`).

Single-image latency (p50, p95 over --calls calls, after warm-up) and batch-32 throughput; all of them
in the same process on the same random uint8 images, with float32 outputs checked to agree within 1e-4.
The weights are untrained (speed does not depend on them), so the INT8 model is calibrated on probe
images and its agreement with fp32 is not measured here: `cxr export --quantize int8` checks that on a
trained run's test images.

    .venv/bin/python benchmarks/inference.py [--calls 50] [--repeats 5]

Prints a table and writes benchmarks/results/inference-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import machine_info, save_result  # noqa: E402

from cxr.inference.engines import onnx_predictor  # noqa: E402
from cxr.inference.export import export_onnx, probe_images  # noqa: E402
from cxr.inference.quantize import quantize_onnx  # noqa: E402
from cxr.model import build_model  # noqa: E402

SIZE = 224


def latencies(call, image: np.ndarray, calls: int) -> list[float]:
    for _ in range(3):  # warm-up: tracing, allocation
        call(image)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call(image)
        times.append((time.perf_counter() - start) * 1000)
    return times


def throughput(call, batch: np.ndarray, repeats: int) -> list[float]:
    call(batch)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(batch)
        rates.append(len(batch) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = build_model(4, SIZE, weights="none")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, SIZE, SIZE, 1), dtype=np.uint8)
    batch = rng.integers(0, 256, (32, SIZE, SIZE, 1), dtype=np.uint8)
    compiled = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    with tempfile.TemporaryDirectory(prefix="cxr-inference-") as name:  # the session keeps the model in memory
        folder = Path(name)
        model.save(folder / "model.keras")
        export_onnx(folder / "model.keras")
        onnx_model = onnx_predictor(folder / "model.onnx", batch_size=32)
        quantize_onnx(folder / "model.onnx", folder / "model.int8.onnx", probe_images(SIZE, 32), batch,
                      min_agreement=0.0)
        int8_model = onnx_predictor(folder / "model.int8.onnx", batch_size=32)
    engines = {
        "model.predict (reference)": lambda x: model.predict(x, verbose=0),
        "model(x) direct call": lambda x: keras.ops.convert_to_numpy(model(x, training=False)),
        "tf.function compiled call": lambda x: compiled(tf.constant(x)).numpy(),
        "model.predict_on_batch": lambda x: model.predict_on_batch(x),
        "ONNX Runtime (cxr export)": onnx_model.predict,
        "ONNX Runtime INT8 (--quantize)": int8_model.predict,
    }
    expected = engines["model.predict (reference)"](batch)
    result = {"benchmark": "inference", "image_size": SIZE, "calls": args.calls, "repeats": args.repeats,
              "machine": machine_info(tensorflow=tf.__version__, keras=keras.__version__,
                                      onnxruntime=onnxruntime.__version__),
              "engines": {}}
    for name, call in engines.items():
        difference = float(np.abs(call(batch) - expected).max())
        if "INT8" not in name:  # float32 engines agree; INT8's agreement is checked by cxr export on real images
            assert difference < 1e-4, f"{name} differs from model.predict by {difference}"
        single = latencies(call, image, args.calls)
        rates = throughput(call, batch, args.repeats)
        result["engines"][name] = {
            "p50_ms": float(np.percentile(single, 50)), "p95_ms": float(np.percentile(single, 95)),
            "batch32_images_per_s": statistics.median(rates), "max_abs_difference": difference}
    reference = result["engines"]["model.predict (reference)"]
    onnx_fp32 = result["engines"]["ONNX Runtime (cxr export)"]
    print(f"\n{'DenseNet169 classifier, 224 px, CPU':<32}{'p50 ms':>9}{'p95 ms':>9}{'p50 ratio':>11}"
          f"{'vs ONNX':>9}{'batch-32 img/s':>16}")
    for name, row in result["engines"].items():
        row["p50_ratio_to_predict"] = row["p50_ms"] / reference["p50_ms"]
        row["p50_ratio_to_onnx_fp32"] = row["p50_ms"] / onnx_fp32["p50_ms"]
        print(f"{name:<32}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row['p50_ratio_to_predict']:>10.2f}x"
              f"{row['p50_ratio_to_onnx_fp32']:>8.2f}x{row['batch32_images_per_s']:>16.1f}")
    save_result(args.out, "inference", result)


if __name__ == "__main__":
    main()
