"""Training jobs: a new run (`train`) and the continuation of an unfinished one (`resume`).

Everything a run produces goes into its own new folder (see `files.new_run_dir`). After every
epoch the run saves what it needs to continue (see `checkpoint`); Ctrl-C or SIGTERM stops at the
next batch, evaluates the best model so far and says how to resume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from cxr import files
from cxr.backend import enable_compilation_cache, enable_determinism
from cxr.config import Config
from cxr.data.batches import ImageBatches, label_indices
from cxr.data.cache import load_split_images, resolve_cache_dir
from cxr.data.prepare import prepare_split, summary_table
from cxr.data.split import SPLITS, Split, read_split, write_split
from cxr.environment import software
from cxr.errors import ConfigError, DatasetError, UserError
from cxr.evaluation.evaluate import evaluate_run, read_run_config
from cxr.model import build_model, compile_model, load_model, resolve_weights
from cxr.precision import hardware_note, model_precision
from cxr.run import CONFIG_FILE, recorded_environment
from cxr.training import distribute
from cxr.training.checkpoint import RunCheckpoint, lock_run, read_state, set_seed_states
from cxr.training.controller import AdaptiveLR, current_learning_rate
from cxr.training.history import EpochLog
from cxr.training.prompt import AskToContinue
from cxr.training.stopping import StopGuard, StopSignals, TrainingStopped, terminal_reader

Reader = Callable[[str], "str | None"]


def train(config: Config, progress: bool = True, echo=print, read: Reader | None = None) -> Path:
    """Run a training job described by a validated Config; return its run folder.

    `read` answers the ask-to-continue prompt (default: the terminal, when stdin is one).
    """
    # Fail fast, before any long work: missing folders, then missing weights.
    for kind, folder in (("dataset", config.data), ("split", config.split)):
        if folder and not Path(folder).expanduser().is_dir():
            raise DatasetError(f"{kind} folder not found: {folder}")
    resolve_weights(config.weights, config.backbone)
    if config.deterministic:
        enable_determinism()  # before anything starts the backend
    placement = distribute.plan(config.distribute)
    distribute.global_batch(config.batch_size, config.per_device_batch, placement.replicas)  # fails fast
    if not placement.chief:  # the same split from the same data and seed; process 0 writes the run
        split = prepare_split(config, False, _quiet)
        distribute.agree(placement, _split_bytes(split), "splits")
        _check_not_empty(split)  # process 0 stops here too, so no process may go on alone
        resolved = Config(**{**config.to_dict(), "data": split.root, "classes": split.classes})
        with tempfile.TemporaryDirectory(prefix="cxr-worker-") as scratch:
            return _fit_and_evaluate(Path(scratch), resolved, split, None, False, _quiet, None, placement=placement)
    split = prepare_split(config, progress, echo)
    distribute.agree(placement, _split_bytes(split), "splits")
    run_dir = files.new_run_dir(config.runs_dir, config.name)
    with lock_run(run_dir):
        echo(f"run folder: {run_dir}")
        write_split(split, run_dir / "split")
        resolved = Config(**{**config.to_dict(), "data": split.root, "classes": split.classes})
        files.write_text(run_dir / CONFIG_FILE, resolved.to_yaml(environment=software()))
        echo(summary_table(split).to_string())
        groups = split.duplicates["group"].nunique() if len(split.duplicates) else 0
        echo(f"duplicate groups kept within one split: {groups} ({len(split.duplicates)} images)")
        _check_not_empty(split)
        return _fit_and_evaluate(run_dir, resolved, split, None, progress, echo, read, placement=placement)


def _split_bytes(split: Split) -> bytes:
    """The split's files, labels and classes, for comparing the splits of a job's processes."""
    return "\n".join([",".join(split.classes), *(split.frames[name][["file", "label"]].to_csv(index=False)
                                                   for name in SPLITS)]).encode()


def _check_not_empty(split: Split) -> None:
    empty = [name for name in SPLITS if len(split.frames[name]) == 0]
    if empty:
        raise DatasetError(f"the {', '.join(empty)} split(s) are empty: the dataset is too small to split")


COMPLETE = ("finished", "halted", "stopped early")  # statuses after which training ended by design


def resume(run_dir: str | os.PathLike, epochs: int | None = None, learning_rate: float | None = None,
           progress: bool = True, echo=print, read: Reader | None = None) -> Path:
    """Continue a run from its last completed epoch.

    `epochs` trains to that epoch in all (also a complete run, with a fresh allowance of rate
    reductions); `learning_rate` replaces the current rate (after a NaN loss, say).
    """
    run_dir = Path(run_dir)
    config = Config(**read_run_config(run_dir)).validate()
    if config.deterministic:
        enable_determinism()  # before anything starts the backend
    placement = distribute.plan(config.distribute)
    chief = placement.chief  # every process makes the same checks; process 0 alone writes and speaks
    if not chief:
        progress, echo, read = False, _quiet, None
    with lock_run(run_dir) if chief else contextlib.nullcontext():
        state = read_state(run_dir)
        if state is None and any((run_dir / name).exists() for name in ("history.csv", "model.keras")):
            raise UserError(f"{run_dir} has no checkpoints/state.json: it was trained by an earlier version of "
                            "cxr without resumable checkpoints; start a new run")
        done = state["epoch"] if state else 0
        complete = state is not None and (state.get("status") in COMPLETE or done >= config.epochs)
        finalize = False
        if epochs is not None:
            if epochs <= done:
                raise ConfigError(f"{run_dir} has trained {done} epoch(s) already; --epochs must be more than that")
            config.epochs = epochs
            if chief:
                files.write_text(run_dir / CONFIG_FILE, config.validate().to_yaml(recorded_environment(run_dir)))
            if state:
                state["adaptive"].update(wait=0, reductions=0)
        elif complete and (run_dir / "eval").is_dir():
            raise ConfigError(f"{run_dir} is complete ({state.get('status')} after epoch {done} of {config.epochs}); "
                              f"to train longer, add --epochs N with N > {done} (cxr evaluate {run_dir} evaluates "
                              "it again)")
        elif complete:
            finalize = True  # training ended but its final evaluation did not: finish that
        if learning_rate is not None and not learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {learning_rate!r}")
        _global_batch(config, state, placement)  # fails fast when the devices changed
        if chief:
            files.remove_temporaries(run_dir, echo)
        split = read_split(run_dir / "split")
        echo(f"resuming {run_dir} after epoch {done} of {config.epochs}"
             + (": training is complete, evaluating it" if finalize else ""))
        if finalize and placement.replicas > 1:  # evaluation alone: one device, no partner processes
            distribute.leave_processes(placement)
            keras.distribution.set_distribution(None)
            if not chief:
                return None
            placement = distribute.Plan(placement.devices[:1])
        if not chief:
            with tempfile.TemporaryDirectory(prefix="cxr-worker-") as scratch:
                return _fit_and_evaluate(Path(scratch), config, split, state, False, _quiet, None,
                                         learning_rate=learning_rate, placement=placement, source=run_dir)
        return _fit_and_evaluate(run_dir, config, split, state, progress, echo, read,
                                 learning_rate=learning_rate, finalize=finalize, placement=placement)


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


def _quiet(_: str) -> None:
    """Processes other than 0 print nothing: process 0 speaks for the job."""


def _fit_and_evaluate(run_dir: Path, config: Config, split: Split, state: dict[str, Any] | None,
                      progress: bool, echo, read: Reader | None, learning_rate: float | None = None,
                      finalize: bool = False, placement: distribute.Plan | None = None,
                      source: Path | None = None) -> Path | None:
    """Train, then evaluate in process 0. A process other than 0 writes into a scratch `run_dir`:
    saving a model is a collective step in a JAX job, so every process saves when process 0 does.
    `source` is the run whose checkpoints a resume starts from (default `run_dir`)."""
    classes = split.classes
    placement = placement or distribute.Plan(("cpu:0",))
    batch = _global_batch(config, state, placement)
    # In a job of several processes each decodes only its shard of train and val, and process 0
    # evaluates on its own afterwards; one process decodes every split once, for both.
    frames = ({name: split.frames[name].iloc[placement.shard(len(split.frames[name]))] for name in ("train", "val")}
              if placement.process_count > 1 else split.frames)
    try:
        # Beside the run folder; a process other than 0 starting a new run has only a scratch folder.
        runs_dir = (source or run_dir).parent if placement.chief or source else Path(config.runs_dir)
        cache_dir = resolve_cache_dir(config.cache_dir, runs_dir)
        arrays = {name: load_split_images(cache_dir, split.root, frame["file"], config.image_size,
                                          config.workers, progress, desc=f"decode {name}", echo=echo)
                  for name, frame in frames.items()}
    except KeyboardInterrupt:
        raise TrainingStopped(f"interrupted before training; resume with: cxr train --resume {run_dir}",
                              "interrupted", 130) from None
    labels = {name: label_indices(frame["label"], classes) for name, frame in frames.items()}

    if cache_dir is not None:
        enable_compilation_cache(cache_dir / "xla")
    keras.utils.set_random_seed(config.seed)
    folder = (source or run_dir) / "checkpoints"
    best_weights = None
    with placement.scope():
        if state:
            model = load_model(folder / state["model"])  # weights, optimizer state and learning rate
            set_seed_states(model, state["seed_states"])
            if state.get("best_model"):
                best_weights = load_model(folder / state["best_model"]).get_weights()
            if learning_rate is not None:
                echo(f"learning rate {current_learning_rate(model):.2e} -> {learning_rate:.2e}")
                model.optimizer.learning_rate = learning_rate
        else:
            note = hardware_note(config.precision)
            if note:
                echo(f"note: {note}")
            model = build_model(len(classes), config.image_size, config.weights, config.backbone,
                                config.bn_momentum, config.precision)
            rate = config.learning_rate
            if config.scale_learning_rate and batch != config.batch_size:
                rate = distribute.scaled_learning_rate(config.learning_rate, config.batch_size, batch)
                echo(f"learning rate {config.learning_rate:.2e} x {batch}/{config.batch_size} = {rate:.2e} "
                     "(linear scaling rule)")
            compile_model(model, rate)
    distribute.synchronize_batch_norm(model, placement)
    per_process = batch // placement.process_count
    train_batches = ImageBatches(arrays["train"], labels["train"], len(classes), per_process,
                                 shuffle=True, seed=config.seed + placement.process_id,
                                 multiple_of=placement.batch_multiple)
    val_batches = ImageBatches(arrays["val"], labels["val"], len(classes), per_process,
                               multiple_of=placement.batch_multiple)
    for name, batches in (("train", train_batches), ("val", val_batches)):
        if batches.used < len(batches.images):
            echo(f"note: each epoch uses {batches.used} of this process's {len(batches.images)} {name} images: a "
                 f"short last batch is cut to a multiple of the {placement.batch_multiple} devices it is split over "
                 "(the final evaluation uses every image)")

    adaptive = AdaptiveLR(config.threshold, config.patience, config.factor, config.stop_patience, config.dwell)
    if state:
        adaptive.set_state(state["adaptive"], best_weights)
    log = EpochLog(config.epochs, echo, adaptive, rows=state["history"] if state else None)
    checkpoint = RunCheckpoint(run_dir, config.epochs, log, adaptive, state=state, ask_epoch=config.ask_epoch)
    checkpoint.state["global_batch"] = batch
    signals = StopSignals(on_second=lambda: _resume_hint(run_dir, checkpoint))
    several = placement.process_count > 1  # the other processes could not learn the answer
    if read is None and config.ask_epoch and sys.stdin.isatty() and not finalize and not several:
        read = terminal_reader(signals)
    asker = None
    if read is not None and config.ask_epoch and not several:
        asker = AskToContinue(config.ask_epoch, config.epochs, read, echo, on_answer=checkpoint.record_answer)
        asker.set_state(checkpoint.state.get("ask", {}))
        checkpoint.asker = asker
    elif config.ask_epoch and not finalize:
        echo("not asking whether to continue: " + ("the job has several processes" if several
                                                    else "standard input is not a terminal"))

    if not finalize:
        echo(f"training {model.name} ({model.count_params():,} parameters) to epoch {config.epochs} "
             f"at {config.image_size}px, batch {batch}, backend {keras.backend.backend()}, "
             f"{model_precision(model)}" + (", deterministic" if config.deterministic else ""))
        echo(f"devices: {placement.describe()}"
             + (f", {batch // placement.replicas} images per device per step" if placement.replicas > 1 else ""))
    # On a terminal, Keras' progress bar; its logger goes before EpochLog so that the epoch line is
    # printed after the bar's last update rather than inside it. Elsewhere, the epoch lines only.
    bar = progress and sys.stdout.isatty()
    callbacks = [StopGuard(signals),
                 keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: train_batches.set_epoch(epoch)),
                 adaptive, *([keras.callbacks.ProgbarLogger()] if bar else []), log, checkpoint,
                 *([asker] if asker else [])]
    stopped = None
    try:
        with signals:
            # shuffle=False: ImageBatches shuffles itself, reproducibly; Keras would reorder batches
            # with Python's global random state, which a resumed process cannot reproduce.
            if not finalize:
                model.fit(train_batches, validation_data=val_batches, epochs=config.epochs,
                          initial_epoch=checkpoint.state["epoch"], callbacks=callbacks, verbose=1 if bar else 0,
                          shuffle=False)
    except TrainingStopped as error:
        stopped = error
        adaptive.on_train_end()  # Keras skips it when fit raises; the model in memory gets the best too
    if stopped is None and signals.received:  # it came after the last batch: stop before the long evaluation
        stopped = signals.stopped("after the last epoch")
    distribute.leave_processes(placement)  # the rest is process 0's alone
    if not placement.chief:
        if stopped:  # the job's exit status, from every process
            raise stopped
        return None

    done = checkpoint.state["epoch"]
    if finalize:
        status = state["status"] if state["status"] in COMPLETE else "finished"
    elif stopped:
        status = stopped.kind
    elif asker is not None and asker.halted:
        status = "halted"
    elif adaptive.reductions >= adaptive.stop_patience and done < config.epochs:
        status = "stopped early"
    else:
        status = "finished"
    if done == 0:
        hint = (f"; start it again with: cxr train --resume {run_dir}" if status == "interrupted"
                else "; start a new run with a lower --learning-rate" if status == "nan" else "")
        raise TrainingStopped(f"{stopped.reason if stopped else 'training stopped'}. No epoch was completed, so "
                              f"no model was saved{hint}", status, stopped.exit_code if stopped else 1)
    checkpoint.commit(status)
    kept = checkpoint.best_model_path or checkpoint.last_model_path
    best = checkpoint.state.get("best_epoch")
    echo(f"training {status} after epoch {done} of {config.epochs}; "
         + (f"the best epoch ({best}) is kept as model.keras" if best
            else "no epoch improved on the initial weights, which are kept as model.keras"))
    with files.atomic_path(run_dir / "model.keras") as tmp:
        shutil.copyfile(kept, tmp)

    images = None if placement.process_count > 1 else arrays  # a shard is not the split
    if stopped:
        with distribute.single_device():
            metrics = evaluate_run(run_dir, images=images, progress=progress, echo=echo,
                                   out_name="eval-interrupted", splits=("val", "test"))
        command = f"cxr train --resume {run_dir}"
        if stopped.kind == "nan":
            command += f" --learning-rate {checkpoint.state['learning_rate'] / 10:.2g}"
        raise TrainingStopped(f"{stopped.reason}. {_saved(done).capitalize()}; the best so far is model.keras, "
                              f"evaluated in {metrics['eval_dir']}. Resume with: {command}",
                              stopped.kind, stopped.exit_code)
    with distribute.single_device():  # every image counts, on one device, with no partner processes
        evaluate_run(run_dir, images=images, progress=progress, echo=echo)
    return run_dir


def _resume_hint(run_dir: Path, checkpoint: RunCheckpoint) -> str:
    return f"In {run_dir}, {_saved(checkpoint.saved_epoch)}. Resume with: cxr train --resume {run_dir}"


def _saved(done: int) -> str:
    return "no epoch was completed" if done == 0 else "epoch 1 is saved" if done == 1 else f"epochs 1-{done} are saved"
