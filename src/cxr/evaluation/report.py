"""One self-contained HTML page per evaluation: every number, figure and warning, readable offline.

Images are embedded as data URIs and the page loads nothing from elsewhere. A small inline script
records on <body> how many images decoded (`data-images-loaded` of `data-images-total`), so a
headless browser can check the page without a screenshot.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd
import yaml

from cxr import files
from cxr.evaluation.calibration import ece_pair
from cxr.evaluation.metrics import HEADLINE, PER_CLASS, format_interval, unit_sentence
from cxr.run import EvalDir

__all__ = ["build_report", "write_report"]

FIGURES = [
    ("training_curves", "Training curves: loss, accuracy and learning rate per epoch"),
    ("confusion_matrix", "Confusion matrix of the {scored} set"),
    ("roc_pr", "ROC and precision-recall curves per class ({scored} set)"),
    ("reliability", "Reliability diagram before and after temperature scaling ({scored} set)"),
    ("gradcam", "Grad-CAM of the most confident right and wrong {scored} predictions"),
]
METRIC_NAMES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "precision": "Precision", "f1": "F1",
                "roc_auc": "ROC AUC", "pr_auc": "PR AUC"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
.notice { border: 2px solid #b00; background: #fff0f0; padding: 0.8em 1em; font-weight: 600; }
.warning { border-left: 4px solid #d80; background: #fff8e6; padding: 0.4em 0.8em; margin: 0.4em 0; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.headline td { font-size: 1.1em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
.ci { color: #666; font-size: 0.85em; }
"""
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(loaded));
  document.body.setAttribute("data-images-total", String(images.length));
});
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _interval(entry: dict | None) -> str:
    return format_interval(entry, interval=' <span class="ci">({low}&ndash;{high})</span>')


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _dataset_section(split) -> str:
    frames = {name: frame for name, frame in split.frames.items()}
    counts = pd.DataFrame({name: frame["label"].value_counts() for name, frame in frames.items()}).fillna(0)
    counts = counts.astype(int)
    counts["all"] = counts.sum(axis=1)
    rows = [[_e(label), *(str(v) for v in row)] for label, row in counts.iterrows()]
    rows.append(["<b>total</b>", *(f"<b>{v}</b>" for v in counts.sum())])
    text = "<h2>Dataset</h2>" + _table(["class", *counts.columns], rows)
    groups = split.duplicates["group"].nunique() if len(split.duplicates) else 0
    text += (f"<p>{len(split.skipped)} file(s) skipped as unusable; {len(split.duplicates)} image(s) in "
             f"{groups} group(s) of copies, each group kept within one split.</p>")
    if len(split.skipped):
        shown = split.skipped.head(20)
        text += _table(["file", "reason"], [[_e(r.file), _e(r.reason)] for r in shown.itertuples()])
        if len(split.skipped) > 20:
            text += f"<p>... and {len(split.skipped) - 20} more in split/skipped.csv.</p>"
    return text


def _title(metrics: dict) -> str:
    if metrics.get("kind") == "external":
        return f"cxr external validation: {metrics['external']['name']} (run {metrics['run']})"
    return f"cxr evaluation: {metrics['run']}"


def _external_section(metrics: dict) -> str:
    """Where the images came from, what was left out and why, and what the numbers cover."""
    described, clinical = metrics["external"], metrics["clinical"]
    overlap = described["overlap"]
    text = (f"<p>The model of run {_e(metrics['run'])} on {described['images_found']} labelled images from "
            f"<code>{_e(described['data'])}</code>, which are not part of the run's split. "
            f"{described['unreadable']} unreadable file(s) left out (skipped.csv).</p>"
            f'<p class="{"warning" if overlap["found"] else ""}">Leakage check: {_e(overlap["summary"])}.</p>')
    if len(clinical["averaged_over"]) < len(metrics["classes"]):
        text += (f'<p class="warning">The folder has {len(clinical["averaged_over"])} of the model\'s '
                 f'{len(metrics["classes"])} classes: per-class metrics and macro averages cover '
                 f'{_e(", ".join(clinical["averaged_over"]))} only; predictions of the other classes count as '
                 "errors.</p>")
    rows = [[_e(label), str(n)] for label, n in described["per_class"].items()]
    return text + _table(["class", "images scored"], rows)


def _operating_points_section(block: dict | None) -> str:
    """Per-class thresholds chosen on validation and what they give on the scored set."""
    if not block:
        return ""
    chosen, scored = block["chosen"], block["scored_on"]
    rows = []
    for name, point in chosen["classes"].items():
        result = block["results"]["classes"].get(name)
        threshold = "n/a" if point["threshold"] is None else f"{point['threshold']:.3f}"
        on_val = ("n/a" if point["sensitivity"] is None
                  else f"{point['sensitivity']:.3f} of {point['positives']}")
        measured = ([_interval(result[m]) if result[m]["value"] is not None else "undefined"
                     for m in ("sensitivity", "specificity", "ppv", "npv")] if result else ["", "", "", ""])
        rows.append([_e(name), f"{point['target_sensitivity']:.2f}", threshold, on_val, *measured])
    notes = [f"{name}: {point['note']}" for name, point in chosen["classes"].items() if point.get("note")]
    notes.append(block.get("note"))
    return (f"<h2>Operating points ({_e(scored)} set)</h2><p>Each class's threshold is {_e(chosen['rule'])}. "
            f"Sensitivity, specificity, PPV and NPV are then measured on the {_e(scored)} set, one class against "
            "the rest (an image can be positive for several classes), with 95 % bootstrap intervals.</p>"
            + "".join(f'<p class="warning">{_e(note)}</p>' for note in notes if note)
            + _table(["class", "target sensitivity", "threshold", "sensitivity on validation (positives)",
                      "sensitivity", "specificity", "PPV", "NPV"], rows))


def build_report(metrics: dict, config: dict, split, eval_dir: EvalDir) -> str:
    """The page's HTML for an evaluation whose figures are already written to `eval_dir`.

    Args:
        metrics: the evaluation's metrics.json content (an external one has `kind: external`).
        config: the run's settings.
        split: the run's split (its dataset section), or None for an external evaluation.
        eval_dir: the folder with the figures.

    Returns:
        The HTML text.
    """
    scored = metrics.get("scored", "test")
    parts = [f"<h1>{_e(_title(metrics))}</h1>",
             '<p class="notice">Research use only. This is not a medical device and must not be used for '
             "diagnosis or treatment decisions.</p>"]
    if metrics.get("kind") == "external":
        parts.append(_external_section(metrics))
    clinical = metrics.get("clinical")
    if clinical:
        calibration = metrics.get("calibration")
        headline = [[label[0].upper() + label[1:], _interval(clinical[group][name])] for label, group, name in HEADLINE]
        if calibration:
            before, after = ece_pair(calibration)
            refit = "" if "test_ece_before" in calibration else ", the run's, not refitted on these images"
            headline.append(["Expected calibration error", f"{before:.3f} &rarr; {after:.3f} (temperature "
                             f"{calibration['temperature']:.3f}{refit})"])
        boot = clinical["bootstrap"]
        tta = "" if metrics.get("tta", "none") == "none" else (" Probabilities are the mean over each image and its "
                                                                "mirror image (test-time flip).")
        parts += [f"<h2>{_e(scored.capitalize())} set: {metrics['splits'][scored]['images']} images</h2>",
                  f"<p>95 % intervals from {boot['resamples']} stratified bootstrap resamples (seed "
                  f"{boot['seed']}).{unit_sentence(boot)}{tta}</p>",
                  _table(["metric", "value (95 % CI)"], headline, "headline")]
    parts.append(_operating_points_section(metrics.get("operating_points")))
    audit = metrics.get("sources")
    if audit:
        parts.append("<h2>Sources</h2>")
        if not audit["available"]:
            parts.append(f"<p>{_e(audit['note'])}</p>")
        else:
            parts += [f'<p class="warning">{_e(w)}</p>' for w in audit["warnings"]]
            parts.append(_table(["source", f"{scored} images", "accuracy"],
                                [[_e(s), str(v["images"]), f"{v['accuracy']:.3f}"]
                                 for s, v in audit["per_source"].items()]))
            parts.append(_table(["class", "source", "images", "sensitivity"],
                                [[_e(r["class"]), _e(r["source"]), str(r["images"]), f"{r['sensitivity']:.3f}"]
                                 for r in audit["per_class_source"]]))
    if clinical:
        rows = [[_e(label), str(values["support"]), *(_interval(values[m]) for m in PER_CLASS)]
                for label, values in clinical["per_class"].items()]
        rows += [[f"<i>{kind} average</i>", "", *(_interval(clinical[kind][m]) for m in PER_CLASS)]
                 for kind in ("macro", "weighted")]
        parts += [f"<h2>Per class ({_e(scored)} set)</h2>",
                  _table(["class", "support", *(METRIC_NAMES[m] for m in PER_CLASS)], rows)]
    parts.append("<h2>Loss and accuracy per split</h2>" + _table(
        ["split", "images", "loss", "accuracy"],
        [[_e(name), str(v["images"]), f"{v['loss']:.4f}", f"{v['accuracy']:.4f}"]
         for name, v in metrics["splits"].items()]))
    parts.append("<h2>Figures</h2>")
    parts += [_image(eval_dir.figure(name), caption.format(scored=scored)) for name, caption in FIGURES
              if eval_dir.figure(name).is_file()]
    if split is not None:
        parts.append(_dataset_section(split))
    if metrics.get("training"):
        parts.append("<h2>Training</h2><p>" + _e(", ".join(f"{k}: {v}" for k, v in metrics["training"].items()))
                     + "</p>")
    parts.append("<h2>Configuration</h2><pre>" + _e(yaml.safe_dump(config, sort_keys=False)) + "</pre>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(_title(metrics))}</title><style>{STYLE}</style>"
            f"<script>{SCRIPT}</script></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(metrics: dict, config: dict, split, eval_dir: EvalDir) -> Path:
    """Write the evaluation's report.html."""
    return files.write_text(eval_dir.report, build_report(metrics, config, split, eval_dir))
