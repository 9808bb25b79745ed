"""One function that runs a training job end to end: data, split, model, fit, evaluation.

Everything a run produces goes into its own new folder (see `files.new_run_dir`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import keras

from cxr import files
from cxr.callbacks import Checkpoints, EpochLog
from cxr.config import Config
from cxr.data.batches import ImageBatches, label_indices, load_images
from cxr.data.prepare import prepare_split, summary_table
from cxr.data.split import SPLITS, write_split
from cxr.errors import DatasetError
from cxr.evaluate import evaluate_run
from cxr.model import build_model, compile_model, resolve_weights


def train(config: Config, progress: bool = True, echo=print) -> Path:
    """Run a training job described by a validated Config; return its run folder."""
    # Fail fast, before any long work: missing folders, then missing weights.
    for kind, folder in (("dataset", config.data), ("split", config.split)):
        if folder and not Path(folder).expanduser().is_dir():
            raise DatasetError(f"{kind} folder not found: {folder}")
    weights = resolve_weights(config.weights, config.backbone)
    split = prepare_split(config, progress, echo)
    run_dir = files.new_run_dir(config.runs_dir, config.name)
    echo(f"run folder: {run_dir}")
    write_split(split, run_dir / "split")
    data_root, classes = Path(split.root), split.classes
    resolved = Config(**{**config.to_dict(), "data": split.root, "classes": classes})
    files.write_text(run_dir / "config.yaml", resolved.to_yaml())

    table = summary_table(split)
    echo(table.to_string())
    groups = split.duplicates["group"].nunique() if len(split.duplicates) else 0
    echo(f"duplicate groups kept within one split: {groups} ({len(split.duplicates)} images)")
    empty = [name for name in SPLITS if len(split.frames[name]) == 0]
    if empty:
        raise DatasetError(f"the {', '.join(empty)} split(s) are empty: the dataset is too small to split")

    arrays = {
        name: load_images(data_root, split.frames[name]["file"], config.image_size, config.workers,
                          progress, desc=f"decode {name}")
        for name in SPLITS
    }
    labels = {name: label_indices(split.frames[name]["label"], classes) for name in SPLITS}

    keras.utils.set_random_seed(config.seed)
    model = build_model(len(classes), config.image_size, weights, config.backbone, config.bn_momentum)
    compile_model(model, config.learning_rate)
    train_batches = ImageBatches(arrays["train"], labels["train"], len(classes), config.batch_size,
                                 shuffle=True, seed=config.seed)
    val_batches = ImageBatches(arrays["val"], labels["val"], len(classes), config.batch_size)
    checkpoints = Checkpoints(run_dir / "checkpoints")
    echo(f"training {model.name} ({model.count_params():,} parameters) for {config.epochs} epoch(s) "
         f"at {config.image_size}px, batch {config.batch_size}, backend {keras.backend.backend()}")
    # On a terminal, Keras' progress bar; its logger goes before EpochLog so that the epoch line is
    # printed after the bar's last update rather than inside it. Elsewhere, the epoch lines only.
    bar = progress and sys.stdout.isatty()
    callbacks = [checkpoints, *([keras.callbacks.ProgbarLogger()] if bar else []),
                 EpochLog(run_dir / "history.csv", config.epochs, echo)]
    model.fit(train_batches, validation_data=val_batches, epochs=config.epochs, callbacks=callbacks,
              verbose=1 if bar else 0)
    if checkpoints.best_path.is_file():
        kept = checkpoints.best_path
        echo(f"best epoch {checkpoints.best_epoch} (val_loss {checkpoints.best:.4f}) kept as model.keras")
    else:
        kept = checkpoints.last_path
        echo("warning: val_loss was never finite; the last epoch is kept as model.keras")
    with files.atomic_path(run_dir / "model.keras") as tmp:
        shutil.copyfile(kept, tmp)

    evaluate_run(run_dir, images=arrays, progress=progress, echo=echo)
    return run_dir
