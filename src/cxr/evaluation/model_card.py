"""MODEL_CARD.md: the model described for a reader who was not there when it was trained.

The sections follow Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019) and the Hugging Face
model-card template (its YAML header, so a folder published to the Hub shows the card): model details,
intended use, training data, training procedure, evaluation with intervals, calibration, operating points,
per-source results, limitations, how to use. Everything comes from the run's records and the evaluation's
metrics; nothing is typed in by hand, so the card cannot drift from what the files say.
"""

from __future__ import annotations

import pandas as pd

from cxr import files
from cxr.evaluation.calibration import ece_pair
from cxr.evaluation.metrics import HEADLINE, format_interval, unit_sentence
from cxr.model_metadata import INPUT_CONTRACT
from cxr.run import EvalDir, Run

__all__ = ["CARD_FILE", "build_model_card", "write_model_card"]

CARD_FILE = "MODEL_CARD.md"
_INGREDIENTS = ("optimizer", "learning_rate", "schedule", "warmup_epochs", "weight_decay", "batch_size", "flip",
                "augment", "label_smoothing", "class_balance", "bn_momentum", "precision", "seed")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _front_matter(config: dict, classes: list[str]) -> str:
    """The Hugging Face Hub's YAML header."""
    tags = "\n".join(f"- {tag}" for tag in ("image-classification", "chest-x-ray", "keras", "cxr", "research-only"))
    return (f"---\nlibrary_name: keras\npipeline_tag: image-classification\ntags:\n{tags}\n"
            f"model_name: cxr-{config['backbone']}-{'-'.join(c.lower().replace(' ', '_') for c in classes)}\n---\n")


def _details(metrics: dict, config: dict, environment: dict) -> str:
    weights = {"imagenet": "ImageNet-pretrained", "none": "random (trained from scratch)"}.get(
        config["weights"], f"from {config['weights']}")
    if config.get("init_from"):
        weights = f"the trained model {config['init_from']} (--init-from; see init_from.json)"
    software = metrics.get("software") or {}
    rows = [["architecture", f"{config['backbone']} backbone (initial weights: {weights}) with cxr's dense head"],
            ["input", f"{config['image_size']} x {config['image_size']}: {INPUT_CONTRACT}"],
            ["output", "one probability per class (softmax): " + ", ".join(metrics["classes"])],
            ["run", metrics["run"]],
            ["trained with", f"cxr {environment.get('cxr', '?')}, Keras {environment.get('keras', '?')} on "
                             f"{environment.get('backend', '?')} {environment.get('backend_version', '')}".rstrip()],
            ["evaluated with", f"cxr {software.get('cxr', '?')} on {metrics['evaluated']}"]]
    return "## Model details\n\n" + _table(["", ""], rows)


def _intended_use() -> str:
    return ("## Intended use\n\n"
            "**Research use only. This is not a medical device** and must not be used for diagnosis, triage or any "
            "decision about a patient.\n\n"
            "- Intended: research on chest X-ray classification methods, teaching, reproducing and comparing "
            "training recipes on the COVID-19 Radiography Database.\n"
            "- Out of scope: clinical use of any kind; images from another hospital, scanner or population without "
            "first measuring the model on them (`cxr evaluate RUN --data FOLDER`, which also checks for copies of "
            "the training images).")


def _training_data(config: dict, split, audit: dict | None) -> str:
    counts = pd.DataFrame({name: frame["label"].value_counts() for name, frame in split.frames.items()})
    counts = counts.fillna(0).astype(int)
    counts["all"] = counts.sum(axis=1)
    rows = [[label, *row] for label, row in counts.iterrows()] + [["total", *counts.sum()]]
    groups = split.duplicates["group"].nunique() if len(split.duplicates) else 0
    text = (f"## Training data\n\nFolder `{split.root or config['data']}`, split by cxr (stratified, seed "
            f"{config['seed']}, fractions {config['split_fractions']}):\n\n"
            + _table(["class", *counts.columns], rows)
            + f"\n\n{len(split.skipped)} file(s) were skipped as unreadable. {len(split.duplicates)} image(s) form "
            f"{groups} group(s) of copies of one radiograph (perceptual hash); each group stays within one split.")
    if audit and audit.get("available"):
        composition = audit.get("composition") or {}
        text += "\n\nWhere each class's images come from (the dataset's metadata files):\n\n" + _table(
            ["class", "sources (images)"],
            [[label, ", ".join(f"{source} ({n})" for source, n in by_source.items())]
             for label, by_source in composition.items()])
        text += "".join(f"\n\n> **Warning:** {warning}" for warning in audit.get("warnings", []))
    return text


def _learning_rate_changes(history: pd.DataFrame | None) -> str:
    if history is None or not len(history) or "learning_rate" not in history:
        return "none recorded"
    rates, epochs = history["learning_rate"].to_numpy(), history["epoch"].to_numpy()
    changes = [f"epoch {int(epochs[k])}: {rates[k]:.3g}" for k in range(1, len(rates))
               if abs(rates[k] - rates[k - 1]) > 1e-12 * rates[k - 1]]
    if len(changes) >= 12:
        return f"started at {rates[0]:.3g}, changed at {len(changes)} epochs (a schedule; see history.csv)"
    return f"started at {rates[0]:.3g}; " + ("; ".join(changes) if changes else "unchanged")


def _procedure(metrics: dict, config: dict, history: pd.DataFrame | None, environment: dict) -> str:
    training = metrics.get("training") or {}
    rows = [["recipe", config.get("recipe", "reference")],
            *[[name.replace("_", " "), config.get(name)] for name in _INGREDIENTS
              if name != "warmup_epochs" or config.get("schedule") == "cosine"],
            ["epochs", f"{training.get('epoch', '?')} run of {training.get('epochs', config['epochs'])} planned "
                       f"({training.get('status', '?')}); the model is the best epoch's "
                       f"({training.get('best_epoch', '?')})"],
            ["learning rate per epoch", _learning_rate_changes(history)],
            ["backend, devices", f"{environment.get('backend', '?')}, distribute {config['distribute']}"],
            ["training ended", training.get("ended", "?")]]
    return "## Training procedure\n\n" + _table(["setting", "value"], rows)


def _evaluation(metrics: dict) -> str:
    scored = metrics.get("scored", "test")
    clinical = metrics.get("clinical")
    if not clinical:
        return "## Evaluation\n\nNo test set was scored in this evaluation."
    where = (f"the external set {metrics['external']['name']!r} (images the model never saw, from "
             f"`{metrics['external']['data']}`)" if metrics.get("kind") == "external"
             else "the run's own test split (the same sources as training: see Limitations)")
    boot = clinical["bootstrap"]
    rows = [[label, format_interval(clinical[group][name])] for label, group, name in HEADLINE]
    text = (f"## Evaluation\n\nOn {where}: {metrics['splits'][scored]['images']} images. 95 % intervals from "
            f"{boot['resamples']} stratified bootstrap resamples.{unit_sentence(boot)}\n\n"
            + _table(["metric", "value (95 % CI)"], rows))
    text += "\n\n" + _table(["class", "images", "sensitivity", "specificity", "precision", "F1"],
                            [[label, values["support"], *(format_interval(values[m]) for m in
                                                          ("sensitivity", "specificity", "precision", "f1"))]
                             for label, values in clinical["per_class"].items()])
    calibration = metrics.get("calibration")
    if calibration:
        before, after = ece_pair(calibration)
        text += (f"\n\n**Calibration.** Expected calibration error {before:.3f} before and {after:.3f} after "
                 f"temperature scaling with T = {calibration['temperature']:.3f} (fitted on the validation split; "
                 "`--calibrated` in predict and serve applies it).")
    block = metrics.get("operating_points")
    if block:
        rows = []
        for name, point in block["chosen"]["classes"].items():
            result = block["results"]["classes"].get(name) or {}
            threshold = "n/a" if point["threshold"] is None else f"{point['threshold']:.3f}"
            rows.append([name, f"{point['target_sensitivity']:.2f}", threshold,
                         *(format_interval(result.get(m)) for m in ("sensitivity", "specificity"))])
        text += (f"\n\n**Operating points.** Each class's threshold is {block['chosen']['rule']}; measured on the "
                 f"{scored} set:\n\n" + _table(["class", "target sensitivity", "threshold", "sensitivity",
                                                "specificity"], rows))
    return text


def _per_source(metrics: dict) -> str:
    audit = metrics.get("sources")
    if not audit or not audit.get("available"):
        unknown = "The images' sources are not known (no metadata files beside the class folders)."
        return "## Results per source\n\n" + (audit or {}).get("note", unknown)
    return ("## Results per source\n\n" + _table(["class", "source", "images", "sensitivity"],
                                                 [[r["class"], r["source"], r["images"], f"{r['sensitivity']:.3f}"]
                                                  for r in audit["per_class_source"]]))


def _limitations(metrics: dict) -> str:
    scored = metrics.get("scored", "test")
    n = metrics["splits"][scored]["images"]
    return ("## Limitations\n\n"
            "- **The source confound.** In the COVID-19 Radiography Database each class comes mostly from its own "
            "collections (all Viral Pneumonia and part of Normal are children's films from one hospital; COVID comes "
            "from other archives). A model can score well by recognising where a film comes from (its age, "
            "markings, exposure, the patient's age) rather than the disease. The test split shares those sources, so "
            "its figures are an upper bound for images from anywhere else; see the per-source table and measure on "
            "your own images before trusting it.\n"
            f"- **Size of the evidence.** {n} images were scored; the intervals above say how far the true figures "
            "could be from these.\n"
            "- The labels are the dataset's own (by collection), not a radiologist's reading of each film.\n"
            "- It knows only the classes above, as the folders name them; any other finding is read as one of them.")


def _how_to_use() -> str:
    return ("## How to use\n\nWith cxr installed (Keras and TensorFlow or JAX; or ONNX Runtime alone for "
            "`model.onnx`), in a folder made by `cxr package`:\n\n```bash\n"
            "cxr predict THIS_FOLDER image.png [--calibrated] [--operating-points THIS_FOLDER]\n"
            "cxr serve THIS_FOLDER                   # REST API and a web page on port 8000\n```\n\n"
            "The packaged model files carry their class names, input size, temperature and operating points, so "
            "either `model.keras` or `model.onnx` alone is enough. A `model.int8.onnx` (from `cxr export "
            "--quantize int8`) is used only when asked, with `--engine onnx-int8`: smaller and faster on a CPU, "
            "and its metadata records how often it picked the fp32 model's class on the run's test images.")


def build_model_card(metrics: dict, config: dict, split, history: pd.DataFrame | None,
                     environment: dict | None) -> str:
    """The card's Markdown text.

    Args:
        metrics: the evaluation's metrics.json content (internal or external).
        config: the run's settings (Config.to_dict()).
        split: the run's split (the training data).
        history: the run's history.csv (learning-rate changes), or None.
        environment: the software the run was trained with (config.yaml's record), or None.

    Returns:
        Markdown with the Hugging Face front matter.
    """
    environment = environment or {}
    external = metrics.get("kind") == "external"
    kind = f"external validation {metrics['external']['name']!r}" if external else "evaluation"
    parts = [_front_matter(config, metrics["classes"]).rstrip("\n"),
             f"# Model card: {metrics['run']}\n\nA chest X-ray classifier trained with "
             f"cxr ({', '.join(metrics['classes'])}); figures from its {kind} of "
             f"{metrics['evaluated']}.",
             _details(metrics, config, environment), _intended_use(),
             _training_data(config, split, None if external else metrics.get("sources")),
             _procedure(metrics, config, history, environment), _evaluation(metrics), _per_source(metrics),
             _limitations(metrics), _how_to_use(),
             "## References\n\n- M. Mitchell et al., \"Model Cards for Model Reporting\", FAT* 2019.\n"
             "- M. E. H. Chowdhury et al., \"Can AI help in screening viral and COVID-19 pneumonia?\", IEEE Access "
             "2020; T. Rahman et al., \"Exploring the effect of image enhancement techniques on COVID-19 detection "
             "using chest X-ray images\", Comput. Biol. Med. 2021 (the dataset)."]
    return "\n\n".join(parts) + "\n"


def write_model_card(run: Run, metrics: dict, eval_dir: EvalDir) -> str:
    """Write MODEL_CARD.md into an evaluation folder, from the run's records and the evaluation's metrics.

    Returns:
        The card's path, as a string.
    """
    text = build_model_card(metrics, run.config().to_dict(), run.split(), run.history(), run.environment())
    return str(files.write_text(eval_dir.path / CARD_FILE, text))
