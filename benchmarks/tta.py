"""Does test-time flip help? Each given run evaluated with and without `--tta flip`, on its own test split
and (with --data) on an external folder, compared image by image.

Protocol: the same trained model, the same images, the only change the flip average; so the comparison is
paired (cxr.evaluation.paired: the accuracy and macro-F1 differences with a paired stratified bootstrap 95 %
interval, and McNemar's exact test on the images only one of the two got right). Several runs (seeds) give
the spread between models; the per-run intervals give the noise of the image sample. The evaluations are
written into each run like any `cxr evaluate` (new `eval-N/` and `external-<name>-N/` folders).

    .venv/bin/python benchmarks/tta.py RUN [RUN ...] [--data DIR --name NAME] [--bootstrap 1000]

Prints a table and writes benchmarks/results/tta-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import machine_info, save_result  # noqa: E402

from cxr.evaluation.evaluate import evaluate_run  # noqa: E402
from cxr.evaluation.external import evaluate_external  # noqa: E402
from cxr.evaluation.paired import comparison_lines, paired_comparison, shared_groups  # noqa: E402


def _predictions(eval_dir: str, scored: str) -> pd.DataFrame:
    return pd.read_csv(Path(eval_dir) / f"predictions_{scored}.csv").sort_values("file").reset_index(drop=True)


def _paired(plain: dict, flipped: dict, scored: str, classes: list[str], resamples: int) -> dict:
    a, b = _predictions(plain["eval_dir"], scored), _predictions(flipped["eval_dir"], scored)
    assert (a["file"] == b["file"]).all(), "the same images with and without the flip"
    index = {name: k for k, name in enumerate(classes)}
    codes = [frame.map(index).to_numpy() for frame in (a["true_label"], a["predicted_label"], b["predicted_label"])]
    groups = [frame["group"] for frame in (a, b) if "group" in frame]  # copies of one radiograph drawn together
    result = paired_comparison(*codes, n_resamples=resamples, seed=0, copies=shared_groups(*groups) if groups else None)
    return {"images": result["images"], "eval_none": plain["eval_dir"], "eval_flip": flipped["eval_dir"],
            "accuracy": result["accuracy"], "macro_f1": result["macro_f1"], "mcnemar": result["mcnemar"],
            "verdict": comparison_lines(result, "no flip", "flip")[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", help="an external labelled folder to compare on as well")
    parser.add_argument("--name", default="tta-check")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    rows, records = [], []
    for run in args.runs:
        quiet = {"progress": False, "echo": lambda _: None, "bootstrap": args.bootstrap}
        internal = {mode: evaluate_run(run, tta=mode, **quiet) for mode in ("none", "flip")}
        classes = internal["none"]["classes"]
        record = {"run": run, "test": _paired(internal["none"], internal["flip"], "test", classes, args.bootstrap)}
        if args.data:
            external = {mode: evaluate_external(run, args.data, args.name, tta=mode, **quiet)
                        for mode in ("none", "flip")}
            record["external"] = _paired(external["none"], external["flip"], "external", classes, args.bootstrap)
        records.append(record)
        for scored in ("test", "external"):
            if scored in record:
                r = record[scored]
                accuracy = r["accuracy"]
                rows.append({"run": Path(run).name, "images": f"{scored} ({r['images']})",
                             "accuracy, no flip": r["accuracy"]["a"], "accuracy, flip": r["accuracy"]["b"],
                             "difference (95 % CI)": f"{accuracy['difference']:+.3f} ({accuracy['ci_low']:+.3f} to "
                                                     f"{accuracy['ci_high']:+.3f})",
                             "macro F1 difference": f"{r['macro_f1']['difference']:+.3f}",
                             "McNemar p": f"{r['mcnemar']['p_value']:.3g}"})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    differences = [r[s]["accuracy"]["difference"] for r in records for s in ("test", "external") if s in r]
    summary = {"mean_accuracy_difference": float(np.mean(differences)),
               "sd_accuracy_difference": float(np.std(differences, ddof=1)) if len(differences) > 1 else None}
    path = save_result(args.out, "tta", {"protocol": __doc__, "machine": machine_info(), "runs": records,
                                         "summary": summary})
    print(f"mean accuracy difference (flip - none) over {len(differences)} comparisons: "
          f"{summary['mean_accuracy_difference']:+.4f}; written to {path}")


if __name__ == "__main__":
    main()
