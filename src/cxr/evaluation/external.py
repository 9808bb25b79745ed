"""External validation: a finished run's model on a labelled folder from elsewhere.

On the COVID-19 Radiography Database every class comes from its own sources, so a test split from the
same collection flatters a model that has learnt to recognise the source. A folder from another hospital
(or another collection) asks the fair question. This module scans that folder, matches its class folders
to the model's classes, leaves out copies of the run's own training and validation images (leakage), and
writes the same files and report as an internal evaluation into `RUN/external-<name>/`: compute, then
write, then summarise, as `evaluate_run` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from cxr import files
from cxr.data.cache import load_split_images
from cxr.data.scan import Scan, scan_dataset
from cxr.data.split import duplicate_groups
from cxr.environment import record
from cxr.errors import DatasetError
from cxr.evaluation import calibration, leakage, operating_points, sources
from cxr.evaluation.evaluate import (
    Predictions,
    batch_predictor,
    cross_entropy,
    predictions_frame,
    source_lines,
    write_scored_files,
)
from cxr.evaluation.metrics import HEADLINE, clinical_metrics, format_interval
from cxr.evaluation.model_card import write_model_card
from cxr.evaluation.report import write_report
from cxr.inference.tta import check_tta
from cxr.model import load_model
from cxr.run import EvalDir, Run, now

__all__ = ["evaluate_external", "match_classes"]

SCORED = "external"


def evaluate_external(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    name: str | None = None,
    *,
    keep_overlap: bool = False,
    batch_size: int | None = None,
    bootstrap: int | None = None,
    bootstrap_seed: int | None = None,
    tta: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Evaluate a run's model on a labelled folder it was not trained on, into `RUN/external-<name>/`.

    The run's own split is not touched. Unreadable files are listed, not fatal.

    Args:
        run_dir: the run folder.
        data: the labelled folder: `<Class>/images/*` (Kaggle) or `<Class>/*`, PNG, JPEG or DICOM files
            (with or without an extension); its class folders must be some or all of the model's classes.
        name: what to call the data in the folder name and report (default: the folder's name).
        keep_overlap: keep copies of the run's training and validation images in the metrics.
        batch_size: images per prediction call (default max(32, the run's batch size)).
        bootstrap: stratified bootstrap resamples for the intervals (default: the run's setting).
        bootstrap_seed: their seed (default: the run's setting).
        tta: "flip" to average each image's probabilities with its mirror image's.
        progress: show progress bars.
        echo: where messages go.

    Returns:
        The metrics written to metrics.json, with `eval_dir` added.

    Raises:
        DatasetError: the folder has no usable images, a class the model does not know, or only copies.
    """
    run = Run(run_dir)
    config, split = run.config(), run.split()
    classes, tta = list(config.classes or split.classes), check_tta(tta)
    scan = scan_dataset(data, workers=config.workers or None, progress=progress, min_classes=1)
    labels = match_classes(scan.classes, classes, scan.root)
    external = scan.images.assign(label=scan.images["label"].map(labels))
    echo(f"external data {scan.root}: {len(external)} images of {', '.join(sorted(set(external['label'])))}; "
         f"{len(scan.skipped)} unreadable file(s) left out")
    for row in scan.skipped.itertuples():
        echo(f"  unreadable {row.file}: {row.reason}")

    overlap = leakage.find_overlap(external, leakage.run_hashes(split, config.workers or None, progress, echo),
                                   config.duplicate_distance)
    checked = leakage.overlap_summary(overlap, len(external), config.duplicate_distance, keep_overlap)
    echo(f"leakage check: {checked['summary']}")
    excluded = set() if keep_overlap else set(overlap.loc[overlap["run_split"].isin(leakage.EXCLUDED_SPLITS), "file"])
    # Copies within the folder itself (as `cxr split` finds them) are resampled together by the bootstrap.
    external = external.assign(group=duplicate_groups(external, config.duplicate_distance)[0])
    scored_frame = external[~external["file"].isin(excluded)].reset_index(drop=True)[["file", "label", "group"]]
    if scored_frame.empty:
        raise DatasetError(f"every image in {scan.root} is a copy of one of the run's training or validation "
                           "images (see the leakage check above); nothing external is left to evaluate")
    copies = _copy_groups(scored_frame)
    if copies["groups"]:
        echo(f"copies within the folder: {copies['groups']} group(s) of one radiograph ({copies['images']} "
             "images); the bootstrap draws each group as one")

    model = load_model(run.model_path)
    images = load_split_images(None, scan.root, scored_frame["file"], int(model.input_shape[1]),
                               config.workers, progress, desc="decode external", echo=echo)
    scored = Predictions(scored_frame, np.array([classes.index(label) for label in scored_frame["label"]]),
                         batch_predictor(model, config, batch_size, tta)(images))
    resamples = config.bootstrap if bootstrap is None else int(bootstrap)
    seed = config.bootstrap_seed if bootstrap_seed is None else int(bootstrap_seed)
    echo(f"external metrics with {resamples} stratified bootstrap resamples...")
    metrics = {"run": run.path.name, "model": run.model_path.name, "classes": classes, "evaluated": now(),
               "kind": "external", "tta": tta, "software": record(), "training": run.training_summary(),
               "external": _description(scan, name, external, scored_frame, checked),
               **compute_external_metrics(scored, classes, run, resamples=resamples, seed=seed, tta=tta,
                                          source_map=sources.read_sources(scan.root))}
    out = run.new_external_dir(metrics["external"]["name"])
    files.write_csv(out.table("overlap"), overlap)
    files.write_csv(out.predictions(SCORED), predictions_frame(scored.frame, scored.probabilities, classes))
    write_scored_files(out, metrics, scored, classes, model, images)
    if len(scan.skipped):
        files.write_csv(out.table("skipped"), scan.skipped)
    files.write_json(out.metrics, metrics)
    write_report(metrics, config.to_dict(), None, out)
    write_model_card(run, metrics, out)
    for line in summary_lines(metrics, run, out):
        echo(line)
    return {**metrics, "eval_dir": str(out.path)}


def match_classes(folders: list[str], classes: list[str], root: str | os.PathLike) -> dict[str, str]:
    """Each class folder's model class: the same name, or the same name ignoring case, spaces and `_`.

    Args:
        folders: the class folders found.
        classes: the model's classes.
        root: the folder (for the message).

    Returns:
        {folder name: model class}.

    Raises:
        DatasetError: a folder the model has no class for, with the model's classes listed.
    """
    def key(name: str) -> str:
        return "".join(name.casefold().replace("_", " ").split())

    by_key = {key(name): name for name in classes}
    unknown = [folder for folder in folders if key(folder) not in by_key]
    if unknown:
        raise DatasetError(f"{root}: class folder(s) {', '.join(unknown)} are not classes of this model; its classes "
                           f"are {', '.join(classes)} (rename the folders, or leave them out)")
    return {folder: by_key[key(folder)] for folder in folders}


def _description(scan: Scan, name: str | None, external: pd.DataFrame, scored: pd.DataFrame, checked: dict) -> dict:
    counts = scored["label"].value_counts()
    return {"data": str(scan.root), "name": name or scan.root.name, "layout": scan.layout,
            "folders": list(scan.classes), "images_found": int(len(external)), "unreadable": int(len(scan.skipped)),
            "scored": int(len(scored)), "per_class": {label: int(counts[label]) for label in sorted(counts.index)},
            "overlap": checked, "copy_groups": _copy_groups(scored)}


def _copy_groups(scored: pd.DataFrame) -> dict[str, int]:
    """Copies of one radiograph among the scored images (groups of 2 or more, and their images), which the
    bootstrap draws as one: what the console says and metrics.json records.
    """
    sizes = scored["group"].value_counts()
    return {"groups": int((sizes > 1).sum()), "images": int(sizes[sizes > 1].sum())}


def compute_external_metrics(scored: Predictions, classes: list[str], run: Run, *, resamples: int, seed: int,
                             tta: str, source_map: dict[str, str]) -> dict:
    """Every number of an external evaluation, as JSON-ready data.

    Metrics cover the classes the folder has (macro averages over them); calibration is measured with the
    run's own temperature and the operating points are the run's, chosen on its validation split: neither
    is refitted on the data being judged.

    Args:
        scored: the external predictions.
        classes: the model's classes.
        run: the run (for its temperature and operating points).
        resamples: stratified bootstrap resamples.
        seed: their seed.
        tta: the test-time augmentation used.
        source_map: file name -> source from the folder's metadata files ({} when it has none).

    Returns:
        {"splits", "clinical", "calibration"?, "operating_points"?, "sources"}.
    """
    n_classes = len(classes)
    truth, probabilities = scored.truth, scored.probabilities
    copies = scored.frame["group"].to_numpy() if "group" in scored.frame else None  # resampled together
    metrics: dict = {"scored": SCORED,
                     "splits": {SCORED: {"images": int(len(truth)),
                                         "loss": cross_entropy(truth, probabilities, n_classes),
                                         "accuracy": float(np.mean(probabilities.argmax(axis=1) == truth))}},
                     "clinical": {"split": SCORED, **clinical_metrics(truth, probabilities, classes, resamples, seed,
                                                                      present_only=True, copies=copies)}}
    found = run.temperature()
    if found is not None:
        metrics["calibration"] = calibration.applied_record(truth, probabilities, found[0], str(found[1]))
    points = run.operating_points()
    if points is not None:
        chosen, source = points
        metrics["operating_points"] = {
            "chosen": chosen, "source": str(source), "scored_on": SCORED,
            "note": (f"thresholds chosen with test-time augmentation {chosen.get('tta', 'none')!r}, applied here "
                     f"to {tta!r}" if chosen.get("tta", "none") != tta else None),
            "results": operating_points.evaluate_at_thresholds(truth, probabilities, classes, chosen, resamples,
                                                               seed, copies=copies)}
    metrics["sources"] = _source_audit(source_map, scored, classes)
    return metrics


def _source_audit(mapping: dict[str, str], scored: Predictions, classes: list[str]) -> dict:
    if not mapping:
        return {"available": False, "note": "the folder has no <Class>.metadata.xlsx files; per-source metrics "
                                            "need them"}
    found = sources.assign_sources(scored.frame["file"], mapping)
    return sources.source_audit(scored.truth, scored.probabilities, found, classes, scored.frame["label"], found)


def summary_lines(metrics: dict, run: Run, out: EvalDir) -> list[str]:
    """What the console shows after an external evaluation."""
    described, scored = metrics["external"], metrics["splits"][SCORED]
    clinical = metrics["clinical"]
    lines = [f"external validation of {run.model_path} on {described['data']} -> {out.path} "
             f"(open {out.report} in a browser)",
             f"  {scored['images']} images scored ({', '.join(f'{k} {v}' for k, v in described['per_class'].items())})"
             f"; accuracy {scored['accuracy']:.4f}, loss {scored['loss']:.4f}"]
    if len(clinical["averaged_over"]) < len(metrics["classes"]):
        lines.append(f"  the folder has {len(clinical['averaged_over'])} of the model's {len(metrics['classes'])} "
                     f"classes: per-class metrics and macro averages cover {', '.join(clinical['averaged_over'])}")
    lines.append("  95 % bootstrap intervals: " + "; ".join(
        f"{label} {format_interval(clinical[group][name], missing='undefined')}" for label, group, name in HEADLINE))
    if "calibration" in metrics:
        c = metrics["calibration"]
        lines.append(f"  calibration: ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f} with the run's temperature "
                     f"{c['temperature']:.3f} (fitted on its validation split, not refitted here)")
    else:
        lines.append("  calibration: the run has no temperature for this model (run cxr evaluate RUN first)")
    lines += operating_points.summary_lines(metrics.get("operating_points"))
    return lines + source_lines(metrics["sources"], SCORED)
