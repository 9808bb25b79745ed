"""TensorFlow's thread pools against the CPUs a process may really use: training images/s of the real
DenseNet169 (cxr's pipeline, fp32, batch 16) with TensorFlow's own thread counts and with others.

TensorFlow sizes its pools from the CPUs in the process's affinity mask. A container limited by a CPU
quota (`docker run --cpus=2`, a Kubernetes CPU limit) still has every CPU of the host in that mask, so
on a 64-core host TensorFlow runs 64 compute threads on 2 CPUs' worth of time. This script measures
what that costs, on this machine:

- `default`: TensorFlow's choice (the affinity mask's CPUs);
- `NxM`: TF_NUM_INTRAOP_THREADS=N, TF_NUM_INTEROP_THREADS=M, for example 16x16 (what TensorFlow
  picks on a 16-CPU host) or 2x1;
- with `--quota CPUS`, every row runs in a cgroup (v1 `cpu` or v2) limited to that many CPUs' time,
  as in a container; this needs root and a writable cgroup file system.

Every row is a fresh process of `benchmarks/training.py --worker cxr-fp32` (median of --repeats timed
epochs of --steps steps after a graph-building epoch), on the same synthetic 299 px PNG files. The settings
run in turn, --rounds times (A B C A B C ...), so that a drift of the machine's speed touches all of them;
a setting's figure is the median over its rounds, and its ratio the median of the per-round ratios to
`default`.

    .venv/bin/python benchmarks/threads.py [--settings default,2x1,16x16] [--rounds 2] [--quota 1] [--size 128]

Prints a table and writes benchmarks/results/threads-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def thread_env(setting: str) -> dict[str, str]:
    """The environment variables of a setting: `default` sets none; `NxM` sets intra-op N, inter-op M."""
    if setting == "default":
        return {}
    intra, inter = (int(part) for part in setting.split("x"))
    return {"TF_NUM_INTRAOP_THREADS": str(intra), "TF_NUM_INTEROP_THREADS": str(inter)}


@contextlib.contextmanager
def cpu_quota(cpus: float | None) -> Iterator[Path | None]:
    """A cgroup whose processes get `cpus` CPUs' worth of time (None: no cgroup); removed afterwards."""
    if cpus is None:
        yield None
        return
    period = 100_000
    v2, v1 = Path("/sys/fs/cgroup/cgroup.controllers"), Path("/sys/fs/cgroup/cpu")
    if v2.is_file():
        group = Path("/sys/fs/cgroup/cxr-threads-bench")
        group.mkdir(exist_ok=True)
        (group / "cpu.max").write_text(f"{int(cpus * period)} {period}")
    elif v1.is_dir():
        group = v1 / "cxr-threads-bench"
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(int(cpus * period)))
    else:
        raise SystemExit("no cgroup file system to set a CPU quota in")
    try:
        yield group
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()


def run_row(setting: str, group: Path | None, size: int, data: Path, cache: Path, steps: int, repeats: int) -> dict:
    env = {**os.environ, **thread_env(setting)}
    command = [sys.executable, str(Path(__file__).parent / "training.py"), "--worker", "cxr-fp32", "--size", str(size),
               "--data", str(data), "--cache", str(cache), "--steps", str(steps), "--repeats", str(repeats)]
    if group is not None:  # join the cgroup before exec, so every thread of the worker is in it
        command = ["sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "sh", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{setting} failed:\n{done.stderr[-3000:]}")
    return {"setting": setting, **thread_env(setting), **json.loads(lines[-1][len("RESULT "):])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="default,2x1,16x16")
    parser.add_argument("--quota", type=float, help="CPUs' worth of time for every row (a cgroup; needs root)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=320)  # >= (1 + repeats) x steps x 16: no epoch runs out
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    from common import machine_info, save_result
    from training import image_files

    from cxr.data.cache import cached_images
    from cxr.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="cxr-threads-") as work:
        data = write_synthetic_dataset(Path(work) / "data", per_class=args.images // 4, size=299, seed=0)
        files, _ = image_files(data)
        cached_images(Path(work) / "cache", data, files, args.size, progress=False, echo=lambda _: None)
        print(f"{len(files)} images at {args.size} px; {len(os.sched_getaffinity(0))} CPUs in the affinity mask; "
              f"quota: {args.quota or 'none'}; {args.repeats} timed epochs of {args.steps} steps of 16")
        rows = []
        with cpu_quota(args.quota) as group:
            for round_ in range(1, args.rounds + 1):
                for setting in args.settings.split(","):
                    row = run_row(setting, group, args.size, data, Path(work) / "cache", args.steps, args.repeats)
                    rows.append({"round": round_, **row})
                    print(f"round {round_} {setting:>8}: {row['median_images_per_s']:6.2f} images/s "
                          f"(epochs {', '.join(f'{r:.2f}' for r in row['images_per_s'])}), "
                          f"first step {row['first_step_s']:.0f} s", flush=True)
    summary = summarise(rows, args.settings.split(","))
    for setting, figures in summary.items():
        ratio = figures["ratio_to_default"]
        print(f"{setting:>8}: {figures['median_images_per_s']:6.2f} images/s (rounds "
              f"{', '.join(f'{r:.2f}' for r in figures['rounds'])})"
              + (f", {ratio:.2f}x default (per round {', '.join(f'{r:.2f}' for r in figures['ratios'])})"
                 if ratio else ""))
    save_result(args.out, "threads", {"benchmark": "threads", "image_size": args.size, "quota_cpus": args.quota,
                                      "affinity_cpus": len(os.sched_getaffinity(0)), "steps": args.steps,
                                      "repeats": args.repeats, "rounds": args.rounds, "machine": machine_info(),
                                      "summary": summary, "rows": rows})


def summarise(rows: list[dict], settings: list[str]) -> dict[str, dict]:
    """Per setting: the median over rounds, and the median of the per-round ratios to `default`."""
    default = {r["round"]: r["median_images_per_s"] for r in rows if r["setting"] == "default"}
    summary = {}
    for setting in settings:
        mine = [r for r in rows if r["setting"] == setting]
        ratios = [r["median_images_per_s"] / default[r["round"]] for r in mine if r["round"] in default]
        summary[setting] = {"median_images_per_s": statistics.median(r["median_images_per_s"] for r in mine),
                            "rounds": [r["median_images_per_s"] for r in mine], "ratios": ratios,
                            "ratio_to_default": statistics.median(ratios) if ratios else None}
    return summary


if __name__ == "__main__":
    main()
