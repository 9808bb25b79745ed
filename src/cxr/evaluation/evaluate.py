"""Evaluate a finished run: compute, then write, then summarise.

`evaluate_run` predicts every split once, computes every number as plain data (`compute_metrics`,
pure functions of labels and probabilities), writes them and the figures into a new evaluation folder
(`eval/`, `eval-2/`, ...: an earlier evaluation is never overwritten), and prints a short summary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, log_loss

from cxr import files
from cxr.backend import enable_compilation_cache
from cxr.config import Config
from cxr.data.batches import label_indices
from cxr.data.cache import load_split_images, resolve_cache_dir
from cxr.data.split import SPLITS, Split
from cxr.environment import record
from cxr.errors import DatasetError
from cxr.evaluation import calibration, operating_points, sources
from cxr.evaluation.metrics import HEADLINE, clinical_metrics, format_interval, per_class_frame
from cxr.evaluation.model_card import write_model_card
from cxr.evaluation.plots import (
    plot_confusion_matrix,
    plot_gradcam_grid,
    plot_reliability,
    plot_roc_pr,
    plot_training_curves,
)
from cxr.evaluation.report import write_report
from cxr.inference.tta import check_tta, with_tta
from cxr.model import load_model, predict_array
from cxr.run import EvalDir, Run, now

__all__ = ["batch_predictor", "Predictions", "compute_metrics", "cross_entropy", "evaluate_run", "predictions_frame",
           "report_frame", "source_lines", "write_scored_files"]


@dataclass(frozen=True)
class Predictions:
    """One split's files and labels (`frame`), label indices and predicted probabilities."""

    frame: pd.DataFrame
    truth: np.ndarray
    probabilities: np.ndarray


def evaluate_run(
    run_dir: str | os.PathLike,
    images: dict[str, np.ndarray] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    echo=print,
    out_name: str = "eval",
    splits: tuple[str, ...] = SPLITS,
    bootstrap: int | None = None,
    bootstrap_seed: int | None = None,
    tta: str | None = None,
    target_sensitivity: str | dict[str, float] | None = None,
) -> dict:
    """Evaluate a run's model.keras on its splits into a new evaluation folder.

    Clinical metrics with bootstrap intervals, calibration (the temperature fitted on val), operating
    points (thresholds chosen on val), the per-source audit and the figures are computed on the test split.

    Args:
        run_dir: the run folder.
        images: already decoded split arrays (training passes them), to avoid decoding twice.
        batch_size: images per prediction call (default max(32, the run's batch size)).
        progress: show decoding progress bars.
        echo: where messages go.
        out_name: `eval` (then eval-2, ...), or `eval-interrupted` for a stopped training.
        splits: which splits to evaluate (a stopped training evaluates val and test only, to stop soon).
        bootstrap: stratified bootstrap resamples for the intervals (default: the run's setting; 0: none).
        bootstrap_seed: their seed (default: the run's setting).
        tta: "flip" to average each image's probabilities with its mirror image's (default none).
        target_sensitivity: per-class sensitivity targets for the operating points, as a dict or as
            "COVID=0.97,..." (default 0.95 for every class but Normal).

    Returns:
        The metrics written to metrics.json, with `eval_dir` added.

    Raises:
        DatasetError: the dataset folder or one of its images cannot be read.
        UserError: an unknown `tta` or a bad `target_sensitivity`.
    """
    run = Run(run_dir)
    config, split = run.config(), run.split()
    tta = check_tta(tta)
    targets = (dict(target_sensitivity) if isinstance(target_sensitivity, dict)
               else operating_points.parse_targets(target_sensitivity, config.classes))
    _check_dataset(run, split, config, images)
    model = load_model(run.model_path)
    predictions, test_images = predict_splits(run, model, config, split, splits=splits, images=images,
                                              batch_size=batch_size, progress=progress, echo=echo, tta=tta)
    resamples = config.bootstrap if bootstrap is None else int(bootstrap)
    seed = config.bootstrap_seed if bootstrap_seed is None else int(bootstrap_seed)
    if "test" in predictions:
        echo(f"test metrics with {resamples} stratified bootstrap resamples...")
    model_sha256 = files.sha256(run.model_path)
    metrics = {"run": run.path.name, "model": run.model_path.name, "classes": config.classes, "evaluated": now(),
               "tta": tta, "software": record(), "training": run.training_summary(),
               **compute_metrics(predictions, config.classes, resamples=resamples, seed=seed,
                                 model_sha256=model_sha256,
                                 source_map=sources.read_sources(split.root or config.data), split=split,
                                 root=split.root or config.data, targets=targets, tta=tta)}
    out = run.new_eval_dir(out_name)
    write_evaluation(out, metrics, predictions, run=run, split=split, config=config, model=model,
                     test_images=test_images)
    for line in summary_lines(metrics, run, out):
        echo(line)
    return {**metrics, "eval_dir": str(out.path)}


# Computing -------------------------------------------------------------------------------------------

def _check_dataset(run: Run, split: Split, config: Config, images: dict[str, np.ndarray] | None) -> None:
    root = Path(split.root or config.data)
    if not images and not root.is_dir():
        raise DatasetError(f"the dataset folder of {run} is not found: {root}"
                           + (" (recorded relative to the folder the run was trained from: run cxr from there)"
                              if not root.is_absolute() else ""))


def predict_splits(run: Run, model: keras.Model, config: Config, split: Split, *, splits: tuple[str, ...],
                   images: dict[str, np.ndarray] | None, batch_size: int | None, progress: bool,
                   echo, tta: str = "none") -> tuple[dict[str, Predictions], np.ndarray | None]:
    """Each non-empty split's predictions, and the test images (for the Grad-CAM figure)."""
    size = int(model.input_shape[1])
    predict = batch_predictor(model, config, batch_size, tta)
    cache_dir = resolve_cache_dir(config.cache_dir, run.path.parent)
    if cache_dir is not None:  # JAX: load the predict programs training compiled instead of compiling them
        enable_compilation_cache(cache_dir / "xla")
    predictions, test_images = {}, None
    for name in splits:
        frame = split.frames[name]
        if len(frame) == 0:
            continue
        array = images[name] if images and name in images else load_split_images(
            cache_dir, config.data, frame["file"], size, config.workers, progress, desc=f"decode {name}", echo=echo)
        predictions[name] = Predictions(frame, label_indices(frame["label"], config.classes), predict(array))
        if name == "test":
            test_images = array
    return predictions, test_images


def batch_predictor(model: keras.Model, config: Config, batch_size: int | None, tta: str):
    """Probabilities for a uint8 array, `batch_size` images a call (default max(32, the run's batch)),
    averaged with the mirror images' under tta "flip": how every evaluation predicts.
    """
    size = batch_size or max(32, config.batch_size)
    return with_tta(lambda images: predict_array(model, images, size), tta)


def cross_entropy(targets: np.ndarray, probabilities: np.ndarray, n_classes: int) -> float:
    """Mean categorical cross-entropy of the predictions (the data term of the training loss)."""
    return float(log_loss(targets, np.clip(probabilities, 1e-7, 1.0), labels=list(range(n_classes))))


def compute_metrics(predictions: dict[str, Predictions], classes: list[str], *, resamples: int, seed: int,
                    model_sha256: str, source_map: dict[str, str], split: Split, root: str,
                    targets: dict[str, float] | None = None, tta: str = "none") -> dict:
    """Every number of an evaluation, as JSON-ready data: loss and accuracy per split and, with a test
    split, the clinical metrics, the calibration (temperature fitted on val), the operating points
    (thresholds chosen on val for `targets`, then measured on test) and the per-source audit.
    """
    n_classes = len(classes)
    metrics: dict = {"splits": {name: {"images": int(len(p.truth)),
                                       "loss": cross_entropy(p.truth, p.probabilities, n_classes),
                                       "accuracy": float(accuracy_score(p.truth, p.probabilities.argmax(axis=1)))}
                                for name, p in predictions.items()}}
    if "test" not in predictions:
        return metrics
    test = predictions["test"]
    copies = test.frame["group"].to_numpy() if "group" in test.frame else None  # resampled together
    metrics["clinical"] = {"split": "test", **clinical_metrics(test.truth, test.probabilities, classes, resamples,
                                                               seed, copies=copies)}
    if "val" in predictions:
        val = predictions["val"]
        metrics["calibration"] = {**calibration.calibration_record(
            (val.truth, val.probabilities), (test.truth, test.probabilities), model_sha256), "tta": tta}
        if targets:
            chosen = {**operating_points.choose_thresholds(val.truth, val.probabilities, classes, targets),
                      "model_sha256": model_sha256, "tta": tta}
            metrics["operating_points"] = {
                "chosen": chosen, "scored_on": "test",
                "results": operating_points.evaluate_at_thresholds(test.truth, test.probabilities, classes, chosen,
                                                                   resamples, seed, copies=copies)}
    metrics["sources"] = _source_audit(source_map, split, root, classes, test)
    return metrics


def _source_audit(mapping: dict[str, str], split: Split, root: str, classes: list[str], test: Predictions) -> dict:
    if not mapping:
        return {"available": False,
                "note": f"no <Class>.metadata.xlsx files in {root}; per-source metrics need them (the Kaggle "
                        "download has them beside the class folders)"}
    everything = pd.concat(list(split.frames.values()))
    return sources.source_audit(test.truth, test.probabilities, sources.assign_sources(test.frame["file"], mapping),
                                classes, everything["label"], sources.assign_sources(everything["file"], mapping))


def predictions_frame(split: pd.DataFrame, probabilities: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """file, true_label, predicted_label, correct, group (the split's duplicate group, where it has one) and
    p_<class> for each image of a split. The group lets `cxr compare` resample copies of one radiograph
    together, as the evaluation's own intervals do.
    """
    predicted = probabilities.argmax(axis=1)
    frame = pd.DataFrame({
        "file": split["file"].to_numpy(),
        "true_label": split["label"].to_numpy(),
        "predicted_label": np.array(classes)[predicted],
        "correct": split["label"].to_numpy() == np.array(classes)[predicted],
    })
    if "group" in split:
        frame["group"] = split["group"].to_numpy()
    for i, name in enumerate(classes):
        frame[f"p_{name}"] = probabilities[:, i]
    return frame


def report_frame(report: dict, support: int) -> pd.DataFrame:
    """scikit-learn's report dict as a table; its overall accuracy becomes a row of its own."""
    rows = [{"class": key, **values} for key, values in report.items() if isinstance(values, dict)]
    if "accuracy" in report:
        rows.append({"class": "accuracy", "precision": None, "recall": None,
                     "f1-score": report["accuracy"], "support": support})
    frame = pd.DataFrame(rows, columns=["class", "precision", "recall", "f1-score", "support"])
    return frame.astype({"support": int})


def gradcam_panels(model: keras.Model, images: np.ndarray, test: Predictions, classes: list[str],
                   per_kind: int = 4) -> list[tuple[np.ndarray, str]]:
    """Overlays of the most confident right and wrong test predictions (up to `per_kind` of each), titled."""
    from cxr.inference.explain import gradcam, overlay

    predicted, confidence = test.probabilities.argmax(axis=1), test.probabilities.max(axis=1)
    order = np.argsort(-confidence)
    chosen = ([i for i in order if predicted[i] == test.truth[i]][:per_kind]
              + [i for i in order if predicted[i] != test.truth[i]][:per_kind])
    heat, _ = gradcam(model, np.asarray(images[sorted(chosen)]))
    maps = dict(zip(sorted(chosen), heat, strict=True))
    return [(overlay(np.asarray(images[i])[..., 0], maps[i]),
             f"{'right' if predicted[i] == test.truth[i] else 'WRONG'}: {classes[test.truth[i]]} -> "
             f"{classes[predicted[i]]} {confidence[i]:.2f}\n{Path(test.frame['file'].iloc[i]).name}")
            for i in chosen]


# Writing ---------------------------------------------------------------------------------------------

def write_evaluation(out: EvalDir, metrics: dict, predictions: dict[str, Predictions], *, run: Run, split: Split,
                     config: Config, model: keras.Model, test_images: np.ndarray | None) -> None:
    """Every file of an evaluation folder: tables, figures, metrics.json and report.html."""
    classes = config.classes
    for name, p in predictions.items():
        files.write_csv(out.predictions(name), predictions_frame(p.frame, p.probabilities, classes))
    if "test" in predictions:
        write_scored_files(out, metrics, predictions["test"], classes, model, test_images)
        if "calibration" in metrics:
            calibration.save_temperature(out.calibration, metrics["calibration"])
        if "operating_points" in metrics:
            files.write_json(out.operating_points, metrics["operating_points"]["chosen"])
    history = run.history()
    if history is not None and len(history):
        plot_training_curves(history, out.figure("training_curves"))
    files.write_json(out.metrics, metrics)
    write_report(metrics, config.to_dict(), split, out)
    write_model_card(run, metrics, out)


def write_scored_files(out: EvalDir, metrics: dict, test: Predictions, classes: list[str], model: keras.Model,
                       test_images: np.ndarray) -> None:
    """The tables and figures of the scored set (the test split, or an external folder): confusion matrix,
    classification report, per-class metrics, reliability, operating points, per-source metrics, ROC/PR
    and Grad-CAM.

    Args:
        out: the evaluation folder.
        metrics: compute_metrics' result (or an external evaluation's), for `clinical`, `calibration`,
            `operating_points` and `sources`.
        test: the scored set's predictions.
        classes: the model's classes.
        model: the model (for Grad-CAM).
        test_images: the scored set's images, in the order of `test`.
    """
    present = [k for k, name in enumerate(classes) if name in metrics["clinical"]["per_class"]]
    scored = metrics.get("scored", "test")
    predicted = test.probabilities.argmax(axis=1)
    labels = list(range(len(classes)))
    matrix = confusion_matrix(test.truth, predicted, labels=labels)
    files.write_csv(out.table("confusion_matrix"),
                    pd.DataFrame(matrix, index=pd.Index(classes, name="true \\ predicted"), columns=classes),
                    index=True)
    plot_confusion_matrix(matrix, classes, out.figure("confusion_matrix"), scored)
    report_args = dict(labels=present, target_names=[classes[k] for k in present], zero_division=0)
    files.write_text(out.classification_report_text,
                     classification_report(test.truth, predicted, digits=4, **report_args))
    report = classification_report(test.truth, predicted, output_dict=True, **report_args)
    files.write_csv(out.table("classification_report"), report_frame(report, len(test.truth)))
    files.write_csv(out.table("metrics_per_class"), per_class_frame(metrics["clinical"]))
    if "calibration" in metrics:
        record = metrics["calibration"]
        before, after = calibration.reliability_tables(test.truth, test.probabilities, record["temperature"])
        files.write_csv(out.table("reliability"), pd.concat([before.assign(probabilities="model"),
                                                             after.assign(probabilities="calibrated")]))
        plot_reliability(before, after, calibration.ece_pair(record), record["temperature"],
                         out.figure("reliability"), scored)
    if "operating_points" in metrics:
        files.write_csv(out.table("operating_points"), operating_points.results_frame(metrics["operating_points"]))
    if metrics["sources"]["available"]:
        files.write_csv(out.table("metrics_per_source"), sources.per_source_frame(metrics["sources"]))
    plot_roc_pr(test.truth, test.probabilities, classes, out.figure("roc_pr"), scored)
    plot_gradcam_grid(gradcam_panels(model, test_images, test, classes), out.figure("gradcam"))


# Summarising -----------------------------------------------------------------------------------------

def source_lines(audit: dict, scored: str) -> list[str]:
    """The per-source audit's console lines: accuracy per source, then its warnings."""
    lines = ["  sources: " + ("; ".join(f"{name} {v['images']} {scored} images, accuracy {v['accuracy']:.3f}"
                                     for name, v in audit["per_source"].items())
                          if audit["available"] else audit["note"])]
    return lines + [f"  warning: {warning}" for warning in audit.get("warnings", [])]


def summary_lines(metrics: dict, run: Run, out: EvalDir) -> list[str]:
    """What the console shows after an evaluation."""
    tta = "" if metrics.get("tta", "none") == "none" else ", test-time flip"
    lines = [f"evaluation of {run.model_path}{tta} -> {out.path} (open {out.report} in a browser)"]
    lines += [f"  {name:<5}  {values['images']:>6} images  loss {values['loss']:.4f}  "
              f"accuracy {values['accuracy']:.4f}" for name, values in metrics["splits"].items()]
    if "clinical" in metrics:
        lines.append("  test, 95 % bootstrap intervals: " + "; ".join(
            f"{label} {format_interval(metrics['clinical'][group][name], missing='undefined')}"
            for label, group, name in HEADLINE))
    if "sources" in metrics:
        lines += source_lines(metrics["sources"], "test")
    if "calibration" in metrics:
        c = metrics["calibration"]
        lines.append(f"  calibration: test ECE {c['test_ece_before']:.3f} -> {c['test_ece_after']:.3f} with "
                     f"temperature {c['temperature']:.3f} fitted on val (saved in {out.calibration})")
    lines += operating_points.summary_lines(metrics.get("operating_points"))
    return lines
