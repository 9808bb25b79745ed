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
from cxr.evaluation import calibration, sources
from cxr.evaluation.metrics import HEADLINE, clinical_metrics, format_interval, per_class_frame
from cxr.evaluation.plots import (
    plot_confusion_matrix,
    plot_gradcam_grid,
    plot_reliability,
    plot_roc_pr,
    plot_training_curves,
)
from cxr.evaluation.report import write_report
from cxr.model import load_model, predict_array
from cxr.run import EvalDir, Run, now

__all__ = ["Predictions", "compute_metrics", "cross_entropy", "evaluate_run", "predictions_frame", "report_frame"]


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
) -> dict:
    """Evaluate a run's model.keras on its splits into a new evaluation folder.

    Clinical metrics with bootstrap intervals, calibration (the temperature fitted on val), the
    per-source audit and the figures are computed on the test split.

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

    Returns:
        The metrics written to metrics.json, with `eval_dir` added.

    Raises:
        DatasetError: the dataset folder or one of its images cannot be read.
    """
    run = Run(run_dir)
    config, split = run.config(), run.split()
    _check_dataset(run, split, config, images)
    model = load_model(run.model_path)
    predictions, test_images = predict_splits(run, model, config, split, splits=splits, images=images,
                                              batch_size=batch_size, progress=progress, echo=echo)
    resamples = config.bootstrap if bootstrap is None else int(bootstrap)
    seed = config.bootstrap_seed if bootstrap_seed is None else int(bootstrap_seed)
    if "test" in predictions:
        echo(f"test metrics with {resamples} stratified bootstrap resamples...")
    metrics = {"run": run.path.name, "model": run.model_path.name, "classes": config.classes, "evaluated": now(),
               "software": record(), "training": run.training_summary(),
               **compute_metrics(predictions, config.classes, resamples=resamples, seed=seed,
                                 model_sha256=files.sha256(run.model_path),
                                 source_map=sources.read_sources(split.root or config.data), split=split,
                                 root=split.root or config.data)}
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
                   echo) -> tuple[dict[str, Predictions], np.ndarray | None]:
    """Each non-empty split's predictions, and the test images (for the Grad-CAM figure)."""
    size = int(model.input_shape[1])
    batch_size = batch_size or max(32, config.batch_size)
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
        predictions[name] = Predictions(frame, label_indices(frame["label"], config.classes),
                                        predict_array(model, array, batch_size))
        if name == "test":
            test_images = array
    return predictions, test_images


def cross_entropy(targets: np.ndarray, probabilities: np.ndarray, n_classes: int) -> float:
    """Mean categorical cross-entropy of the predictions (the data term of the training loss)."""
    return float(log_loss(targets, np.clip(probabilities, 1e-7, 1.0), labels=list(range(n_classes))))


def compute_metrics(predictions: dict[str, Predictions], classes: list[str], *, resamples: int, seed: int,
                    model_sha256: str, source_map: dict[str, str], split: Split, root: str) -> dict:
    """Every number of an evaluation, as JSON-ready data: loss and accuracy per split and, with a test
    split, the clinical metrics, the calibration (temperature fitted on val) and the per-source audit.
    """
    n_classes = len(classes)
    metrics: dict = {"splits": {name: {"images": int(len(p.truth)),
                                       "loss": cross_entropy(p.truth, p.probabilities, n_classes),
                                       "accuracy": float(accuracy_score(p.truth, p.probabilities.argmax(axis=1)))}
                                for name, p in predictions.items()}}
    if "test" not in predictions:
        return metrics
    test = predictions["test"]
    metrics["clinical"] = {"split": "test", **clinical_metrics(test.truth, test.probabilities, classes, resamples,
                                                               seed)}
    if "val" in predictions:
        val = predictions["val"]
        metrics["calibration"] = calibration.calibration_record(
            (val.truth, val.probabilities), (test.truth, test.probabilities), model_sha256)
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
    """file, true_label, predicted_label, correct and p_<class> for each image of a split."""
    predicted = probabilities.argmax(axis=1)
    frame = pd.DataFrame({
        "file": split["file"].to_numpy(),
        "true_label": split["label"].to_numpy(),
        "predicted_label": np.array(classes)[predicted],
        "correct": split["label"].to_numpy() == np.array(classes)[predicted],
    })
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
        _write_test_files(out, metrics, predictions, classes, model, test_images)
    history = run.history()
    if history is not None and len(history):
        plot_training_curves(history, out.figure("training_curves"))
    files.write_json(out.metrics, metrics)
    write_report(metrics, config.to_dict(), split, out)


def _write_test_files(out: EvalDir, metrics: dict, predictions: dict[str, Predictions], classes: list[str],
                      model: keras.Model, test_images: np.ndarray) -> None:
    test = predictions["test"]
    predicted = test.probabilities.argmax(axis=1)
    labels = list(range(len(classes)))
    matrix = confusion_matrix(test.truth, predicted, labels=labels)
    files.write_csv(out.table("confusion_matrix"),
                    pd.DataFrame(matrix, index=pd.Index(classes, name="true \\ predicted"), columns=classes),
                    index=True)
    plot_confusion_matrix(matrix, classes, out.figure("confusion_matrix"))
    report_args = dict(labels=labels, target_names=classes, zero_division=0)
    files.write_text(out.classification_report_text,
                     classification_report(test.truth, predicted, digits=4, **report_args))
    report = classification_report(test.truth, predicted, output_dict=True, **report_args)
    files.write_csv(out.table("classification_report"), report_frame(report, len(test.truth)))
    files.write_csv(out.table("metrics_per_class"), per_class_frame(metrics["clinical"]))
    if "calibration" in metrics:
        record = metrics["calibration"]
        calibration.save_temperature(out.calibration, record)
        before, after = calibration.reliability_tables(test.truth, test.probabilities, record["temperature"])
        files.write_csv(out.table("reliability"), pd.concat([before.assign(probabilities="model"),
                                                             after.assign(probabilities="calibrated")]))
        plot_reliability(before, after, (record["test_ece_before"], record["test_ece_after"]), record["temperature"],
                         out.figure("reliability"))
    if metrics["sources"]["available"]:
        files.write_csv(out.table("metrics_per_source"), sources.per_source_frame(metrics["sources"]))
    plot_roc_pr(test.truth, test.probabilities, classes, out.figure("roc_pr"))
    plot_gradcam_grid(gradcam_panels(model, test_images, test, classes), out.figure("gradcam"))


# Summarising -----------------------------------------------------------------------------------------

def summary_lines(metrics: dict, run: Run, out: EvalDir) -> list[str]:
    """What the console shows after an evaluation."""
    lines = [f"evaluation of {run.model_path} -> {out.path} (open {out.report} in a browser)"]
    lines += [f"  {name:<5}  {values['images']:>6} images  loss {values['loss']:.4f}  "
              f"accuracy {values['accuracy']:.4f}" for name, values in metrics["splits"].items()]
    if "clinical" in metrics:
        lines.append("  test, 95 % bootstrap intervals: " + "; ".join(
            f"{label} {format_interval(metrics['clinical'][group][name], missing='undefined')}"
            for label, group, name in HEADLINE))
    if "sources" in metrics:
        audit = metrics["sources"]
        lines.append("  sources: " + ("; ".join(f"{name} {v['images']} test images, accuracy {v['accuracy']:.3f}"
                                                for name, v in audit["per_source"].items())
                                      if audit["available"] else audit["note"]))
        lines += [f"  warning: {warning}" for warning in audit.get("warnings", [])]
    if "calibration" in metrics:
        c = metrics["calibration"]
        lines.append(f"  calibration: test ECE {c['test_ece_before']:.3f} -> {c['test_ece_after']:.3f} with "
                     f"temperature {c['temperature']:.3f} fitted on val (saved in {out.calibration})")
    return lines
