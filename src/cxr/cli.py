"""The `cxr` command: a thin layer over the library functions of the same names."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cxr.config import AUGMENTATIONS, BACKBONES, DEFAULT_RECIPE, DISTRIBUTE, OPTIMIZERS, PRECISIONS, RECIPES, SCHEDULES
from cxr.errors import UserError
from cxr.inference.engines import ENGINES
from cxr.inference.tta import TTA_MODES

__all__ = ["build_parser", "main"]

# Quiet TensorFlow's start-up chatter unless the user asked for it; must precede any keras import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")



def _classes(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {text!r}") from None


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset folder: <Class>/images/*.png (Kaggle) or <Class>/*.png|jpg")
    parser.add_argument("--classes", type=_classes, help="comma-separated class folders to use (default: all)")
    parser.add_argument("--seed", type=int, help="seed for the split and training (default 42)")
    parser.add_argument("--split-fractions", type=_fractions, help="train,val,test (default 0.8,0.1,0.1)")
    parser.add_argument("--duplicate-distance", type=int,
                        help="images whose 256-bit perceptual hashes differ in at most this many bits are "
                             "copies (default 20; -1: exact copies only)")
    parser.add_argument("--workers", type=int, help="image decoding threads (default: one per core)")
    parser.add_argument("--cache-dir", help="decoded-image cache: auto (<runs-dir>/cache, default), none, or a folder")


def add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", type=int, metavar="N",
                        help="stratified bootstrap resamples for the test metrics' 95%% intervals "
                             "(default 1000; 0: none)")
    parser.add_argument("--bootstrap-seed", type=int, metavar="SEED", help="default 0")


def add_tta_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", choices=TTA_MODES, default="none",
                        help="flip: average each image's probabilities with its mirror image's")


def build_parser() -> argparse.ArgumentParser:
    """The `cxr` parser: one sub-command per verb, each added by its own function below."""
    from cxr.environment import version_line

    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray classification with DenseNet169 on Keras 3.")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="the versions of cxr, Keras and the active backend, and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_download, _add_split, _add_train, _add_evaluate, _add_predict, _add_compare,
                _add_explain, _add_serve, _add_export, _add_package):
        add(commands)
    return parser


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="train and evaluate on a built-in synthetic dataset (no download)")
    demo.add_argument("--runs-dir", default="runs")
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--per-class", type=int, default=None, help="phantom images per class")
    demo.add_argument("--backbone", choices=BACKBONES, default="densenet169")
    demo.add_argument("--precision", choices=PRECISIONS, default="fp32")


def _add_split(commands) -> None:
    split = commands.add_parser("split", help="scan a dataset and write a train/val/test split")
    add_data_options(split)
    split.add_argument("--out", required=True, help="folder to write the split into (must not exist)")


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a classifier; writes a new run folder")
    add_data_options(train)
    train.add_argument("--config", help="YAML file of settings (flags override it)")
    train.add_argument("--split", help="reuse the split in this folder (train/val/test.csv)")
    train.add_argument("--name", help="run name (the folder is runs/<time>-<name>)")
    train.add_argument("--runs-dir", help="where run folders go (default runs)")
    train.add_argument("--epochs", type=int, help="default 100")
    train.add_argument("--batch-size", type=int, help="default 16")
    train.add_argument("--image-size", type=int, help="square input size in pixels (default 224)")
    train.add_argument("--learning-rate", type=float, help="Adamax learning rate (default 0.001)")
    train.add_argument("--weights", help="imagenet (default), none, or a DenseNet169 no-top .h5 file")
    train.add_argument("--tensorboard", action="store_true", default=None,
                       help="write Keras' TensorBoard logs into RUN/tensorboard/ (default: when the tensorboard "
                            "package is installed)")
    train.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                       help="no TensorBoard logs")
    train.add_argument("--init-from", metavar="RUN",
                       help="start from a trained run's model (or a .keras file, or a cxr package folder): its "
                            "backbone, and its head when the classes are the same; --weights is then not used")
    train.add_argument("--backbone", choices=BACKBONES, help="default densenet169")
    train.add_argument("--precision", choices=PRECISIONS,
                       help="fp32 (default), or mixed precision: bf16/fp16 compute, float32 weights (GPUs; "
                            "CPUs with AVX512-BF16 for bf16)")
    train.add_argument("--bn-momentum", type=float,
                       help="backbone batch-norm momentum (default: Keras' 0.99; 0.9 for short runs from scratch)")
    _add_ingredient_options(train)
    add_bootstrap_options(train)
    _add_parallel_options(train)
    _add_control_options(train)


def _add_ingredient_options(train: argparse.ArgumentParser) -> None:
    ingredients = train.add_argument_group("training ingredients beyond the reference system's (set by --recipe)")
    ingredients.add_argument("--recipe", choices=RECIPES,
                             help=f"start from a named set of the ingredients below (default {DEFAULT_RECIPE}; "
                                  "each flag still overrides its own): " + "; ".join(
                                      f"{name}: {', '.join(f'{k}={v}' for k, v in values.items()) or 'the defaults'}"
                                      for name, values in RECIPES.items()))
    ingredients.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                             help="no random horizontal flips in training (the heart is on the left of a chest film)")
    ingredients.add_argument("--augment", choices=AUGMENTATIONS,
                             help="radiograph: training-only small rotations, shifts, zooms, brightness and contrast "
                                  "(default none)")
    ingredients.add_argument("--label-smoothing", type=float, metavar="S",
                             help="train towards 1-S on the true class and S/classes elsewhere (default 0)")
    ingredients.add_argument("--class-balance", action="store_true", default=None,
                             help="weight each class's images by N / (classes x images of the class)")
    ingredients.add_argument("--no-class-balance", dest="class_balance", action="store_false", default=None,
                             help="no class weights (when a recipe or --config file turns them on)")
    ingredients.add_argument("--optimizer", choices=OPTIMIZERS, help="adamax (default, the reference's) or adamw")
    ingredients.add_argument("--weight-decay", type=float, metavar="W", help="decoupled weight decay (default 0)")
    ingredients.add_argument("--schedule", choices=SCHEDULES,
                             help="adaptive (default): the reference's controller; cosine: linear warm-up, then "
                                  "cosine decay to 0 by the last epoch, keeping the best epoch's weights")
    ingredients.add_argument("--warmup-epochs", type=int, metavar="N",
                             help="epochs of linear warm-up under --schedule cosine (default 1)")


def _add_parallel_options(train: argparse.ArgumentParser) -> None:
    parallel = train.add_argument_group("several devices and hosts (see README: Training on GPUs and clusters)")
    parallel.add_argument("--distribute", choices=DISTRIBUTE,
                          help="auto (default): data parallel over every local GPU and every process of the job; "
                               "none: one device")
    parallel.add_argument("--per-device-batch", type=int, metavar="N",
                          help="global batch = N x devices (default: the global batch is --batch-size)")
    parallel.add_argument("--scale-learning-rate", action="store_true", default=None,
                          help="multiply the learning rate by global batch / --batch-size (linear scaling rule)")
    parallel.add_argument("--coordinator", metavar="HOST:PORT",
                          help="JAX only: process 0's address, to join a job of several processes "
                               "(or KERAS_DISTRIBUTION_JOB_ADDRESSES)")
    parallel.add_argument("--num-processes", type=int,
                          help="processes in the job (or KERAS_DISTRIBUTION_NUM_PROCESSES)")
    parallel.add_argument("--process-id", type=int,
                          help="this process's number, 0 to N-1; 0 writes the run (or KERAS_DISTRIBUTION_PROCESS_ID)")


def _add_control_options(train: argparse.ArgumentParser) -> None:
    control = train.add_argument_group("learning-rate controller and training control (the reference's callback)")
    control.add_argument("--threshold", type=float,
                         help="monitor training accuracy until it reaches this, then val_loss (default 0.9)")
    control.add_argument("--patience", type=int, help="epochs without improvement before the rate drops (default 1)")
    control.add_argument("--factor", type=float, help="multiply the learning rate by this on a drop (default 0.5)")
    control.add_argument("--stop-patience", type=int,
                         help="stop after this many drops without improvement (default 3)")
    control.add_argument("--no-dwell", dest="dwell", action="store_false", default=None,
                         help="keep the current weights on a drop instead of going back to the best")
    control.add_argument("--ask-epoch", type=int,
                         help="after this epoch ask whether to go on (default 5; 0 never; only on a terminal)")
    control.add_argument("--deterministic", action="store_true", default=None,
                         help="deterministic kernels: the same seed gives the same history")
    control.add_argument("--checkpoint-every", type=float, metavar="MINUTES",
                         help="save inside an epoch this often, so that an interrupt loses at most this much "
                              "(default 10; 0: only at epoch ends; a stop signal always saves)")
    control.add_argument("--resume", metavar="RUN",
                         help="continue this run from where it was saved (with --epochs: train to that epoch; "
                              "with --learning-rate: from that rate; with --checkpoint-every: save that often)")


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="evaluate a finished run again, or on a labelled folder from "
                                                    "elsewhere (--data)")
    evaluate.add_argument("run", help="run folder (runs/<time>-<name>)")
    evaluate.add_argument("--data", help="external validation: a labelled folder (<Class>/images/* or <Class>/*; PNG, "
                                         "JPEG, DICOM) outside the run's split; writes RUN/external-<name>/")
    evaluate.add_argument("--name", help="what to call the --data folder (default: its folder name)")
    evaluate.add_argument("--keep-overlap", action="store_true",
                          help="keep --data images that are copies of the run's training or validation images "
                               "(left out by default; always listed in overlap.csv)")
    evaluate.add_argument("--target-sensitivity", metavar="CLASS=S,...",
                          help="sensitivity each class's operating point must reach on val (default 0.95 for "
                               "every class but Normal; e.g. COVID=0.97,Normal=0.9)")
    add_tta_option(evaluate)
    evaluate.add_argument("--batch-size", type=int)
    add_bootstrap_options(evaluate)


def _add_predict(commands) -> None:
    predict = commands.add_parser("predict", help="class probabilities for image files and folders")
    predict.add_argument("model", help="a model.keras file, or a run folder")
    predict.add_argument("paths", nargs="+", help="image files and folders (searched recursively)")
    predict.add_argument("--csv", help="also write the table to this CSV file (must not exist)")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--engine", choices=ENGINES, default="auto",
                         help="onnx: ONNX Runtime on the exported model.onnx (no TensorFlow needed); onnx-int8: "
                              "on model.int8.onnx (cxr export --quantize int8); auto (default): onnx when the run "
                              "has a current fp32 export, else keras")
    predict.add_argument("--calibrated", action="store_true",
                         help="temperature-scaled probabilities (the temperature the newest evaluation of this "
                              "model fitted on val)")
    predict.add_argument("--precision", choices=PRECISIONS,
                         help="compute precision for the keras engine (default: the model's own)")
    add_tta_option(predict)
    predict.add_argument("--operating-points", metavar="RUN_OR_FILE",
                         help="add positive/negative per class at the thresholds chosen on validation: a run "
                              "(its newest evaluation of this model) or an operating_points.json")


def _add_compare(commands) -> None:
    compare = commands.add_parser("compare", help="headline metrics of runs side by side (test and external); "
                                                  "two on the same images: a paired comparison")
    compare.add_argument("runs", nargs="+", help="run folders, or evaluation folders (RUN/eval-2, RUN/external-x)")
    add_bootstrap_options(compare)


def _add_explain(commands) -> None:
    explain = commands.add_parser("explain", help="Grad-CAM heat-map overlays for image files and folders")
    explain.add_argument("model", help="a model.keras file, or a run folder")
    explain.add_argument("paths", nargs="+", help="image files and folders (searched recursively)")
    explain.add_argument("--out", required=True, help="folder to write the overlays into (must not exist)")
    explain.add_argument("--class", dest="class_name", help="explain this class (default: each image's prediction)")


def _add_serve(commands) -> None:
    serve = commands.add_parser("serve", help="a REST API for a model (loopback only unless --host says otherwise)")
    serve.add_argument("model", help="a run folder, a model.keras or a model.onnx file")
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--engine", choices=ENGINES, default="auto")
    serve.add_argument("--max-upload-mb", type=float, default=20, help="largest accepted upload (default 20 MB)")
    serve.add_argument("--max-batch", type=int, default=None,
                       help="run up to this many concurrent requests as one batch (1: no batching; default 16 "
                            "on a GPU, 1 on CPU, where one image already keeps every core busy)")
    serve.add_argument("--batch-window-ms", type=float, default=5.0,
                       help="how long the first request of a batch waits for others (default 5 ms)")
    serve.add_argument("--operating-points", metavar="RUN_OR_FILE",
                       help="per-class thresholds to apply to each answer (default: the served run's own, when one "
                            "of its evaluations chose them for this model)")
    add_tta_option(serve)


def _add_download(commands) -> None:
    download = commands.add_parser(
        "download", help="download the COVID-19 Radiography Database from Kaggle (your Kaggle credentials)",
        description="Download the dataset with Kaggle's client (kagglehub; pip install 'cxr[download]') and print "
                    "the cxr train command to run next. Needs a Kaggle API token in ~/.kaggle/kaggle.json or in "
                    "KAGGLE_USERNAME and KAGGLE_KEY.")
    download.add_argument("--out", help="folder to download into (default: kagglehub's cache, ~/.cache/kagglehub)")


def _add_package(commands) -> None:
    package = commands.add_parser(
        "package", help="gather a trained, evaluated run into one folder to hand on (model files, card, report)",
        description="Gather what another person needs into a new folder: model.keras (and model.onnx when exported) "
                    "carrying the class names, input contract, temperature and operating points; the model card as "
                    "README.md; the newest evaluation's report.html, metrics and tables; external evaluations; the "
                    "training record. cxr predict DIR and cxr serve DIR accept the folder.")
    package.add_argument("run", help="a run folder whose current model.keras has been evaluated")
    package.add_argument("--out", required=True, help="the folder to create (must not exist)")


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="export a trained model for inference without TensorFlow")
    export.add_argument("model", help="a model.keras file, or a run folder")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--out", help="file to write (default: model.onnx, or model.int8.onnx with --quantize int8, "
                                      "beside the model; must not exist)")
    export.add_argument("--quantize", choices=["int8"],
                        help="int8: ONNX Runtime static quantisation calibrated on the run's val images, written only "
                             "if it picks the fp32 model's class on at least 99%% of its test images (use it with "
                             "--engine onnx-int8)")


def _settings(args: argparse.Namespace, names: list[str]) -> dict:
    return {name: getattr(args, name, None) for name in names}


DATA_SETTINGS = ["data", "classes", "seed", "split_fractions", "duplicate_distance", "workers", "cache_dir"]


def run_demo(args: argparse.Namespace) -> int:
    from cxr.demo import demo

    options = {k: v for k, v in _settings(args, ["epochs", "per_class"]).items() if v is not None}
    demo(runs_dir=args.runs_dir, backbone=args.backbone, precision=args.precision, **options)
    return 0


def run_split(args: argparse.Namespace) -> int:
    from cxr.config import resolve
    from cxr.data.prepare import empty_cells, prepare_split, summary_table
    from cxr.data.split import write_split

    config = resolve(**_settings(args, DATA_SETTINGS))
    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder for the split")
    split = prepare_split(config)
    write_split(split, out)
    print(summary_table(split).to_string())
    for note in empty_cells(split):
        print(note)
    print(f"skipped {len(split.skipped)} file(s); {len(split.duplicates)} image(s) in duplicate groups; "
          f"written to {out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from cxr.config import FIELDS, resolve
    from cxr.run import Run
    from cxr.training.distribute import join_processes
    from cxr.training.loop import resume, train

    settings = _settings(args, sorted(FIELDS))  # every setting of a run is a flag of `cxr train`
    if args.resume:
        others = [name for name, value in {**settings, "config": args.config}.items()
                  if value is not None and name not in ("epochs", "learning_rate", "checkpoint_every")]
        if others:
            flags = ", ".join("--" + name.replace("_", "-") for name in others)
            raise UserError(f"--resume continues a run with its saved settings; only --epochs, --learning-rate and "
                            f"--checkpoint-every may be given with it, not {flags}")
        config = Run(args.resume).config()
    else:
        config = resolve(args.config, **settings)
    join_processes(args.coordinator, args.num_processes, args.process_id, config.seed, config.deterministic)
    if args.resume:
        resume(args.resume, epochs=args.epochs, learning_rate=args.learning_rate,
               checkpoint_every=args.checkpoint_every)
    else:
        train(config)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    options = dict(batch_size=args.batch_size, bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed,
                   tta=args.tta)
    if args.data:
        from cxr.evaluation.external import evaluate_external

        if args.target_sensitivity:
            raise UserError("--target-sensitivity chooses thresholds on the run's validation split: give it to "
                            "cxr evaluate RUN (without --data); an external evaluation uses those")
        evaluate_external(args.run, args.data, args.name, keep_overlap=args.keep_overlap, **options)
        return 0
    if args.name or args.keep_overlap:
        raise UserError("--name and --keep-overlap go with --data (an external folder)")
    from cxr.evaluation.evaluate import evaluate_run

    evaluate_run(args.run, target_sensitivity=args.target_sensitivity, **options)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from cxr import files
    from cxr.inference.engines import load_predictor
    from cxr.inference.points import load_operating_points
    from cxr.inference.predict import format_table, operating_points_legend, predict_files
    from cxr.inference.tta import fitted_mismatch_notes

    if args.csv and Path(args.csv).exists():
        raise FileExistsError(f"{args.csv} already exists; choose a new file name")
    if args.calibrated and args.operating_points:
        raise UserError("--operating-points are thresholds on the model's own probabilities (chosen on them); "
                        "leave out --calibrated")
    predictor = load_predictor(args.model, args.engine, args.batch_size, precision=args.precision,
                               echo=lambda text: print(text, file=sys.stderr), calibrated=args.calibrated,
                               tta=args.tta)
    points = load_operating_points(args.operating_points, predictor) if args.operating_points else None
    calibrated = (f", temperature {float(predictor.metadata['temperature']):.3f} from "
                  f"{predictor.metadata['temperature_file']}" if args.calibrated else "")
    tta = ", test-time flip" if args.tta == "flip" else ""
    print(f"model: {predictor.path} ({predictor.engine}, {predictor.precision}{calibrated}{tta})", file=sys.stderr)
    if points:
        print(f"operating points: {points[1]}", file=sys.stderr)
    for note in fitted_mismatch_notes(args.tta, predictor.metadata["temperature_file"] if args.calibrated else None,
                                      points[0] if points else None):
        print(note, file=sys.stderr)
    frame = predict_files(predictor, args.paths, echo=lambda text: print(text, file=sys.stderr),
                          operating_points=points[0] if points else None)
    if frame.empty:
        print("no image files found in the given paths", file=sys.stderr)
        return 1
    print(format_table(frame))
    if points:
        print("\n" + "\n".join(operating_points_legend(points[0])))
    if args.csv:
        files.write_csv(args.csv, frame, new=True)  # checked before predicting; a file made since is kept too
        print(f"written to {args.csv}")
    return 0 if (frame["error"] == "").any() else 1


def run_compare(args: argparse.Namespace) -> int:
    from cxr.evaluation.compare import compare

    for line in compare(args.runs, bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed):
        print(line)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from cxr.inference.explain import explain_files

    frame = explain_files(args.model, args.paths, args.out, args.class_name)
    if frame.empty:
        print("no image files found in the given paths", file=sys.stderr)
        return 1
    return 0 if (frame["error"] == "").any() else 1


def run_serve(args: argparse.Namespace) -> int:
    from cxr.serve.app import serve

    serve(args.model, args.host, args.port, args.engine, int(args.max_upload_mb * 1024 * 1024), args.max_batch,
          args.batch_window_ms, args.operating_points, args.tta)
    return 0


def run_download(args: argparse.Namespace) -> int:
    from cxr.data.download import download_dataset

    download_dataset(args.out)
    return 0


def run_package(args: argparse.Namespace) -> int:
    from cxr.package import package_run

    package_run(args.run, args.out)
    return 0


def run_export(args: argparse.Namespace) -> int:
    # tf2onnx converts TensorFlow graphs; a .keras file from any backend loads on TensorFlow.
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    if args.quantize == "int8":
        from cxr.inference.quantize import quantize_run

        quantize_run(args.model, args.out)
        return 0
    from cxr.inference.export import export_onnx

    export_onnx(args.model, args.out)
    return 0


COMMANDS = {"demo": run_demo, "split": run_split, "train": run_train, "evaluate": run_evaluate,
            "predict": run_predict, "compare": run_compare, "explain": run_explain, "export": run_export,
            "serve": run_serve, "package": run_package, "download": run_download}


# The commands that run a model: as a program they re-execute with a faster allocator (cxr.allocator).
MODEL_COMMANDS = {"demo", "train", "evaluate", "predict", "explain", "serve", "export"}


def main(argv: list[str] | None = None) -> int:
    """Run one `cxr` command; return its exit status (2 for a usable error, 130/143 for a stop).

    Args:
        argv: the arguments; None means the program's own (then a command that runs a model first
            re-executes itself with tcmalloc or jemalloc preloaded, where one is installed).
    """
    program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command in MODEL_COMMANDS:
        from cxr import threads
        from cxr.allocator import reexec_with_allocator

        threads.configure()  # before TensorFlow starts (and before a re-execution, which inherits it)
        if program:
            reexec_with_allocator(argv)
    try:
        return COMMANDS[args.command](args)
    except (UserError, FileNotFoundError, FileExistsError) as error:
        kind = "stopped" if hasattr(error, "exit_code") else "error"  # an interrupted run is not an error
        print(f"cxr: {kind}: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except KeyboardInterrupt:
        print("cxr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
