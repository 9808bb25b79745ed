"""Time to the first finished training step of the real DenseNet169 (cxr, batch 16), per backend, in a
first process and in a second one that finds the first one's caches: TensorFlow builds its graph again
every time; JAX loads the compiled train step from cxr's compilation cache (<runs>/cache/xla).

Each row is a fresh process running benchmarks/training.py's worker; the cache folder is shared by the two
processes of a backend and new for each backend.

    .venv/bin/python benchmarks/first_step.py [--size 128]

Prints a table and writes benchmarks/results/first_step-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from common import machine_info, save_result

    from cxr.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="cxr-first-step-") as name:
        work = Path(name)
        data = write_synthetic_dataset(work / "data", per_class=8, size=299, seed=0)
        rows = []
        print(f"DenseNet169, {args.size} px, batch 16, {os.cpu_count()} cores")
        for backend in ("tensorflow", "jax"):
            cache = work / f"cache-{backend}"
            for attempt in ("first process", "second process"):
                command = [sys.executable, str(HERE / "training.py"), "--worker", "cxr-fp32", "--size",
                           str(args.size), "--data", str(data), "--cache", str(cache), "--steps", "1", "--repeats", "1"]
                env = {**os.environ, "KERAS_BACKEND": backend}
                done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode != 0 or not lines:
                    raise SystemExit(f"{backend} failed:\n{done.stderr[-3000:]}")
                row = json.loads(lines[-1][len("RESULT "):])
                row["attempt"] = attempt
                rows.append(row)
                print(f"{backend:<11} {attempt:<15} model built in {row['build_s']:5.1f} s; "
                      f"first step {row['first_step_s']:6.1f} s", flush=True)
        import jax
        import tensorflow as tf

        save_result(args.out, "first_step", {"benchmark": "first_step", "image_size": args.size, "rows": rows,
                                             "machine": machine_info(tensorflow=tf.__version__,
                                                                     jax=jax.__version__)})


if __name__ == "__main__":
    main()
