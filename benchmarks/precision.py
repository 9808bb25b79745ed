"""Mixed precision on this machine: speed and accuracy of `cxr demo` (DenseNet169 from scratch on the
built-in phantoms, 64 px, 10 epochs) trained in fp32 and in bf16, and single-image inference of the fp32
model in both precisions (same weights: latency, largest probability difference, agreeing predictions).

Both trainings run in this process on the same phantoms with the same seed; the run folders go to a
temporary folder.

    .venv/bin/python benchmarks/precision.py [--epochs 10] [--precisions fp32,bf16]

Prints a table and writes benchmarks/results/precision-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from common import machine_info, save_result  # noqa: E402

from cxr.data.images import load_image  # noqa: E402
from cxr.demo import demo  # noqa: E402
from cxr.model import load_model  # noqa: E402
from cxr.precision import hardware_note, with_precision  # noqa: E402


def latency_ms(model: keras.Model, image: np.ndarray, calls: int = 30) -> float:
    for _ in range(3):
        model.predict_on_batch(image)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model.predict_on_batch(image)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-precision-") as work:
        run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> None:
    precisions = args.precisions.split(",")
    training = {}
    for precision in precisions:
        start = time.perf_counter()
        run_dir = demo(runs_dir=str(work), epochs=args.epochs, precision=precision, progress=False,
                       echo=lambda _: None)
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        history = pd.read_csv(run_dir / "history.csv")
        training[precision] = {"run": run_dir, "total_s": time.perf_counter() - start,
                               "median_epoch_s": float(history["seconds"].iloc[1:].median()),
                               "test_accuracy": metrics["splits"]["test"]["accuracy"],
                               "test_loss": metrics["splits"]["test"]["loss"],
                               "note": hardware_note(precision)}
        print(f"trained {precision}: test accuracy {training[precision]['test_accuracy']:.4f}", flush=True)

    # Inference: the fp32 model's weights computing in each precision, on its test images.
    base_dir = training[precisions[0]]["run"]
    base = load_model(base_dir / "model.keras")
    test = pd.read_csv(base_dir / "split" / "test.csv")
    root = Path(yaml.safe_load((base_dir / "config.yaml").read_text())["data"])
    size = int(base.input_shape[1])
    images = np.stack([load_image(root / f, size) for f in test["file"]])[..., None]
    reference = base.predict_on_batch(images)
    inference = {}
    for precision in precisions:
        model = with_precision(base, precision)
        probabilities = model.predict_on_batch(images)
        inference[precision] = {
            "p50_ms_single_image": latency_ms(model, images[:1]),
            "max_abs_probability_difference": float(np.abs(probabilities - reference).max()),
            "same_prediction_fraction": float(np.mean(probabilities.argmax(1) == reference.argmax(1)))}

    for row in training.values():
        row["run"] = str(row["run"].name)
    result = {"benchmark": "precision", "epochs": args.epochs, "test_images": len(test),
              "machine": machine_info(keras=keras.__version__, backend=keras.backend.backend()),
              "training": training, "inference": inference}
    base_epoch = training[precisions[0]]["median_epoch_s"]
    base_latency = inference[precisions[0]]["p50_ms_single_image"]
    print(f"\n{'precision':<10}{'s/epoch':>9}{'speed':>8}{'test acc':>10}{'test loss':>11}"
          f"{'p50 ms':>9}{'speed':>8}{'max |dp|':>10}{'same pred':>11}")
    for precision in precisions:
        t, i = training[precision], inference[precision]
        print(f"{precision:<10}{t['median_epoch_s']:>9.2f}{base_epoch / t['median_epoch_s']:>7.2f}x"
              f"{t['test_accuracy']:>10.4f}{t['test_loss']:>11.4f}{i['p50_ms_single_image']:>9.1f}"
              f"{base_latency / i['p50_ms_single_image']:>7.2f}x{i['max_abs_probability_difference']:>10.4f}"
              f"{i['same_prediction_fraction']:>11.3f}")
    save_result(args.out, "precision", result)


if __name__ == "__main__":
    main()
