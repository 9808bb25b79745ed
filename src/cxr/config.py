"""Training configuration: the reference system's hyper-parameters as defaults, YAML in and out.

Precedence: defaults < YAML file (`--config`) < command-line flags. The resolved configuration
is saved in every run as `config.yaml`, and can be fed back with `--config`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxr.errors import ConfigError

__all__ = ["AUGMENTATIONS", "BACKBONES", "Config", "DEFAULT_RECIPE", "DISTRIBUTE", "ENVIRONMENT_KEY", "FIELDS",
           "load_yaml", "OPTIMIZERS", "PRECISIONS", "RECIPES", "resolve", "SCHEDULES"]

BACKBONES = ("densenet169", "tiny")
AUGMENTATIONS = ("none", "radiograph")
OPTIMIZERS = ("adamax", "adamw")
SCHEDULES = ("adaptive", "cosine")
# Named sets of ingredients: a recipe's values replace the defaults, and a YAML file or a flag still
# overrides each one. `reference` is the reference system's recipe (Config's own defaults);
# `augmented-cosine` is what has been learnt since 2021 about training on radiographs, put together as
# one candidate and judged by benchmarks/recipe.py (see DEFAULT_RECIPE).
RECIPES: dict[str, dict[str, Any]] = {
    "reference": {},
    "augmented-cosine": {"augment": "radiograph", "label_smoothing": 0.1, "class_balance": True,
                         "optimizer": "adamw", "weight_decay": 0.05, "schedule": "cosine", "warmup_epochs": 1,
                         "bn_momentum": 0.9},
}
# The recipe a run gets when none is named. benchmarks/recipe.py (3-fold x 2-seed cross-validation on the
# shared sample, DenseNet169 from scratch at 96 px, 12 epochs; results/recipe-*.json) measured
# augmented-cosine ahead of reference by far more than the spread between folds and seeds, so it is the
# default; the reference system's recipe stays one flag away (--recipe reference).
DEFAULT_RECIPE = "augmented-cosine"
PRECISIONS = ("fp32", "bf16", "fp16")
DISTRIBUTE = ("auto", "none")
# Where a run's config.yaml records the software that made it (cxr.environment.software): a record,
# not a setting, so reading the file back (--config, --resume) leaves it out.
ENVIRONMENT_KEY = "environment"


@dataclass
class Config:
    """A run's settings; the defaults are the reference system's hyper-parameters."""

    recipe: str = "reference"  # the named set of ingredients the settings started from (RECIPES)
    data: str | None = None  # dataset folder (Kaggle layout or <Class>/*.png)
    split: str | None = None  # reuse the split in this folder instead of making one
    name: str = "run"
    runs_dir: str = "runs"
    classes: list[str] | None = None  # default: every class folder found, sorted (a run saves the list)
    image_size: int = 224
    batch_size: int = 16
    epochs: int = 100
    learning_rate: float = 0.001
    weights: str = "imagenet"  # imagenet | none | path to a DenseNet169 no-top .h5
    # Start from a trained run's (or .keras file's) weights instead: its backbone, and its head when the
    # classes are the same (cxr.training.init_from). `weights` is then not used.
    init_from: str | None = None
    backbone: str = "densenet169"  # densenet169 | tiny (a small CNN for tests and smoke runs)
    # Momentum of the backbone's batch-norm statistics; null keeps Keras' 0.99. Short runs from
    # scratch need 0.9, or inference-mode statistics lag the weights and validation sits at chance.
    bn_momentum: float | None = None
    # Training ingredients beyond the reference's (which are the defaults): see cxr.model.augmentation,
    # compile_model's label smoothing, and ImageBatches' class weights.
    flip: bool = True  # random horizontal flips in training (the reference's only augmentation)
    augment: str = "none"  # none | radiograph: small rotations, shifts, zooms, brightness and contrast
    label_smoothing: float = 0.0
    class_balance: bool = False  # weight each class's images by N / (classes x images of the class)
    optimizer: str = "adamax"  # adamax (the reference's) | adamw
    weight_decay: float = 0.0  # decoupled weight decay (AdamW's; Keras applies it to Adamax alike)
    # adaptive: the reference's controller (cxr.training.controller); cosine: linear warm-up over
    # warmup_epochs, then cosine decay to 0 by the last epoch, and the controller only keeps the best weights.
    schedule: str = "adaptive"
    warmup_epochs: int = 1
    seed: int = 42
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    duplicate_distance: int = 20  # perceptual-hash bits (of 256) within which images are copies
    workers: int = 0  # image decoding threads; 0 = one per core
    cache_dir: str = "auto"  # decoded-image cache: auto = <runs_dir>/cache, none = off, or a folder
    # The reference's learning-rate controller (see cxr.training.controller): monitor training accuracy until
    # `threshold`, then val_loss; after `patience` epochs without improvement multiply the rate by
    # `factor` (and with `dwell` go back to the best weights); stop after `stop_patience` reductions.
    threshold: float = 0.9
    patience: int = 1
    factor: float = 0.5
    stop_patience: int = 3
    dwell: bool = True
    ask_epoch: int | None = 5  # ask whether to go on after this epoch (terminal only); 0/null: never
    deterministic: bool = False  # deterministic kernels: same seed, same history (can be slower on GPU)
    # Minutes between saves inside an epoch (a stop signal saves too); 0: only at epoch ends. An epoch
    # shorter than this is never saved inside, so small runs pay nothing.
    checkpoint_every: float = 10.0
    # Keras' TensorBoard logs in RUN/tensorboard/: null = when the tensorboard package is installed.
    tensorboard: bool | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (Keras mixed precision: float32 weights, bf16/fp16 compute)
    # Data parallelism (see cxr.training.distribute): auto uses every local GPU (and every process of a job);
    # the global batch is per_device_batch x devices when set, else batch_size; scale_learning_rate
    # multiplies the rate by global batch / batch_size (the linear scaling rule).
    distribute: str = "auto"
    per_device_batch: int | None = None
    scale_learning_rate: bool = False
    bootstrap: int = 1000  # stratified bootstrap resamples for the test metrics' 95 % intervals (0: none)
    bootstrap_seed: int = 0

    def validate(self) -> Config:
        """Raise ConfigError naming the first setting that cannot be used."""

        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        def integer(value: Any, low: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        need(self.data is not None or self.split is not None, "give a dataset folder (--data) or a split (--split)")
        need(integer(self.image_size, 32), f"image_size must be an integer of at least 32, got {self.image_size!r}")
        need(integer(self.batch_size, 1), f"batch_size must be a positive integer, got {self.batch_size!r}")
        need(integer(self.epochs, 1), f"epochs must be a positive integer, got {self.epochs!r}")
        need(isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0,
             f"learning_rate must be positive, got {self.learning_rate!r}")
        need(self.backbone in BACKBONES, f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        need(self.bn_momentum is None or (isinstance(self.bn_momentum, (int, float)) and 0 <= self.bn_momentum < 1),
             f"bn_momentum must be empty or a number in [0, 1), got {self.bn_momentum!r}")
        need(self.recipe in RECIPES, f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        need(isinstance(self.flip, bool), f"flip must be true or false, got {self.flip!r}")
        need(self.augment in AUGMENTATIONS,
             f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        need(isinstance(self.label_smoothing, (int, float)) and not isinstance(self.label_smoothing, bool)
             and 0 <= self.label_smoothing < 1,
             f"label_smoothing must be a number in [0, 1), got {self.label_smoothing!r}")
        need(isinstance(self.class_balance, bool), f"class_balance must be true or false, got {self.class_balance!r}")
        need(self.tensorboard is None or isinstance(self.tensorboard, bool),
             f"tensorboard must be true, false or null, got {self.tensorboard!r}")
        need(self.optimizer in OPTIMIZERS,
             f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(isinstance(self.weight_decay, (int, float)) and not isinstance(self.weight_decay, bool)
             and self.weight_decay >= 0, f"weight_decay must be a number of 0 or more, got {self.weight_decay!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(integer(self.warmup_epochs, 0),
             f"warmup_epochs must be an integer of 0 or more, got {self.warmup_epochs!r}")
        need(isinstance(self.weights, str) and self.weights != "",
             "weights must be 'imagenet', 'none' or a path to a .h5 file")
        fractions = self.split_fractions
        need(isinstance(fractions, list) and len(fractions) == 3
             and all(isinstance(f, (int, float)) and f > 0 for f in fractions) and abs(sum(fractions) - 1) < 1e-6,
             f"split_fractions must be three positive numbers summing to 1, got {fractions!r}")
        need(integer(self.duplicate_distance, -1),
             f"duplicate_distance must be an integer of -1 or more, got {self.duplicate_distance!r}")
        need(integer(self.seed, 0), f"seed must be a non-negative integer, got {self.seed!r}")
        need(integer(self.workers, 0), f"workers must be 0 or more, got {self.workers!r}")
        need(isinstance(self.cache_dir, str) and self.cache_dir != "",
             f"cache_dir must be auto, none or a folder, got {self.cache_dir!r}")
        need(self.classes is None or (isinstance(self.classes, list) and len(self.classes) >= 2),
             f"classes must be a list of at least 2 folder names, got {self.classes!r}")
        need(isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1,
             f"threshold must be a number in [0, 1], got {self.threshold!r}")
        need(integer(self.patience, 1), f"patience must be a positive integer, got {self.patience!r}")
        need(isinstance(self.factor, (int, float)) and 0 < self.factor <= 1,
             f"factor must be a number in (0, 1], got {self.factor!r}")
        need(integer(self.stop_patience, 1), f"stop_patience must be a positive integer, got {self.stop_patience!r}")
        need(isinstance(self.dwell, bool), f"dwell must be true or false, got {self.dwell!r}")
        need(self.ask_epoch is None or integer(self.ask_epoch, 0),
             f"ask_epoch must be empty or an integer of 0 or more, got {self.ask_epoch!r}")
        need(isinstance(self.deterministic, bool), f"deterministic must be true or false, got {self.deterministic!r}")
        need(isinstance(self.checkpoint_every, (int, float)) and not isinstance(self.checkpoint_every, bool)
             and self.checkpoint_every >= 0,
             f"checkpoint_every must be a number of minutes, 0 or more, got {self.checkpoint_every!r}")
        need(integer(self.bootstrap, 0), f"bootstrap must be an integer of 0 or more, got {self.bootstrap!r}")
        need(integer(self.bootstrap_seed, 0),
             f"bootstrap_seed must be a non-negative integer, got {self.bootstrap_seed!r}")
        need(self.distribute in DISTRIBUTE,
             f"distribute must be {' or '.join(DISTRIBUTE)}, got {self.distribute!r}")
        need(self.per_device_batch is None or integer(self.per_device_batch, 1),
             f"per_device_batch must be empty or a positive integer, got {self.per_device_batch!r}")
        need(isinstance(self.scale_learning_rate, bool),
             f"scale_learning_rate must be true or false, got {self.scale_learning_rate!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, environment: dict[str, Any] | None = None) -> str:
        """The settings as YAML; with `environment`, that record too, under `environment:` at the end."""
        data = self.to_dict()
        if environment:
            data[ENVIRONMENT_KEY] = environment
        return yaml.safe_dump(data, sort_keys=False)


FIELDS = {f.name for f in dataclasses.fields(Config)}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of Config fields; unknown keys are an error naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    data.pop(ENVIRONMENT_KEY, None)  # a run's config.yaml records where it was made; not a setting
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    return data


def resolve(yaml_path: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Defaults, then the recipe's values, then the YAML file, then every override that is not None; validated.

    The recipe is the one the overrides name, else the YAML file's, else DEFAULT_RECIPE.
    """
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(load_yaml(yaml_path))
    values.update({key: value for key, value in overrides.items() if value is not None})
    recipe = values.setdefault("recipe", DEFAULT_RECIPE)
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    values = {**RECIPES[recipe], **values}
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    return Config(**values).validate()
