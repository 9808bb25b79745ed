"""Which training recipe does better on images it never saw? Repeated stratified k-fold cross-validation of
`cxr train --recipe ...` on the shared sample (or any labelled folder).

Protocol (issue 18): the folder is scanned once and its duplicate groups found as `cxr split` does; for each
seed, scikit-learn's StratifiedGroupKFold (copies of one radiograph stay in one fold) makes --folds folds.
Each fold in turn is the test set; of the rest, a stratified tenth (again by group) is the validation set
and the others train. Every recipe trains on exactly the same splits, from scratch (or from --weights), at
the same size and for the same number of epochs, each in a fresh `cxr train` process, as a user would run
it; its test metrics come from the run's own evaluation. Reported per recipe: mean and sample standard
deviation over folds x seeds of accuracy, balanced accuracy, macro F1 and ECE (before temperature
scaling), and for each recipe against the first one the per-fold paired difference (mean and spread), the
fairer comparison since both saw the same images.

Modes:
- default: the recipes given (reference and augmented-cosine).
- --ablation: the last recipe with each of its ingredients set back to the reference's, one at a time,
  plus the last recipe without horizontal flips.

    .venv/bin/python benchmarks/recipe.py [--data DIR] [--recipes reference,augmented-cosine] [--folds 3]
        [--seeds 0,1] [--size 96] [--epochs 12] [--weights none|PATH] [--ablation] [--backbone densenet169]
        [--jobs 1]

Started again with the same --work, it keeps the runs that finished (their seconds are then the epochs'
own, from history.csv) and goes on with the rest. With --finished-only it trains nothing and reports the
runs that finished so far (the JSON then says `"complete": false` and counts them): a long ablation
stopped part-way still gives its figures, on fewer folds.

Budget on this project's 2-core machines: DenseNet169 at 128 px costs about 40 s an epoch on 300 images
with validation, plus about 90 s for the first step; at 96 px about half. The default (2 recipes x 3 folds x
2 seeds, 96 px, 12 epochs) is planned to finish in about 90 minutes there. Prints a table and writes
benchmarks/results/recipe-<time>.json (and keeps the runs under --work).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import machine_info, save_result  # noqa: E402
from sklearn.model_selection import StratifiedGroupKFold  # noqa: E402

from cxr.config import FIELDS, RECIPES, resolve  # noqa: E402
from cxr.data.scan import scan_dataset  # noqa: E402
from cxr.data.split import SPLIT_COLUMNS, Split, duplicate_groups, write_split  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-sample" / "COVID-19_Radiography_Dataset"
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "ece")
# The flags that set one ingredient back to the reference recipe's value, for the ablation.
SET_BACK = {"augment": ("--augment", "none"), "label_smoothing": ("--label-smoothing", "0"),
            "class_balance": ("--no-class-balance",), "optimizer": ("--optimizer", "adamax"),
            "weight_decay": ("--weight-decay", "0"), "schedule": ("--schedule", "adaptive"),
            "warmup_epochs": ("--warmup-epochs", "0"), "bn_momentum": ("--bn-momentum", "0.99")}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A recipe and the flags that change it (an ablation's ingredient set back)."""

    name: str
    recipe: str
    flags: tuple[str, ...] = ()


def folds(scan, n_folds: int, seed: int, max_distance: int = 20) -> list[Split]:
    """The n_folds splits of one seed: fold k is test; a stratified tenth of the rest (by group) is val."""
    images = scan.images.sort_values(["label", "file"], kind="stable").reset_index(drop=True)
    groups, duplicates = duplicate_groups(images, max_distance)
    table = images.assign(group=groups)
    outer = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    splits = []
    for rest_rows, test_rows in outer.split(table, table["label"], table["group"]):
        rest = table.iloc[rest_rows].reset_index(drop=True)
        inner = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
        train_rows, val_rows = next(inner.split(rest, rest["label"], rest["group"]))
        frames = {"train": rest.iloc[train_rows][SPLIT_COLUMNS].reset_index(drop=True),
                  "val": rest.iloc[val_rows][SPLIT_COLUMNS].reset_index(drop=True),
                  "test": table.iloc[test_rows][SPLIT_COLUMNS].reset_index(drop=True)}
        splits.append(Split(frames=frames, duplicates=duplicates, skipped=scan.skipped, root=str(scan.root),
                            classes=list(scan.classes), hashes=images[["file", "md5", "phash"]]))
    return splits


def variants(recipes: list[str], ablation: bool) -> list[Variant]:
    """The recipes as given, or the last one's ablation."""
    if not ablation:
        return [Variant(name, name) for name in recipes]
    last = recipes[-1]
    found = [Variant(last, last)]
    found += [Variant(f"{last} without {key}", last, SET_BACK[key]) for key in RECIPES[last]]
    found.append(Variant(f"{last} without flips", last, ("--no-flip",)))
    return found


def train_arguments(variant: Variant, split_dir: Path, runs_dir: Path, args: argparse.Namespace,
                    seed: int) -> list[str]:
    """The arguments of `cxr train` for one variant on one fold."""
    return ["train", "--split", str(split_dir), "--recipe", variant.recipe, *variant.flags, "--runs-dir",
            str(runs_dir), "--name", "cv", "--image-size", str(args.size), "--epochs", str(args.epochs), "--weights",
            args.weights, "--backbone", args.backbone, "--bootstrap", "0", "--seed", str(seed), "--ask-epoch", "0",
            "--cache-dir", str(args.cache)]


def finished_run(runs_dir: Path) -> Path | None:
    """The run under a variant's folder that finished (a benchmark started again with the same --work)."""
    return next((p for p in sorted(runs_dir.iterdir()) if (p / "eval" / "metrics.json").is_file()), None)


def train_one(arguments: list[str], runs_dir: Path, finished_only: bool) -> dict | None:
    """One `cxr train` in its own process, or the run kept from an earlier start; its test metrics from the
    run's evaluation (None: not run, with --finished-only)."""
    command = [sys.executable, "-m", "cxr", *arguments]
    finished = finished_run(runs_dir)
    started = time.monotonic()
    if finished:  # checked against `arguments` before any training (check_kept_runs)
        run = finished
    elif finished_only:
        return None
    else:
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        run = max((p for p in runs_dir.iterdir() if (p / "config.yaml").is_file()), key=lambda p: p.stat().st_mtime)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    clinical = metrics["clinical"]
    history = pd.read_csv(run / "history.csv")
    seconds = float(history["seconds"].sum()) if finished else time.monotonic() - started
    return {"run": run.relative_to(runs_dir.parent.parent).as_posix(),  # relative to --work
            "reused": bool(finished), "seconds": round(seconds, 1), "epochs_run": int(len(history)),
            "accuracy": clinical["overall"]["accuracy"]["value"],
            "balanced_accuracy": clinical["overall"]["balanced_accuracy"]["value"],
            "macro_f1": clinical["macro"]["f1"]["value"],
            "ece": (metrics.get("calibration") or {}).get("test_ece_before"),
            "first_epochs_accuracy": history["accuracy"].head(3).round(4).tolist(),
            "first_epochs_val_accuracy": history["val_accuracy"].head(3).round(4).tolist()}


# What makes two runs the same experiment: every ingredient of any recipe, and the protocol's settings.
COMPARED = sorted(set().union(*RECIPES.values()) | {"recipe", "flip", "image_size", "epochs", "backbone", "seed",
                                                     "batch_size", "learning_rate", "weights"})


def settings_differ(run: Path, arguments: list[str]) -> str | None:
    """What differs between a finished run kept under --work and the run `cxr train arguments` would train
    (None: nothing), resolved by cxr's own parser and recipes, so that a benchmark started again with other
    settings, or without --ablation (other variants in the same folders), does not mix runs. Weights files
    are compared by name (the JSON records only the name).
    """
    import yaml

    from cxr.cli import build_parser

    parsed = vars(build_parser().parse_args(arguments))
    wanted = resolve(**{name: parsed.get(name) for name in FIELDS})
    config = yaml.safe_load((run / "config.yaml").read_text())

    def comparable(key: str, value):
        return Path(str(value)).name if key == "weights" and value not in (None, "none") else value

    pairs = {key: (comparable(key, config.get(key)), comparable(key, getattr(wanted, key))) for key in COMPARED}
    differ = [f"{key} {found} instead of {asked}" for key, (found, asked) in pairs.items() if found != asked]
    return ", ".join(differ) or None


def check_kept_runs(tasks: list[tuple]) -> None:
    """Refuse, before anything trains, a --work whose finished runs were trained with other settings.

    Raises:
        SystemExit: naming the run and what differs.
    """
    for *_, arguments, runs_dir in tasks:
        run = finished_run(runs_dir)
        differ = run and settings_differ(run, arguments)
        if differ:
            raise SystemExit(f"{run} was trained with other settings ({differ}): give a new --work, or the "
                             "settings it was started with")


def reuse_split(split: Split, split_dir: Path) -> None:
    """Write the fold's split, or check that the one kept under --work is the same (same files in each
    part): a benchmark started again with other --folds, --seeds or --data must not train on a stale split.

    Raises:
        SystemExit: the kept split differs, naming the folder.
    """
    if not (split_dir / "dataset.yaml").is_file():  # written last: a split folder without it is unfinished
        write_split(split, split_dir)
        return
    for name, frame in split.frames.items():
        kept = pd.read_csv(split_dir / f"{name}.csv", keep_default_na=False, na_values=[], dtype={"file": str})
        if sorted(kept["file"]) != sorted(frame["file"]):
            raise SystemExit(f"{split_dir} holds another split ({name}: {len(kept)} images kept, {len(frame)} "
                             "now): it was made with other --folds, --seeds or --data; give a new --work")


def summarise(rows: pd.DataFrame, baseline: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and sample SD per variant; and each variant's per-fold paired difference from `baseline` (the
    first variant planned: with --finished-only its first run may be missing, and the first row is then
    another variant's), with the number of pairs each metric's mean is over.
    """
    summary = rows.groupby("variant", sort=False)[list(METRICS)].agg(["mean", "std"])
    base = rows[rows["variant"] == baseline].set_index(["seed", "fold"])[list(METRICS)]
    paired = []
    for name, group in rows.groupby("variant", sort=False):
        if name == baseline:
            continue
        difference = group.set_index(["seed", "fold"])[list(METRICS)] - base
        paired.append({"variant": name, "against": baseline, "pairs": int(difference["macro_f1"].notna().sum()),
                       **{f"{m} pairs": int(difference[m].notna().sum()) for m in METRICS},
                       **{f"{m} difference mean": difference[m].mean() for m in METRICS},
                       **{f"{m} difference sd": difference[m].std() for m in METRICS}})
    return summary, pd.DataFrame(paired)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SAMPLE))
    parser.add_argument("--recipes", default="reference,augmented-cosine")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--weights", default="none", help="none (from scratch) or an ImageNet DenseNet169 .h5")
    parser.add_argument("--backbone", default="densenet169")
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing; report the runs under --work that finished")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once (default 1; more on a GPU box with many cores)")
    parser.add_argument("--work", help="where splits and runs go (default: a new temporary folder)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="cxr-recipe-"))
    args.cache = work / "cache"  # every run decodes each split once, whatever the variant
    print(f"runs under {work} (give it again as --work to go on after a stop)", flush=True)
    scan = scan_dataset(args.data, progress=False)
    chosen = variants(args.recipes.split(","), args.ablation)
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = []  # (seed, fold, variant, split, cxr train's arguments, runs folder), in report order
    for seed in seeds:
        for fold, split in enumerate(folds(scan, args.folds, seed)):
            split_dir = work / f"seed{seed}-fold{fold}" / "split"
            reuse_split(split, split_dir)
            for index, variant in enumerate(chosen):
                runs_dir = work / f"seed{seed}-fold{fold}" / f"variant{index}"
                runs_dir.mkdir(parents=True, exist_ok=True)
                tasks.append((seed, fold, variant, split, train_arguments(variant, split_dir, runs_dir, args, seed),
                              runs_dir))
    check_kept_runs(tasks)

    failed = threading.Event()  # a run failed: start no other (those under way finish, and are kept)
    printing = threading.Lock()

    def run_task(task: tuple) -> dict | None:
        seed, fold, variant, split, arguments, runs_dir = task
        if failed.is_set():
            return None
        try:
            done = train_one(arguments, runs_dir, args.finished_only)
        except BaseException:
            failed.set()
            raise
        if done is None:
            return None
        row = {"variant": variant.name, "seed": seed, "fold": fold,
               "images": {name: len(frame) for name, frame in split.frames.items()}, **done}
        with printing:
            print(f"seed {seed} fold {fold} {variant.name}: accuracy {row['accuracy']:.3f}, macro F1 "
                  f"{row['macro_f1']:.3f}, {row['epochs_run']} epochs, {row['seconds']:.0f} s", flush=True)
        return row

    # --jobs > 1 trains several runs at once (a GPU box: compiling is CPU work, the GPU is mostly idle
    # on 300 images); each run's seconds then include waiting for the others. Every process would take
    # most of a GPU's memory at its start (JAX 75 %, TensorFlow all): they take what they use instead.
    if args.jobs > 1:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = [row for row in pool.map(run_task, tasks) if row is not None]
    if not rows:
        sys.exit(f"no finished run under {work}")
    table = pd.DataFrame(rows)
    planned = len(seeds) * args.folds * len(chosen)
    summary, paired = summarise(table, chosen[0].name)
    print(summary.round(4).to_string())
    if len(paired):
        print(paired.round(4).to_string(index=False))
    if len(rows) < planned:
        print(f"partial: {len(rows)} of {planned} planned runs finished")
    save_result(args.out, "recipe" + ("-ablation" if args.ablation else ""), {
        "protocol": __doc__, "machine": machine_info(),
        # Folders on this machine are left out of the record (the runs are named relative to --work).
        "settings": {**{k: v for k, v in vars(args).items()
                        if k not in ("data", "work", "out", "cache", "finished_only")},
                     "data": Path(args.data).name,
                     "weights": args.weights if args.weights == "none" else Path(args.weights).name,
                     "variants": [dataclasses.asdict(v) for v in chosen]},
        "complete": len(rows) == planned, "runs_finished": len(rows), "runs_planned": planned,
        "runs_per_variant": table.groupby("variant", sort=False).size().to_dict(),
        "runs": rows, "summary": json.loads(summary.to_json()), "paired": paired.to_dict("records"),
        "mean_seconds_per_run": float(np.mean(table["seconds"]))})


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
