"""Input pipeline alone: images/s at 224 px with horizontal flip, cxr's decode-once cache vs the
reference notebook's `ImageDataGenerator(horizontal_flip=True).flow_from_dataframe`.

Both read the same synthetic 299 px PNG files (the real data set's size) in the same process, so
the ratio holds on a noisy machine. No model runs: this is the cost of producing batches.

    .venv/bin/python benchmarks/input_pipeline.py [--images 2000] [--repeats 5]

Prints a table and writes benchmarks/results/input_pipeline-<time>.json.
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

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import machine_info, save_result  # noqa: E402

from cxr.data.batches import ImageBatches  # noqa: E402
from cxr.data.cache import cached_images  # noqa: E402
from cxr.data.synthetic import write_synthetic_dataset  # noqa: E402

SIZE, BATCH = 224, 16


def memory_kib() -> dict[str, int]:
    """Resident memory of this process from /proc: anonymous (private) and file-backed pages."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def ours_epoch(batches: ImageBatches, epoch: int, rng: np.random.Generator) -> int:
    """One epoch of batches with a random horizontal flip of half the images (done in the model in
    real training; done here in NumPy so that both sides pay for augmentation)."""
    batches.set_epoch(epoch)
    seen = 0
    for index in range(len(batches)):
        images, _ = batches[index]
        flip = rng.random(len(images)) < 0.5
        images[flip] = images[flip, :, ::-1]
        seen += len(images)
    return seen


def reference_epoch(generator) -> int:
    seen = 0
    for _ in range(len(generator)):
        images, _ = next(generator)
        seen += len(images)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as work:
        run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> None:
    data = write_synthetic_dataset(work / "data", per_class=args.images // 4, size=299, seed=0)
    files = sorted(p.relative_to(data).as_posix() for p in data.glob("*/images/*.png"))
    labels = np.array([["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"].index(f.split("/")[0]) for f in files])
    n = len(files)
    print(f"{n} synthetic 299 px PNG files in {data}; {os.cpu_count()} cores")

    # Ours, epoch 1: decode everything once into the cache (a fresh cache each repeat), then batches.
    rng = np.random.default_rng(0)
    first, memory = [], {}
    for repeat in range(args.repeats):
        cache = work / f"cache-{repeat}"
        before = memory_kib()
        start = time.perf_counter()
        images = cached_images(cache, data, files, SIZE, progress=False, echo=lambda _: None)
        batches = ImageBatches(images, labels, 4, BATCH, shuffle=True, seed=0)
        ours_epoch(batches, 0, rng)
        first.append(n / (time.perf_counter() - start))
        if repeat == 0:
            later = []
            for epoch in range(1, args.repeats + 1):
                start = time.perf_counter()
                ours_epoch(batches, epoch, rng)
                later.append(n / (time.perf_counter() - start))
            after = memory_kib()
            memory = {key: after[key] - before[key] for key in after}
    # The reference: ImageDataGenerator decodes and resizes every file in every epoch.
    frame = pd.DataFrame({"filepaths": [str(data / f) for f in files],
                          "labels": [f.split("/")[0] for f in files]})
    generator = tf.keras.preprocessing.image.ImageDataGenerator(horizontal_flip=True).flow_from_dataframe(
        frame, x_col="filepaths", y_col="labels", target_size=(SIZE, SIZE), class_mode="categorical",
        color_mode="rgb", shuffle=True, batch_size=BATCH, seed=0)
    reference = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        reference_epoch(generator)
        reference.append(n / (time.perf_counter() - start))

    median = statistics.median
    result = {
        "benchmark": "input_pipeline", "images": n, "image_size": SIZE, "batch_size": BATCH,
        "repeats": args.repeats,
        "machine": machine_info(tensorflow=tf.__version__, keras=keras.__version__, numpy=np.__version__,
                                opencv=cv2.__version__),
        "reference_imagedatagenerator": {"images_per_s": reference, "median": median(reference)},
        "ours_epoch1_decode_into_cache": {"images_per_s": first, "median": median(first)},
        "ours_epoch2plus_from_cache": {"images_per_s": later, "median": median(later)},
        "ratio_epoch1": median(first) / median(reference),
        "ratio_epoch2plus": median(later) / median(reference),
        "ours_resident_memory_delta_kib": memory,
        "ours_resident_mib_per_cached_image": memory.get("VmRSS", 0) / 1024 / n,
        "cache_bytes_per_image": SIZE * SIZE,
    }
    rows = [("ImageDataGenerator (reference), every epoch", median(reference), 1.0),
            ("cxr, epoch 1 (decode into the cache)", median(first), result["ratio_epoch1"]),
            ("cxr, epoch 2+ (memory-mapped cache)", median(later), result["ratio_epoch2plus"])]
    print(f"\n{'pipeline (224 px, flip, batch 16)':<46}{'images/s':>12}{'vs reference':>14}")
    for name, value, ratio in rows:
        print(f"{name:<46}{value:>12,.0f}{ratio:>13.1f}x")
    mib = {key: value / 1024 for key, value in memory.items()}
    print(f"cxr resident memory after the epochs: +{mib.get('VmRSS', 0):.1f} MiB "
          f"({result['ours_resident_mib_per_cached_image']:.3f} MiB per cached image; "
          f"anonymous +{mib.get('RssAnon', 0):.1f} MiB, file-backed +{mib.get('RssFile', 0):.1f} MiB)")
    save_result(args.out, "input_pipeline", result)


if __name__ == "__main__":
    main()
