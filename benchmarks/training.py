"""Training speed of the real DenseNet169, batch 16: cxr (decode-once cache, uint8 batches, preprocessing in
the model; fp32 and bf16) against the reference pipeline (benchmarks/reference_pipeline.py:
ImageDataGenerator + model.fit), at 128 and 224 px. Reports images/s, peak resident memory and the time
from `fit` to the first finished step.

Every configuration runs in a fresh process (so its peak memory and first step are its own) on the same
synthetic 299 px PNG files, with random weights (no download; the work per step is the same). Images/s is
the median over --repeats timed epochs of --steps steps each, after a first epoch that holds the graph
building. cxr's cache is built before its run starts, as it is for every epoch but the first of a real run
(benchmarks/input_pipeline.py times the decoding itself).

    .venv/bin/python benchmarks/training.py [--sizes 128,224] [--steps 3] [--repeats 5] [--pipelines ...]
        [--allocators system,tcmalloc,jemalloc]

Each cxr row runs once per memory allocator given (preloaded into its process as `cxr` does, see
cxr.allocator; one that is not installed is left out with a note); the reference always runs with the
system's, as its users run it. Every row records the allocator its process actually had.

The -all pipelines train data parallel on every local device (batch 16 per device) and report their
scaling efficiency against the same precision on one device.

Each row also says where the timed steps' CPU time went (minor page faults, system and user seconds per
step): a machine whose allocator returns memory to the kernel at every step shows it there. With
ONEDNN_MAX_CPU_ISA=AVX2 set, oneDNN runs the kernels an AVX2-only CPU would (the JSON records the cap).

Prints a table and writes benchmarks/results/training-<time>.json, rewritten after every row (`"complete"`
says whether every planned row is in it), so a run stopped by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

BATCH = 16
CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
# "-all": data parallel over every local device (cxr.training.distribute), batch 16 per device.
PIPELINES = ("reference", "cxr-fp32", "cxr-bf16", "cxr-fp32-all", "cxr-bf16-all")


def image_files(data: Path) -> tuple[list[str], list[int]]:
    files = sorted(p.relative_to(data).as_posix() for p in data.glob("*/images/*.png"))
    return files, [CLASSES.index(f.split("/")[0]) for f in files]


def active_allocator() -> str:
    from cxr.allocator import active

    return active()


def worker(pipeline: str, size: int, data: Path, cache: Path, steps: int, repeats: int) -> dict:
    """Train one configuration for 1 + repeats epochs of `steps` steps; return its timings."""
    import keras

    started = time.perf_counter()
    batch, devices = BATCH, 1
    if pipeline == "reference":
        from reference_pipeline import dataset_frame, flow, reference_model

        batches = flow(dataset_frame(data), size, train=True, batch_size=BATCH, seed=0)
        model = reference_model(len(CLASSES), size, weights=None)
    else:
        from cxr.backend import enable_compilation_cache
        from cxr.data.batches import ImageBatches
        from cxr.data.cache import cached_images
        from cxr.model import build_model, compile_model
        from cxr.training import distribute

        enable_compilation_cache(cache / "xla")  # as `cxr train` does (JAX only)
        placement = distribute.plan("auto" if pipeline.endswith("-all") else "none")
        batch, devices = BATCH * placement.replicas, placement.replicas
        files, labels = image_files(data)
        images = cached_images(cache, data, files, size, progress=False, echo=lambda _: None)
        batches = ImageBatches(images, labels, len(CLASSES), batch, shuffle=True, seed=0,
                               multiple_of=placement.batch_multiple)
        with placement.scope():
            model = compile_model(build_model(len(CLASSES), size, weights="none", precision=pipeline.split("-")[1]))
        distribute.synchronize_batch_norm(model, placement)
        steps = min(steps, len(images) // batch)
    built = time.perf_counter()

    marks: dict[str, list[float]] = {"epoch_begin": [], "epoch_end": [], "first_step": []}
    usage: dict[str, list[resource.struct_rusage]] = {"epoch_begin": [], "epoch_end": []}

    def mark(name: str) -> None:
        marks[name].append(time.perf_counter())
        usage[name].append(resource.getrusage(resource.RUSAGE_SELF))

    def first_step(batch: int, logs: dict) -> None:
        if not marks["first_step"]:
            marks["first_step"].append(time.perf_counter())

    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: mark("epoch_begin"),
        on_epoch_end=lambda epoch, logs: mark("epoch_end"),
        on_train_batch_end=first_step)
    fit_start = time.perf_counter()
    model.fit(batches, epochs=1 + repeats, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[timer])
    rates = [steps * batch / (end - begin) for begin, end in zip(marks["epoch_begin"][1:], marks["epoch_end"][1:],
                                                                    strict=True)]
    # Where the timed steps' time went: the issue-15 machine spent as much CPU time in the kernel as in
    # user space, taking page faults as the allocator returned and re-took memory at every step.
    timed = list(zip(usage["epoch_begin"][1:], usage["epoch_end"][1:], strict=True))
    per_step = {name: sum(getattr(end, field) - getattr(begin, field) for begin, end in timed) / (steps * repeats)
                for name, field in (("minor_faults_per_step", "ru_minflt"), ("system_s_per_step", "ru_stime"),
                                    ("user_s_per_step", "ru_utime"))}
    return {"pipeline": pipeline, "image_size": size, "images_per_s": rates, **per_step, "median_images_per_s":
            statistics.median(rates), "build_s": built - started, "first_step_s": marks["first_step"][0] - fit_start,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "backend": keras.backend.backend(), "devices": devices, "batch": batch, "allocator": active_allocator()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128,224")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help="which of " + ", ".join(PIPELINES) + " to run (the reference needs TensorFlow)")
    parser.add_argument("--allocators", default="system",
                        help="memory allocators for the cxr rows: system, tcmalloc, jemalloc (comma-separated)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--worker", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.size, Path(args.data), Path(args.cache), args.steps, args.repeats)
        print("RESULT " + json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="cxr-training-") as work:
        run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> None:
    import importlib.metadata

    from common import machine_info, save_result

    from cxr import files as files_io
    from cxr.data.cache import cached_images
    from cxr.data.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(work / "data", per_class=args.images // 4, size=299, seed=0)
    files, _ = image_files(data)
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        cached_images(work / "cache", data, files, size, progress=False, echo=lambda _: None)
    print(f"{len(files)} synthetic 299 px PNG files; {os.cpu_count()} cores; {args.repeats} timed epochs of "
          f"{args.steps} steps of {BATCH} after a first (graph-building) epoch; one process per row")
    pipelines = args.pipelines.split(",")
    unknown = set(pipelines) - set(PIPELINES)
    if unknown:
        raise SystemExit(f"unknown pipeline(s) {', '.join(sorted(unknown))}; choose from {', '.join(PIPELINES)}")
    versions = {name: importlib.metadata.version(name) for name in ("keras", "tensorflow-cpu", "tensorflow", "jax")
                if _installed(name)}
    result = {"benchmark": "training", "batch_size": BATCH, "steps": args.steps, "repeats": args.repeats,
              "images": len(files), "machine": machine_info(**versions), "complete": False, "rows": []}
    planned = [(size, pipeline, allocator) for size in sizes for pipeline in pipelines
               for allocator in (["system"] if pipeline == "reference" else _allocators(args.allocators))]
    if not planned:
        raise SystemExit("nothing to measure: no pipeline with an installed allocator was chosen")
    path = None  # named (and printed) at the first row
    for size, pipeline, allocator in planned:
        row = _run_row(args, pipeline, size, allocator, data, work)
        _compare(row, result["rows"], pipeline, size)
        result["rows"].append(row)
        result["complete"] = len(result["rows"]) == len(planned)
        # Rewritten after every row: a run stopped by a time limit (a lent GPU) keeps what it measured.
        path = files_io.write_json(path, result) if path else save_result(args.out, "training", result)


def _allocators(text: str) -> list[str]:
    from cxr.allocator import find

    chosen = []
    for name in text.split(","):
        if name == "system" or find(name) is not None:
            chosen.append(name)
        else:
            print(f"note: {name} is not installed here; its rows are left out")
    return chosen


def _run_row(args: argparse.Namespace, pipeline: str, size: int, allocator: str, data: Path, work: Path) -> dict:
    """One configuration in a fresh process, with `allocator` preloaded (system: none)."""
    from cxr.allocator import find

    env = dict(os.environ)
    if allocator != "system":
        env["LD_PRELOAD"] = " ".join(filter(None, [str(find(allocator)), env.get("LD_PRELOAD", "")]))
    command = [sys.executable, __file__, "--worker", pipeline, "--size", str(size), "--data", str(data),
               "--cache", str(work / "cache"), "--steps", str(args.steps), "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{pipeline} at {size} px with {allocator} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _compare(row: dict, rows: list[dict], pipeline: str, size: int) -> None:
    """Add the ratio to the reference and the scaling efficiency to `row`, and print it."""
    reference = [r for r in rows + [row] if r["pipeline"] == "reference" and r["image_size"] == size]
    ratio = row["median_images_per_s"] / reference[0]["median_images_per_s"] if reference else None
    row["ratio_to_reference"] = ratio
    # Scaling efficiency: images/s on every device over (devices x images/s on one), same precision and allocator.
    one = [r for r in rows if r["pipeline"] == pipeline.removesuffix("-all") and r["image_size"] == size
           and r["allocator"] == row["allocator"]]
    efficiency = (row["median_images_per_s"] / (row["devices"] * one[0]["median_images_per_s"])
                  if pipeline.endswith("-all") and one else None)
    row["scaling_efficiency"] = efficiency
    print(f"{size:>4} px  {pipeline:<12} {row['allocator']:<8} {row['backend']:<10} {row['devices']} dev  "
          f"batch {row['batch']:<4} {row['median_images_per_s']:8.1f} img/s  "
          + (f"{ratio:5.2f}x  " if ratio else "")
          + (f"scaling {efficiency:4.2f}  " if efficiency else "")
          + f"first step {row['first_step_s']:6.1f} s  peak {row['peak_rss_mib']:7.0f} MiB  "
          f"per step: {row['minor_faults_per_step']:8.0f} page faults, system {row['system_s_per_step']:5.2f} s, "
          f"user {row['user_s_per_step']:5.2f} s", flush=True)


def _installed(name: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
