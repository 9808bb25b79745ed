"""benchmarks/recipe.py: the folds every recipe trains on, the ablation's variants, the paired summary and
what a benchmark started again with the same --work keeps. Nothing here trains: the reporting path runs
on runs made by hand (config.yaml, history.csv, eval/metrics.json), as a stopped ablation leaves them."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr.cli import build_parser
from cxr.config import FIELDS, RECIPES, resolve
from cxr.data.scan import scan_dataset
from cxr.data.synthetic import write_synthetic_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import recipe  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three classes of 20 phantoms, with one radiograph of each class present twice (an exact copy); the
    validation tenth of two folds needs at least 10 images of each class."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("recipe-data"), per_class=20, size=32, seed=5,
                                   classes=("COVID", "Normal", "Viral Pneumonia"))
    for folder in sorted(p for p in root.rglob("images") if p.is_dir()):
        first = sorted(folder.iterdir())[0]
        shutil.copyfile(first, folder / f"copy-of-{first.name}")
    return root


def test_folds_test_every_image_once_keep_copies_together_and_follow_the_seed(dataset):
    scan = scan_dataset(dataset, progress=False)
    everything = set(scan.images["file"])
    splits = recipe.folds(scan, 3, seed=0)
    tested = [set(split.frames["test"]["file"]) for split in splits]
    assert set().union(*tested) == everything and sum(map(len, tested)) == len(everything)
    for split in splits:
        parts = [set(split.frames[name]["file"]) for name in ("train", "val", "test")]
        assert set().union(*parts) == everything and sum(map(len, parts)) == len(everything)
        assert len(split.frames["val"]) > 0
        for part in parts:  # each copy sits where its original is
            for name in part:
                if "copy-of-" in name:
                    assert name.replace("copy-of-", "") in part
        # Stratified: every fold's test set holds every class.
        assert split.frames["test"]["label"].nunique() == len(scan.classes)
    again = recipe.folds(scan, 3, seed=0)
    assert [list(s.frames["test"]["file"]) for s in again] == [list(s.frames["test"]["file"]) for s in splits]
    other = recipe.folds(scan, 3, seed=1)
    assert [set(s.frames["test"]["file"]) for s in other] != tested


def test_the_ablation_sets_back_one_ingredient_at_a_time_and_adds_no_flips():
    assert recipe.variants(["reference", "augmented-cosine"], ablation=False) == [
        recipe.Variant("reference", "reference"), recipe.Variant("augmented-cosine", "augmented-cosine")]
    found = recipe.variants(["reference", "augmented-cosine"], ablation=True)
    assert found[0] == recipe.Variant("augmented-cosine", "augmented-cosine")
    assert [v.name for v in found[1:-1]] == [f"augmented-cosine without {key}" for key in RECIPES["augmented-cosine"]]
    assert found[-1] == recipe.Variant("augmented-cosine without flips", "augmented-cosine", ("--no-flip",))
    assert dict(zip(RECIPES["augmented-cosine"], (v.flags for v in found[1:-1]), strict=True))["schedule"] == (
        "--schedule", "adaptive")
    assert set(recipe.SET_BACK) == set(RECIPES["augmented-cosine"])  # every ingredient can be set back


def _row(variant, seed, fold, f1):
    return {"variant": variant, "seed": seed, "fold": fold, "accuracy": f1 + 0.01, "balanced_accuracy": f1,
            "macro_f1": f1, "ece": 0.1}


def test_summarise_pairs_each_variant_with_the_planned_baseline_fold_by_fold():
    rows = pd.DataFrame([
        # The baseline's (seed 0, fold 0) run is missing, as with --finished-only: the first row is another
        # variant's, and the pairs are only the folds both have.
        _row("B", 0, 0, 0.50), _row("A", 0, 1, 0.70), _row("B", 0, 1, 0.60), _row("A", 1, 0, 0.80),
        _row("B", 1, 0, 0.90), _row("C", 1, 0, 0.75),
    ])
    summary, paired = recipe.summarise(rows, "A")
    assert summary.loc["A", ("macro_f1", "mean")] == pytest.approx(0.75)
    assert summary.loc["B", ("macro_f1", "std")] == pytest.approx(np.std([0.5, 0.6, 0.9], ddof=1))
    b = paired.set_index("variant").loc["B"]
    assert b["against"] == "A" and b["pairs"] == 2 and b["macro_f1 pairs"] == 2
    assert b["macro_f1 difference mean"] == pytest.approx(((0.6 - 0.7) + (0.9 - 0.8)) / 2)
    assert b["macro_f1 difference sd"] == pytest.approx(np.std([-0.1, 0.1], ddof=1))
    c = paired.set_index("variant").loc["C"]
    assert c["pairs"] == 1 and c["macro_f1 difference mean"] == pytest.approx(-0.05)
    assert "A" not in set(paired["variant"])


def test_a_kept_split_is_reused_only_when_it_is_the_same(dataset, tmp_path):
    scan = scan_dataset(dataset, progress=False)
    split = recipe.folds(scan, 3, seed=0)[0]
    folder = tmp_path / "seed0-fold0" / "split"
    recipe.reuse_split(split, folder)
    assert sorted(pd.read_csv(folder / "test.csv")["file"]) == sorted(split.frames["test"]["file"])
    recipe.reuse_split(split, folder)  # the same split: kept
    with pytest.raises(SystemExit, match=r"seed0-fold0/split holds another split \(train: .*other --folds"):
        recipe.reuse_split(recipe.folds(scan, 2, seed=0)[0], folder)


def _finished_run(runs_dir, recipe_name, seed, f1, *flags):
    """A run folder as `cxr train --recipe recipe_name *flags` leaves it (with the benchmark's default size and
    epochs), with only what the benchmark reads."""
    run = runs_dir / "20261204-000000-cv"
    (run / "eval").mkdir(parents=True)
    parsed = vars(build_parser().parse_args(["train", "--split", "s", "--recipe", recipe_name, *flags]))
    config = resolve(**{**{name: parsed.get(name) for name in FIELDS}, "image_size": 96, "epochs": 12,
                        "weights": "none", "backbone": "densenet169", "seed": seed})
    (run / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)))
    pd.DataFrame({"epoch": [1, 2, 3], "seconds": [10.0, 11.0, 12.0], "accuracy": [0.4, 0.6, 0.8],
                  "val_accuracy": [0.3, 0.5, 0.7]}).to_csv(run / "history.csv", index=False)
    (run / "eval" / "metrics.json").write_text(json.dumps({
        "clinical": {"overall": {"accuracy": {"value": f1 + 0.01}, "balanced_accuracy": {"value": f1}},
                     "macro": {"f1": {"value": f1}}},
        "calibration": {"test_ece_before": 0.12}}))
    return run


def _benchmark(*arguments):
    return subprocess.run([sys.executable, str(BENCHMARKS / "recipe.py"), *arguments], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300)


def test_finished_only_reports_the_runs_kept_under_work_and_refuses_other_settings(dataset, tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    scores = {(0, 0): (0.50, 0.70), (0, 1): (0.60, 0.65)}  # seed 0, folds 0-1: (reference, augmented-cosine)
    for (seed, fold), pair in scores.items():
        for index, (name, f1) in enumerate(zip(["reference", "augmented-cosine"], pair, strict=True)):
            _finished_run(work / f"seed{seed}-fold{fold}" / f"variant{index}", name, seed, f1)
    arguments = ["--data", str(dataset), "--seeds", "0", "--folds", "3", "--work", str(work), "--out", str(out),
                 "--finished-only"]
    result = _benchmark(*arguments)
    assert result.returncode == 0, result.stderr
    assert "partial: 4 of 6 planned runs finished" in result.stdout
    assert "seed 0 fold 1 augmented-cosine: accuracy 0.660, macro F1 0.650, 3 epochs, 33 s" in result.stdout
    report = json.loads(next(out.glob("recipe-*.json")).read_text())
    assert report["complete"] is False and (report["runs_finished"], report["runs_planned"]) == (4, 6)
    assert report["settings"]["weights"] == "none" and report["settings"]["data"] == dataset.name
    (pair,) = report["paired"]
    assert pair["variant"] == "augmented-cosine" and pair["against"] == "reference" and pair["pairs"] == 2
    assert pair["macro_f1 difference mean"] == pytest.approx((0.20 + 0.05) / 2)
    assert report["runs"][0]["first_epochs_val_accuracy"] == [0.3, 0.5, 0.7] and report["runs"][0]["reused"]
    for row in report["runs"]:
        assert row["images"]["test"] + row["images"]["val"] + row["images"]["train"] == 63

    # Started again with another --size, the kept runs are not mixed in, and nothing trains first; nor as
    # an ablation (other variants in the same folders), nor with another number of folds.
    result = _benchmark(*[a for a in arguments if a != "--finished-only"], "--size", "128")
    assert result.returncode != 0 and "seed 0 fold" not in result.stdout
    assert "variant0/20261204-000000-cv was trained with other settings (image_size 96 instead of 128)" in result.stderr
    result = _benchmark(*arguments, "--ablation")
    assert result.returncode != 0
    assert ("seed0-fold0/variant0/20261204-000000-cv was trained with other settings (augment none instead of "
            "radiograph, ") in result.stderr

    # An ablation's kept runs, each with its ingredient set back, are all reused.
    ablation = tmp_path / "ablation"
    for index, variant in enumerate(recipe.variants(["augmented-cosine"], ablation=True)):
        _finished_run(ablation / "seed0-fold0" / f"variant{index}", variant.recipe, 0, 0.5 + index / 100,
                      *variant.flags)
    result = _benchmark("--data", str(dataset), "--seeds", "0", "--folds", "3", "--work", str(ablation), "--out",
                        str(out), "--finished-only", "--ablation")
    assert result.returncode == 0, result.stderr
    assert "partial: 10 of 30 planned runs finished" in result.stdout
    result = _benchmark(*[a if a != "3" else "2" for a in arguments])
    assert result.returncode != 0 and "holds another split" in result.stderr
