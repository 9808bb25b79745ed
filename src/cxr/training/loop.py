"""Training jobs: a new run (`train`) and the continuation of a stopped one (`resume`).

Both tell the same story: prepare the data, build or restore the model, assemble the callbacks, fit,
finish (status, model.keras), evaluate. Everything a run produces goes into its own new folder (a
`Run`); after every epoch, and every few minutes inside a long one, it saves what it needs to continue
(`checkpoint`); Ctrl-C or SIGTERM stops at the next batch, saves, evaluates the best model so far and
says how to resume. In a job of several
processes, process 0 writes the run and speaks; the others work in a scratch folder, quietly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr import allocator, files, logs
from cxr.backend import enable_compilation_cache, enable_determinism
from cxr.config import Config
from cxr.data.batches import ImageBatches, balanced_class_weights, label_indices
from cxr.data.cache import load_split_images, resolve_cache_dir
from cxr.data.prepare import empty_cells, prepare_split, summary_table
from cxr.data.split import SPLITS, Split
from cxr.environment import record
from cxr.errors import ConfigError, DatasetError, UserError
from cxr.evaluation.evaluate import evaluate_run
from cxr.model import build_model, compile_model, describe_weights, load_model, resolve_weights, warmup_cosine
from cxr.model_metadata import describe, write_keras_with_description
from cxr.precision import hardware_note, model_precision
from cxr.run import Run
from cxr.training import distribute
from cxr.training.checkpoint import RunCheckpoint, WithinEpoch, set_seed_states
from cxr.training.controller import AdaptiveLR, current_learning_rate
from cxr.training.history import EpochLog
from cxr.training.init_from import INIT_RECORD, initialise_from, parent_model
from cxr.training.progress import ProgressLines
from cxr.training.prompt import AskToContinue
from cxr.training.stopping import Status, StopGuard, StopSignals, TrainingStopped, terminal_reader

__all__ = ["train", "resume", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"

Reader = Callable[[str], "str | None"]


COMPLETE = (Status.FINISHED, Status.HALTED, Status.STOPPED_EARLY)  # training ended by design


@dataclass(frozen=True)
class Console:
    """Where a process speaks: process 0 prints and may ask; the others of a job stay silent."""

    echo: Callable[[str], None] = print
    progress: bool = True
    read: Reader | None = None

    @classmethod
    def quiet(cls) -> Console:
        return cls(echo=lambda _: None, progress=False, read=None)


@dataclass(frozen=True)
class Loop:
    """The callbacks of one fit, and the stop signals they watch."""

    controller: AdaptiveLR
    history: EpochLog
    checkpoint: RunCheckpoint
    prompt: AskToContinue | None
    signals: StopSignals
    callbacks: list[keras.callbacks.Callback]
    bar: bool = False  # Keras' progress bar is among the callbacks (fit's verbose must say so too)


# The two entry points ---------------------------------------------------------------------------------

def train(config: Config, progress: bool = True, echo=print, read: Reader | None = None) -> Path | None:
    """Run a training job described by a validated Config.

    Args:
        config: the settings (see cxr.config.Config).
        progress: show progress: Keras' bar on a terminal, else a line every few minutes.
        echo: where messages go.
        read: answers the ask-to-continue prompt (default: the terminal, when stdin is one).

    Returns:
        The new run folder (None in a process other than 0 of a job).

    Raises:
        DatasetError, WeightsError, ConfigError: before any long work, for missing or unusable inputs.
        TrainingStopped: a stop signal or a non-finite loss ended training (the run is kept and evaluated).
    """
    _check_inputs(config)
    if config.deterministic:
        enable_determinism()  # before anything starts the backend
    placement = distribute.plan(config.distribute)
    distribute.global_batch(config.batch_size, config.per_device_batch, placement.replicas)  # fails fast
    with logs.run_log() as log:
        console = Console(_and_log(echo, log), progress, read) if placement.chief else Console.quiet()
        split = prepare_split(config, console.progress, console.echo)
        distribute.agree(placement, _split_bytes(split), "splits")  # the same split from the same data and seed
        config = dataclasses.replace(config, data=split.root, classes=split.classes)
        with workspace(placement, lambda: Run.create(config.runs_dir, config.name)) as run:
            if placement.chief:
                log.to_folder(run.path)
                _record_new_run(run, config, split, console.echo)
            _check_not_empty(split)  # every process stops here, so no process may go on alone
            return _train_and_evaluate(run, config, split, console, placement=placement)


def _and_log(echo: Callable[[str], None], log: logs.RunLog) -> Callable[[str], None]:
    """Say it on the console (echo) and keep it for the run's train.log."""

    def say(text: str) -> None:
        echo(text)
        log.echo(text)

    return say


def resume(run_dir: str | os.PathLike, epochs: int | None = None, learning_rate: float | None = None,
           progress: bool = True, echo=print, read: Reader | None = None,
           checkpoint_every: float | None = None) -> Path | None:
    """Continue a run from its last completed epoch.

    Args:
        run_dir: the run folder.
        epochs: train to this epoch in all (also a complete run, with a fresh allowance of rate reductions).
        learning_rate: replace the current rate (after a NaN loss, say).
        progress: show progress: Keras' bar on a terminal, else a line every few minutes.
        echo: where messages go.
        read: answers the ask-to-continue prompt (default: the terminal, when stdin is one).
        checkpoint_every: minutes between saves inside an epoch from now on (default: the run's setting).

    Returns:
        The run folder (None in a process other than 0 of a job).

    Raises:
        ConfigError: the run is complete and no more epochs were asked for, or the devices cannot split its batch.
        RunBusyError: another live process is writing the run.
    """
    run = Run(run_dir)
    config = run.config().validate()
    if checkpoint_every is not None:  # how often to save changes no result: no need to record it
        config = dataclasses.replace(config, checkpoint_every=checkpoint_every).validate()
    if config.deterministic:
        enable_determinism()  # before anything starts the backend
    placement = distribute.plan(config.distribute)
    with logs.run_log() as log:
        if placement.chief:
            log.to_folder(run.path)  # the log goes on where the stopped training left it
        console = Console(_and_log(echo, log), progress, read) if placement.chief else Console.quiet()
        return _resume(run, config, placement, console, epochs=epochs, learning_rate=learning_rate)


def _resume(run: Run, config: Config, placement: distribute.Plan, console: Console, *, epochs: int | None,
            learning_rate: float | None) -> Path | None:
    with run.lock() if placement.chief else contextlib.nullcontext():  # every process makes the same checks
        state = _resumable_state(run)
        if learning_rate is not None and config.schedule != "adaptive":
            raise ConfigError(f"{run} follows the {config.schedule} schedule; its rate cannot be replaced on --resume")
        if learning_rate is not None and not learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {learning_rate!r}")
        split = run.split()
        _check_not_empty(split)  # a run folder left by a new run that stopped there
        config, state, finalize = _continuation(run, config, state, epochs)
        _global_batch(config, state, placement)  # fails fast when the devices changed
        if placement.chief:
            if epochs is not None:  # only once every check has passed: a refused resume changes nothing
                run.write_config(config, environment=run.environment())
            run.remove_temporaries(console.echo)
        console.echo(_resuming(run, config, state, finalize=finalize))
        if finalize and placement.replicas > 1:  # evaluation alone: one device, no partner processes
            distribute.leave_processes(placement)
            keras.distribution.set_distribution(None)
            if not placement.chief:
                return None
            placement = distribute.Plan(placement.devices[:1])
        with workspace(placement, lambda: run, locked=False) as own:
            return _train_and_evaluate(own, config, split, console, placement=placement, state=state,
                                       learning_rate=learning_rate, finalize=finalize, source=run)


# Setting up ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def workspace(placement: distribute.Plan, make_run: Callable[[], Run], locked: bool = True) -> Iterator[Run]:
    """Where this process writes: process 0 the real run (locked while it writes); the others a scratch
    run they delete, since saving a model is a collective step in a JAX job that every process takes.
    """
    if not placement.chief:
        with tempfile.TemporaryDirectory(prefix="cxr-worker-") as scratch:
            yield Run(scratch)
        return
    run = make_run()
    with run.lock() if locked else contextlib.nullcontext():
        yield run


def _resuming(run: Run, config: Config, state: dict[str, Any] | None, *, finalize: bool) -> str:
    partial = (state or {}).get("partial")
    where = (f"in epoch {partial['epoch']} of {config.epochs}, at batch {partial['batches'] + 1} of {partial['of']}"
             if partial else f"after epoch {state['epoch'] if state else 0} of {config.epochs}")
    return f"resuming {run} {where}" + (": training is complete, evaluating it" if finalize else "")


def _check_inputs(config: Config) -> None:
    """Fail fast, before any long work: missing folders, then missing weights."""
    for kind, folder in (("dataset", config.data), ("split", config.split)):
        if folder and not Path(folder).expanduser().is_dir():
            raise DatasetError(f"{kind} folder not found: {folder}")
    if config.tensorboard and not _tensorboard_installed():
        raise ConfigError("--tensorboard needs TensorFlow and the tensorboard package: pip install 'cxr[tensorboard]' "
                          "(Keras writes the logs with tf.summary, on either backend)")
    if config.init_from:
        parent_model(config.init_from)  # the weights come from there; --weights is not used
    else:
        resolve_weights(config.weights, config.backbone)


def _record_new_run(run: Run, config: Config, split: Split, echo: Callable[[str], None]) -> None:
    echo(f"run folder: {run}")
    run.write_split(split)
    run.write_config(config, environment=record())
    echo(summary_table(split).to_string())
    for note in empty_cells(split):
        echo(note)
    groups = split.duplicates["group"].nunique() if len(split.duplicates) else 0
    echo(f"duplicate groups kept within one split: {groups} ({len(split.duplicates)} images)")


def _split_bytes(split: Split) -> bytes:
    """The split's files, labels and classes, for comparing the splits of a job's processes."""
    return "\n".join([",".join(split.classes), *(split.frames[name][["file", "label"]].to_csv(index=False)
                                                   for name in SPLITS)]).encode()


def _check_not_empty(split: Split) -> None:
    empty = [name for name in SPLITS if len(split.frames[name]) == 0]
    if empty:
        raise DatasetError(f"the {', '.join(empty)} split(s) are empty: the dataset is too small to split")


def _resumable_state(run: Run) -> dict[str, Any] | None:
    state = run.state()
    # A history or model without state.json and without checkpoint files: a run of a cxr without resumable
    # checkpoints. (With its first epoch's checkpoint, it died between writing that epoch's history and its
    # state: it starts again.)
    if state is None and (run.history_path.exists() or run.model_path.exists()) and not run.checkpoint_files():
        raise UserError(f"{run} has no checkpoints/state.json: it was trained by an earlier version of "
                        "cxr without resumable checkpoints; start a new run")
    return state


def _continuation(run: Run, config: Config, state: dict[str, Any] | None,
                  epochs: int | None) -> tuple[Config, dict[str, Any] | None, bool]:
    """What a resume does: train to more `epochs`, finish where training ended but its evaluation did
    not (finalize), or refuse a run that is complete. Returns (config, state, finalize); the caller
    records a new `epochs` in config.yaml.
    """
    done = state["epoch"] if state else 0
    # The controller's stop is in the saved state even when the process died before recording the status.
    stopped_early = state is not None and _controller_stopped(config, state["adaptive"].get("reductions", 0), done)
    complete = state is not None and (state.get("status") in COMPLETE or done >= config.epochs or stopped_early)
    if epochs is not None:
        if epochs <= done:
            raise ConfigError(f"{run} has trained {done} epoch(s) already; --epochs must be more than that")
        if config.schedule != "adaptive" and epochs != config.epochs:
            # The schedule was laid out over the run's epochs (in the saved optimizer): more epochs would train
            # at a rate of 0, fewer would end at a high rate, and config.yaml would describe neither.
            raise ConfigError(f"{run} follows the {config.schedule} schedule over {config.epochs} epochs; --epochs "
                              f"cannot change that to {epochs} (resume without --epochs, or start a new run)")
        config = dataclasses.replace(config, epochs=epochs).validate()
        if state:
            state["adaptive"].update(wait=0, reductions=0)
        return config, state, False
    if complete and run.has_final_eval():
        raise ConfigError(f"{run} is complete ({state.get('status')} after epoch {done} of {config.epochs}); "
                          f"to train longer, add --epochs N with N > {done} (cxr evaluate {run} evaluates it again)")
    return config, state, complete  # complete without its evaluation: finish that


def _global_batch(config: Config, state: dict[str, Any] | None, placement: distribute.Plan) -> int:
    """A resumed run keeps the global batch it was trained with, whatever devices it is resumed on."""
    saved = (state or {}).get("global_batch")
    if saved is None:
        return distribute.global_batch(config.batch_size, config.per_device_batch, placement.replicas)
    if saved % placement.replicas:
        raise ConfigError(f"this run trains with a global batch of {saved}, which does not split evenly over "
                          f"{placement.replicas} devices; resume it on a number of devices that divides {saved} "
                          "(choose them with CUDA_VISIBLE_DEVICES)")
    return saved


# The story -------------------------------------------------------------------------------------------

def _train_and_evaluate(run: Run, config: Config, split: Split, console: Console, *, placement: distribute.Plan,
                        state: dict[str, Any] | None = None, learning_rate: float | None = None,
                        finalize: bool = False, source: Run | None = None) -> Path | None:
    """Prepare the data, build or restore the model, fit, finish and evaluate. `source` is the run a resume
    continues (its checkpoints and its runs folder); `run` is where this process writes.
    """
    # The decode cache sits beside the run; a process other than 0 starting a new run has only a scratch run.
    runs_dir = (source or run).path.parent if placement.chief or source else Path(config.runs_dir)
    source = source or run
    batch = _global_batch(config, state, placement)
    arrays, labels, cache_dir = _prepare_data(source, config, split, console, placement=placement, runs_dir=runs_dir)
    if cache_dir is not None:
        enable_compilation_cache(cache_dir / "xla")
    keras.utils.set_random_seed(config.seed)
    train_batches, val_batches = _batches(arrays, labels, config, console.echo, placement=placement, batch=batch,
                                          state=state)
    model, best_weights = _build_or_restore(source, config, state, console.echo, placement=placement, batch=batch,
                                            learning_rate=learning_rate, steps=train_batches.batches_per_epoch)
    loop = _assemble_callbacks(run, config, state, best_weights, console, train_batches, placement=placement,
                               batch=batch, finalize=finalize)
    if not finalize:
        _announce(model, config, console.echo, placement=placement, batch=batch)
    stopped = _fit(model, train_batches, val_batches, loop, config, finalize=finalize)
    distribute.leave_processes(placement)  # the rest is process 0's alone
    if not placement.chief:
        if stopped:  # the job's exit status, from every process
            raise stopped
        return None
    _finish(run, config, loop, state, stopped, console.echo, finalize=finalize)
    images = None if placement.process_count > 1 else arrays  # a shard is not the split
    _evaluate(run, images, loop.checkpoint, stopped, console)
    return run.path


def _prepare_data(source: Run, config: Config, split: Split, console: Console, *, placement: distribute.Plan,
                  runs_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Path | None]:
    """Each split decoded once (from the decode cache when there is one), and its labels. In a job of
    several processes each decodes only its shard of train and val; process 0 evaluates on its own later.
    """
    frames = ({name: split.frames[name].iloc[placement.shard(len(split.frames[name]))] for name in ("train", "val")}
              if placement.process_count > 1 else split.frames)
    cache_dir = resolve_cache_dir(config.cache_dir, runs_dir)
    try:
        arrays = {name: load_split_images(cache_dir, split.root, frame["file"], config.image_size, config.workers,
                                          console.progress, desc=f"decode {name}", echo=console.echo)
                  for name, frame in frames.items()}
    except KeyboardInterrupt:
        raise TrainingStopped(f"interrupted before training; resume with: cxr train --resume {source}",
                              Status.INTERRUPTED, 130) from None
    labels = {name: label_indices(frame["label"], split.classes) for name, frame in frames.items()}
    # The whole training split's labels (not this process's shard): class weights must be the same everywhere.
    labels["train_all"] = label_indices(split.frames["train"]["label"], split.classes)
    return arrays, labels, cache_dir


def _build_or_restore(source: Run, config: Config, state: dict[str, Any] | None, echo: Callable[[str], None], *,
                      placement: distribute.Plan, batch: int, learning_rate: float | None,
                      steps: int) -> tuple[keras.Model, list[np.ndarray] | None]:
    """A new compiled model, or the saved one with its optimizer, random generators and best weights."""
    best_weights = None
    with placement.scope():
        if state:
            saved = state.get("partial") or state  # inside an epoch, or at the end of the last one
            model = load_model(source.checkpoint(saved["model"]))  # weights, optimizer state and learning rate
            set_seed_states(model, saved["seed_states"])
            if state.get("best_model"):
                best_weights = load_model(source.checkpoint(state["best_model"]), compile=False).get_weights()
            if learning_rate is not None:
                echo(f"learning rate {current_learning_rate(model):.2e} -> {learning_rate:.2e}")
                model.optimizer.learning_rate = learning_rate
        else:
            note = hardware_note(config.precision)
            if note:
                echo(f"note: {note}")
            weights = "none" if config.init_from else config.weights
            if not config.init_from:  # initialise_from says what it copies from the parent run
                echo(f"starting from {describe_weights(weights)}")
            model = build_model(len(config.classes), config.image_size, weights, config.backbone,
                                config.bn_momentum, config.precision, flip=config.flip, augment=config.augment)
            if config.init_from:
                files.write_json(source.path / INIT_RECORD,
                                 initialise_from(model, config.init_from, config.classes, echo))
            rate = config.learning_rate
            if config.scale_learning_rate and batch != config.batch_size:
                rate = distribute.scaled_learning_rate(config.learning_rate, config.batch_size, batch)
                echo(f"learning rate {config.learning_rate:.2e} x {batch}/{config.batch_size} = {rate:.2e} "
                     "(linear scaling rule)")
            if config.schedule == "cosine":
                rate = warmup_cosine(rate, config.epochs, steps, config.warmup_epochs)
            compile_model(model, rate, config.label_smoothing, config.optimizer, config.weight_decay)
    distribute.synchronize_batch_norm(model, placement)
    return model, best_weights


def _batches(arrays: dict[str, np.ndarray], labels: dict[str, np.ndarray], config: Config,
             echo: Callable[[str], None], *, placement: distribute.Plan, batch: int,
             state: dict[str, Any] | None) -> tuple[ImageBatches, ImageBatches]:
    """This process's part of each global batch; a short last batch is cut to a multiple of the devices.
    A run saved inside an epoch starts that epoch at the next batch.
    """
    per_process = batch // placement.process_count
    n_classes = len(config.classes)
    weights = balanced_class_weights(labels["train_all"], n_classes) if config.class_balance else None
    train_batches = ImageBatches(arrays["train"], labels["train"], n_classes, per_process, shuffle=True,
                                 seed=config.seed + placement.process_id, multiple_of=placement.batch_multiple,
                                 class_weights=weights)
    val_batches = ImageBatches(arrays["val"], labels["val"], n_classes, per_process,
                               multiple_of=placement.batch_multiple)
    partial = (state or {}).get("partial")
    if partial:
        if partial["of"] != train_batches.batches_per_epoch:
            raise ConfigError(f"the run was saved at batch {partial['batches']} of {partial['of']} of epoch "
                              f"{partial['epoch']}, but its epochs now have {train_batches.batches_per_epoch} "
                              "batches; the split or the images changed since")
        train_batches.start_at(partial["epoch"] - 1, partial["batches"])
    for name, batches in (("train", train_batches), ("val", val_batches)):
        if batches.used < len(batches.images):
            echo(f"note: each epoch uses {batches.used} of this process's {len(batches.images)} {name} images: a "
                 f"short last batch is cut to a multiple of the {placement.batch_multiple} devices it is split over "
                 "(the final evaluation uses every image)")
    return train_batches, val_batches


def _assemble_callbacks(run: Run, config: Config, state: dict[str, Any] | None, best_weights, console: Console,
                        train_batches: ImageBatches, *, placement: distribute.Plan, batch: int,
                        finalize: bool) -> Loop:
    """The callbacks in the order they must run; each gets what it needs through its constructor and
    tells later ones what it decided through the epoch's logs.
    """
    # The loop sets the best weights itself when training ends: a run resumed inside an epoch fits twice.
    controller = AdaptiveLR(config.threshold, config.patience, config.factor, config.stop_patience, config.dwell,
                            restore_at_end=False, adapt=config.schedule == "adaptive")
    if state:
        controller.set_state(state["adaptive"], best_weights)
    partial = (state or {}).get("partial") or {}
    history = EpochLog(config.epochs, console.echo, rows=state["history"] if state else None,
                       carried_seconds=partial.get("seconds", 0.0), carried_learning_rate=partial.get("learning_rate"),
                       scheduled=config.schedule != "adaptive")
    # The processes of a job would each choose their own moment: they save at epoch ends only.
    every = config.checkpoint_every * 60 if config.checkpoint_every > 0 else None
    within = WithinEpoch(train_batches.batches_per_epoch, every) if placement.process_count == 1 else None
    checkpoint = RunCheckpoint(run, config.epochs, history, controller, state=state, ask_epoch=config.ask_epoch,
                               global_batch=batch, within_epoch=within)
    signals = StopSignals(on_second=lambda: _resume_hint(run, checkpoint))
    prompt = _prompt(config, state, console, signals, checkpoint, several=placement.process_count > 1,
                     finalize=finalize)
    # On a terminal, Keras' progress bar: before the controller, whose decision in the logs is text.
    # Elsewhere (a log file), a line every few minutes.
    bar = console.progress and sys.stdout.isatty()
    lines = (ProgressLines(config.epochs, train_batches.batches_per_epoch, batch, lambda: train_batches.skip,
                           console.echo) if console.progress and not bar else None)
    callbacks = [StopGuard(signals),
                 keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: train_batches.set_epoch(epoch)),
                 *([keras.callbacks.ProgbarLogger()] if bar else []), *([lines] if lines else []),
                 controller, history, checkpoint, *([prompt] if prompt else [])]
    board = _tensorboard(run, config, console.echo) if placement.chief and not finalize else None
    if board is not None:
        callbacks.insert(callbacks.index(controller), board)  # before the controller adds its decision as text
    return Loop(controller, history, checkpoint, prompt, signals, callbacks, bar)


def _tensorboard_installed() -> bool:
    """Keras writes TensorBoard logs with TensorFlow's tf.summary, which needs the tensorboard package."""
    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "tensorboard"))


def _tensorboard(run: Run, config: Config, echo: Callable[[str], None]) -> keras.callbacks.Callback | None:
    """Keras' TensorBoard callback (losses, accuracies, learning rate per epoch) into RUN/tensorboard/.

    On by default where the `tensorboard` package is installed (`cxr[tensorboard]`), since then the user can
    watch the curves live; off by default otherwise, as neither the viewer nor the writer it needs are cxr
    dependencies, and history.csv and the report hold the same figures. The writer is TensorFlow's
    tf.summary, whichever backend trains.
    """
    if config.tensorboard is False or (config.tensorboard is None and not _tensorboard_installed()):
        return None
    folder = run.path / TENSORBOARD_DIR
    echo(f"TensorBoard logs in {folder} (watch with: tensorboard --logdir {folder})")
    return keras.callbacks.TensorBoard(log_dir=str(folder), write_graph=False, update_freq="epoch")


def _prompt(config: Config, state: dict[str, Any] | None, console: Console, signals: StopSignals,
            checkpoint: RunCheckpoint, *, several: bool, finalize: bool) -> AskToContinue | None:
    """The ask-to-continue prompt, when there is someone to ask: a terminal, or the caller's `read`."""
    read = console.read
    if read is None and config.ask_epoch and sys.stdin.isatty() and not finalize and not several:
        read = terminal_reader(signals)
    if read is not None and config.ask_epoch and not several:
        prompt = AskToContinue(config.ask_epoch, config.epochs, read, console.echo,
                               on_answer=checkpoint.record_answer)
        prompt.set_state((state or {}).get("ask", {"next_ask": config.ask_epoch}))
        return prompt
    if config.ask_epoch and not finalize:
        console.echo("not asking whether to continue: " + ("the job has several processes" if several
                                                            else "standard input is not a terminal"))
    return None


def _announce(model: keras.Model, config: Config, echo: Callable[[str], None], *, placement: distribute.Plan,
              batch: int) -> None:
    echo(f"training {model.name} ({model.count_params():,} parameters) to epoch {config.epochs} "
         f"at {config.image_size}px, batch {batch}, backend {keras.backend.backend()}, "
         f"{model_precision(model)}" + (", deterministic" if config.deterministic else ""))
    echo(f"devices: {placement.describe()}"
         + (f", {batch // placement.replicas} images per device per step" if placement.replicas > 1 else ""))
    echo(allocator.describe())


def _fit(model: keras.Model, train_batches: ImageBatches, val_batches: ImageBatches, loop: Loop, config: Config, *,
         finalize: bool) -> TrainingStopped | None:
    """Fit to the last epoch; return why training stopped early, if it did (saved where it was, if it can)."""
    if finalize:
        return None
    stopped = None
    try:
        with loop.signals:
            for first, last in _fits(loop.checkpoint.state, config.epochs):
                train_batches.set_epoch(first)  # a fit counts an epoch's batches as it begins
                # shuffle=False: ImageBatches shuffles itself, reproducibly; Keras would reorder batches
                # with Python's global random state, which a resumed process cannot reproduce.
                model.fit(train_batches, validation_data=val_batches, epochs=last, initial_epoch=first,
                          callbacks=loop.callbacks, verbose=1 if loop.bar else 0, shuffle=False)
                if model.stop_training:  # the controller stopped or the user halted
                    break
    except TrainingStopped as error:
        stopped = error
        if error.kind == Status.INTERRUPTED:  # the weights are those after the last batch: keep them
            loop.checkpoint.save_partial()
    loop.controller.restore_best()  # the model in memory ends with the best weights, however training ended
    if stopped is None and loop.signals.received:  # it came after the last batch: stop before the long evaluation
        stopped = loop.signals.stopped("after the last epoch")
    return stopped


def _fits(state: dict[str, Any], epochs: int) -> list[tuple[int, int]]:
    """The (initial_epoch, epochs) of each fit: a run saved inside an epoch first finishes that epoch in a
    fit of its own, whose one epoch is shorter (Keras cannot start an epoch at a later batch), then the rest.
    """
    first = state["epoch"]
    if (state.get("partial") or {}).get("epoch") == first + 1:
        return [(first, first + 1)] + ([(first + 1, epochs)] if first + 1 < epochs else [])
    return [(first, epochs)]


def _finish(run: Run, config: Config, loop: Loop, state: dict[str, Any] | None, stopped: TrainingStopped | None,
            echo: Callable[[str], None], *, finalize: bool) -> Status:
    """Record how training ended and keep the best epoch's model as model.keras."""
    done = loop.checkpoint.state["epoch"]
    status = _status(config, loop, state, stopped, finalize=finalize)
    if done == 0 and loop.checkpoint.state.get("partial"):
        loop.checkpoint.commit(status)
        raise TrainingStopped(f"{stopped.reason}. No epoch was completed; {loop.checkpoint.saved()}. Resume with: "
                              f"cxr train --resume {run}", status, stopped.exit_code)
    if done == 0:
        hint = (f"; start it again with: cxr train --resume {run}" if status == Status.INTERRUPTED
                else "; start a new run with a lower --learning-rate" if status == Status.NAN else "")
        raise TrainingStopped(f"{stopped.reason if stopped else 'training stopped'}. No epoch was completed, so "
                              f"no model was saved{hint}", status, stopped.exit_code if stopped else 1)
    loop.checkpoint.commit(status)
    kept = loop.checkpoint.best_model_path or loop.checkpoint.last_model_path
    best = loop.checkpoint.state.get("best_epoch")
    echo(f"training {status} after epoch {done} of {config.epochs}; "
         + (f"the best epoch ({best}) is kept as model.keras" if best
            else "no epoch improved on the initial weights, which are kept as model.keras"))
    _write_described_model(run, config, kept)
    return status


def _write_described_model(run: Run, config: Config, kept: Path) -> None:
    """model.keras: the kept checkpoint, carrying its class names, input contract and training record
    (cxr.model_metadata), so that the file alone is enough to predict with.
    """
    description = describe(config.classes or run.config().classes, config.image_size, run=run.path.name,
                           trained=run.training_summary(), recipe=config.recipe, backend=keras.backend.backend())
    started = run.path / INIT_RECORD
    if started.is_file():  # where a run started with --init-from came from
        description["init_from"] = json.loads(started.read_text(encoding="utf-8"))
    write_keras_with_description(kept, run.model_path, description)


def _controller_stopped(config: Config, reductions: int, done: int) -> bool:
    """Whether the reference's controller ended training before its last epoch: `stop_patience` reductions
    without improvement (only the adaptive schedule reduces), read from the live controller or a saved state.
    """
    return config.schedule == "adaptive" and reductions >= config.stop_patience and done < config.epochs


def _status(config: Config, loop: Loop, state: dict[str, Any] | None, stopped: TrainingStopped | None, *,
            finalize: bool) -> Status:
    done = loop.checkpoint.state["epoch"]
    halted = loop.prompt is not None and loop.prompt.halted
    early = _controller_stopped(config, loop.controller.reductions, done)
    if finalize:  # a run killed before its status was written says how it ended through its controller's state
        if state["status"] in COMPLETE:
            return Status(state["status"])
        return Status.STOPPED_EARLY if early else Status.FINISHED
    if stopped and not (halted or early):  # a signal after the user's or the controller's decision changes nothing
        return Status(stopped.kind)
    if halted:
        return Status.HALTED
    if early:
        return Status.STOPPED_EARLY
    return Status.FINISHED


def _evaluate(run: Run, images: dict[str, np.ndarray] | None, checkpoint: RunCheckpoint,
              stopped: TrainingStopped | None, console: Console) -> None:
    """The final evaluation on one device; after a stop, on val and test only, then the resume command."""
    if not stopped:
        with distribute.single_device():  # every image counts, on one device, with no partner processes
            evaluate_run(run.path, images=images, progress=console.progress, echo=console.echo)
        return
    with distribute.single_device():
        metrics = evaluate_run(run.path, images=images, progress=console.progress, echo=console.echo,
                               out_name="eval-interrupted", splits=("val", "test"))
    saved = checkpoint.saved()
    raise TrainingStopped(f"{stopped.reason}. {saved[0].upper()}{saved[1:]}; the best so far is model.keras, "
                          f"evaluated in {metrics['eval_dir']}. "
                          + _next_step(run, stopped.kind, checkpoint.state["learning_rate"]),
                          stopped.kind, stopped.exit_code)


def _next_step(run: Run, kind: str, rate: float) -> str:
    """What to run after a stop: the resume command; after a NaN, with a tenth of the rate (`rate`, the one
    training stopped at), or a new run where the schedule's rates are in the saved optimizer and a resume
    would meet the same NaN.
    """
    if kind != Status.NAN:
        return f"Resume with: cxr train --resume {run}"
    config = run.config()
    if config.schedule == "adaptive":
        return f"Resume with: cxr train --resume {run} --learning-rate {rate / 10:.2g}"
    return (f"Its {config.schedule} schedule cannot change on --resume: start a new run with a lower peak rate, "
            f"e.g. --learning-rate {config.learning_rate / 10:.2g}")


def _resume_hint(run: Run, checkpoint: RunCheckpoint) -> str:
    return f"In {run}, {checkpoint.saved()}. Resume with: cxr train --resume {run}"
