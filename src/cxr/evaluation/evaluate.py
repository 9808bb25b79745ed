"""Evaluate a finished run: loss and accuracy per split, test predictions and reports.

Writes into `<run>/eval/` (or `eval-2/`, `eval-3/`... when re-evaluated, so that an earlier
evaluation is never overwritten).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, log_loss

from cxr import files
from cxr.config import ENVIRONMENT_KEY
from cxr.data.batches import label_indices
from cxr.data.cache import load_split_images, resolve_cache_dir
from cxr.data.split import SPLITS, read_split
from cxr.environment import software
from cxr.errors import DatasetError
from cxr.evaluation import calibration, sources
from cxr.evaluation.metrics import clinical_metrics, format_interval, per_class_frame
from cxr.evaluation.plots import (
    plot_confusion_matrix,
    plot_gradcam_grid,
    plot_reliability,
    plot_roc_pr,
    plot_training_curves,
)
from cxr.evaluation.report import write_report
from cxr.model import load_model, predict_array
from cxr.run import CONFIG_FILE, now, training_summary


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """The run's settings from its config.yaml (without the `environment` it records)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {path.name} is missing")
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    settings.pop(ENVIRONMENT_KEY, None)
    return settings


def cross_entropy(targets: np.ndarray, probabilities: np.ndarray, n_classes: int) -> float:
    """Mean categorical cross-entropy of the predictions (the data term of the training loss)."""
    return float(log_loss(targets, np.clip(probabilities, 1e-7, 1.0), labels=list(range(n_classes))))


def predictions_frame(split: pd.DataFrame, probabilities: np.ndarray, classes: list[str]) -> pd.DataFrame:
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
    """Evaluate `<run>/model.keras` on the run's splits (train, val, test); return metrics.

    `images` may hold already decoded split arrays (training passes them) to avoid decoding twice.
    An interrupted run is evaluated into `eval-interrupted/` on val and test only, to stop soon.
    Clinical metrics with bootstrap intervals (`bootstrap` resamples, default the run's setting) and
    calibration are computed on the test split; the temperature is fitted on val.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    classes = list(config["classes"])
    model_path = run_dir / "model.keras"
    model = load_model(model_path)
    size = int(model.input_shape[1])
    batch_size = batch_size or max(32, int(config.get("batch_size", 16)))
    split = read_split(run_dir / "split")
    root = Path(split.root or config["data"])
    if not images and not root.is_dir():
        raise DatasetError(f"the dataset folder of {run_dir} is not found: {root}"
                           + (" (recorded relative to the folder the run was trained from: run cxr from there)"
                              if not root.is_absolute() else ""))
    out = files.new_numbered_dir(run_dir / out_name)  # eval/, then eval-2/...: earlier results stay

    metrics = {"run": run_dir.name, "model": model_path.name, "classes": classes, "evaluated": now(),
               "software": software(), "training": training_summary(run_dir), "splits": {}}
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in splits:
        frame = split.frames[name]
        if len(frame) == 0:
            continue
        array = images[name] if images and name in images else load_split_images(
            resolve_cache_dir(config.get("cache_dir", "auto"), run_dir.parent), config["data"], frame["file"],
            size, config.get("workers", 0), progress, desc=f"decode {name}", echo=echo)
        probabilities = predict_array(model, array, batch_size)
        truth = label_indices(frame["label"], classes)
        metrics["splits"][name] = {
            "images": int(len(frame)),
            "loss": cross_entropy(truth, probabilities, len(classes)),
            "accuracy": float(accuracy_score(truth, probabilities.argmax(axis=1))),
        }
        files.write_csv(out / f"predictions_{name}.csv", predictions_frame(frame, probabilities, classes))
        outputs[name] = truth, probabilities
        if name == "test":
            test_images = array

    if "test" in outputs:
        test_truth, test_probabilities = outputs["test"]
        test_predicted = test_probabilities.argmax(axis=1)
        labels = list(range(len(classes)))
        matrix = confusion_matrix(test_truth, test_predicted, labels=labels)
        files.write_csv(out / "confusion_matrix.csv",
                        pd.DataFrame(matrix, index=pd.Index(classes, name="true \\ predicted"), columns=classes),
                        index=True)
        plot_confusion_matrix(matrix, classes, out / "confusion_matrix.png")
        report_args = dict(labels=labels, target_names=classes, zero_division=0)
        files.write_text(out / "classification_report.txt",
                         classification_report(test_truth, test_predicted, digits=4, **report_args))
        report = classification_report(test_truth, test_predicted, output_dict=True, **report_args)
        files.write_csv(out / "classification_report.csv", report_frame(report, len(test_truth)))
        resamples = int(config.get("bootstrap", 1000) if bootstrap is None else bootstrap)
        seed = int(config.get("bootstrap_seed", 0) if bootstrap_seed is None else bootstrap_seed)
        echo(f"test metrics with {resamples} stratified bootstrap resamples...")
        metrics["clinical"] = {"split": "test", **clinical_metrics(test_truth, test_probabilities, classes,
                                                                   resamples, seed)}
        files.write_csv(out / "metrics_per_class.csv", per_class_frame(metrics["clinical"]))
        if "val" in outputs:
            metrics["calibration"] = _calibrate(model_path, outputs["val"], outputs["test"], out)
        metrics["sources"] = _audit_sources(split, split.root or config["data"], classes, outputs["test"], out)
        plot_roc_pr(test_truth, test_probabilities, classes, out / "roc_pr.png")
        _gradcam_grid(model, test_images, split.frames["test"], outputs["test"], classes, out / "gradcam_test.png")
    history_path = run_dir / "history.csv"
    if history_path.is_file() and len(history := pd.read_csv(history_path)):
        plot_training_curves(history, out / "training_curves.png")
    files.write_json(out / "metrics.json", metrics)
    write_report(metrics, config, split, out)

    echo(f"evaluation of {model_path} -> {out} (open {out / 'report.html'} in a browser)")
    for name, values in metrics["splits"].items():
        echo(f"  {name:<5}  {values['images']:>6} images  loss {values['loss']:.4f}  "
             f"accuracy {values['accuracy']:.4f}")
    if "clinical" in metrics:
        echo("  test, 95 % bootstrap intervals: " + "; ".join(
            f"{label} {format_interval(entry, missing='undefined')}" for label, entry in (
                ("accuracy", metrics["clinical"]["overall"]["accuracy"]),
                ("balanced accuracy", metrics["clinical"]["overall"]["balanced_accuracy"]),
                ("macro F1", metrics["clinical"]["macro"]["f1"]),
                ("macro ROC AUC", metrics["clinical"]["macro"]["roc_auc"]))))
    if "sources" in metrics:
        audit = metrics["sources"]
        echo("  sources: " + ("; ".join(f"{name} {v['images']} test images, accuracy {v['accuracy']:.3f}"
                                        for name, v in audit["per_source"].items())
                              if audit["available"] else audit["note"]))
        for warning in audit.get("warnings", []):
            echo(f"  warning: {warning}")
    if "calibration" in metrics:
        c = metrics["calibration"]
        echo(f"  calibration: test ECE {c['test_ece_before']:.3f} -> {c['test_ece_after']:.3f} with temperature "
             f"{c['temperature']:.3f} fitted on val (saved in {out / calibration.CALIBRATION_FILE})")
    metrics["eval_dir"] = str(out)
    return metrics


def _audit_sources(split, root: str, classes: list[str], test: tuple[np.ndarray, np.ndarray], out: Path) -> dict:
    mapping = sources.read_sources(root)
    if not mapping:
        return {"available": False,
                "note": f"no <Class>.metadata.xlsx files in {root}; per-source metrics need them (the Kaggle "
                        "download has them beside the class folders)"}
    everything = pd.concat(list(split.frames.values()))
    audit = sources.source_audit(*test, sources.assign_sources(split.frames["test"]["file"], mapping), classes,
                                 everything["label"], sources.assign_sources(everything["file"], mapping))
    files.write_csv(out / "metrics_per_source.csv", sources.per_source_frame(audit))
    return audit


def _gradcam_grid(model, images: np.ndarray, frame: pd.DataFrame, test: tuple[np.ndarray, np.ndarray],
                  classes: list[str], path: Path, per_kind: int = 4) -> Path:
    """Grad-CAM of the most confident right and wrong test predictions, four of each at most."""
    from cxr.inference.explain import gradcam, overlay

    truth, probabilities = test
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    order = np.argsort(-confidence)
    chosen = ([i for i in order if predicted[i] == truth[i]][:per_kind]
              + [i for i in order if predicted[i] != truth[i]][:per_kind])
    heat, _ = gradcam(model, np.asarray(images[sorted(chosen)]))
    maps = dict(zip(sorted(chosen), heat, strict=True))
    panels = [(overlay(np.asarray(images[i])[..., 0], maps[i]),
               f"{'right' if predicted[i] == truth[i] else 'WRONG'}: {classes[truth[i]]} -> {classes[predicted[i]]} "
               f"{confidence[i]:.2f}\n{Path(frame['file'].iloc[i]).name}") for i in chosen]
    return plot_gradcam_grid(panels, path)


def _calibrate(model_path: Path, val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
               out: Path) -> dict:
    """Fit the temperature on val, keep it in the evaluation's folder, and measure test calibration before
    and after."""
    temperature = calibration.fit_temperature(*val)
    scaled = calibration.apply_temperature(test[1], temperature)
    before = calibration.reliability_bins(test[0], test[1])
    after = calibration.reliability_bins(test[0], scaled)
    record = {
        "temperature": temperature, "fitted_on": "val", "val_images": int(len(val[0])),
        "model_sha256": files.sha256(model_path),
        "test_ece_before": calibration.expected_calibration_error(test[0], test[1]),
        "test_ece_after": calibration.expected_calibration_error(test[0], scaled),
        "test_nll_before": calibration.negative_log_likelihood(test[0], test[1]),
        "test_nll_after": calibration.negative_log_likelihood(test[0], scaled),
        "bins": len(before),
    }
    calibration.save_temperature(out, record)
    files.write_csv(out / "reliability.csv", pd.concat([before.assign(probabilities="model"),
                                                        after.assign(probabilities="calibrated")]))
    plot_reliability(before, after, (record["test_ece_before"], record["test_ece_after"]), temperature,
                     out / "reliability.png")
    return record
