"""`cxr train --init-from RUN`: start a new run from a trained model instead of ImageNet or random weights.

For adapting a model to a site's own images: the backbone's weights (and batch-norm statistics) come from
the parent, and so does the head when the classes are the same, in the same order; otherwise the head
starts new (said in the output), since its outputs would mean other things. Layers are matched by name
and shape, the way cxr.model.load_backbone_weights copies ImageNet weights, so the parent may have
been trained at another image size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from cxr import files
from cxr.errors import WeightsError
from cxr.model_metadata import read_description
from cxr.run import Run

__all__ = ["HEAD_LAYERS", "INIT_RECORD", "initialise_from", "parent_model"]

INIT_RECORD = "init_from.json"  # in the new run's folder: where it started
HEAD_LAYERS = ("head_bn", "head_dense", "probabilities")  # cxr.model.head: what maps features to classes


def parent_model(source: str | os.PathLike) -> tuple[Path, list[str] | None]:
    """The parent's model file and class names (None when neither the file nor its run names them).

    Args:
        source: a run folder (its model.keras), a cxr package folder, or a .keras file.

    Raises:
        WeightsError: there is no such model file, or it is not a .keras file.
    """
    path = Run.model_of(Path(source).expanduser())
    if path.suffix != ".keras" or not path.is_file():
        raise WeightsError(f"--init-from needs a trained run folder or a .keras model file; {path} is not one")
    classes = read_description(path).get("classes")
    if not classes and (run := Run.containing(path)) is not None:
        classes = run.config().classes
    return path.resolve(), classes


def initialise_from(model: keras.Model, source: str | os.PathLike, classes: list[str],
                    echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy a trained model's weights into a newly built one, layer by layer.

    Args:
        model: the new model (cxr.model.build_model), before compiling.
        source: the parent (see parent_model).
        classes: the new run's classes, in output order.
        echo: where the note about the head goes.

    Returns:
        The record of where the run started: parent file, run, SHA-256, classes, head kept or new, layers copied.

    Raises:
        WeightsError: the parent is another architecture (no backbone layer in common).
    """
    from cxr.model import load_model

    path, parent_classes = parent_model(source)
    parent = load_model(path, compile=False)
    keep_head = parent_classes == list(classes)
    copied, skipped = [], []
    for layer in parent.layers:
        if not layer.weights or (layer.name in HEAD_LAYERS and not keep_head):
            continue
        try:
            target = model.get_layer(layer.name)
        except ValueError:
            skipped.append(layer.name)
            continue
        values = layer.get_weights()
        if [w.shape for w in target.get_weights()] != [v.shape for v in values]:
            skipped.append(layer.name)
            continue
        target.set_weights(values)
        copied.append(layer.name)
    if not any(name not in HEAD_LAYERS for name in copied):
        raise WeightsError(f"{path} is a {parent.name} model; this run builds {model.name}: no layers in common "
                           "(use the same --backbone as the parent)")
    if skipped:
        echo(f"note: {len(skipped)} layer(s) of the parent have no match here and start new: "
             f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}")
    if keep_head:
        echo(f"initialised from {path}: backbone and head ({len(copied)} layers with weights)")
    else:
        echo(f"initialised from {path}: backbone only ({len(copied)} layers); the head starts new because the parent's "
             f"classes ({', '.join(parent_classes or ['unknown'])}) are not this run's ({', '.join(classes)})")
    run = Run.containing(path)
    return {"model": str(path), "run": run.path.name if run else None, "model_sha256": files.sha256(path),
            "classes": parent_classes, "head": "kept" if keep_head else "new", "layers_copied": len(copied),
            "layers_skipped": skipped}
