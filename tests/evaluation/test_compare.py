"""`cxr compare`: side-by-side headline metrics from each run's newest evaluation."""

import json
import shutil

import pandas as pd
import pytest

from cxr.cli import main
from cxr.evaluation.compare import compare_runs


def test_compare_reads_the_newest_evaluation_of_each_run(tiny_run, tmp_path, capsys):
    other = shutil.copytree(tiny_run, tmp_path / "other", ignore=shutil.ignore_patterns(".lock"))
    metrics = json.loads((other / "eval" / "metrics.json").read_text())
    metrics["clinical"]["overall"]["accuracy"] = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}
    (other / "eval-10").mkdir()
    (other / "eval-10" / "metrics.json").write_text(json.dumps(metrics))
    (other / "eval-2").mkdir()  # an evaluation that never finished: no metrics.json
    table = compare_runs([tiny_run, other])
    assert list(table.columns) == [tiny_run.name, "other"]
    assert table.loc["evaluation"].tolist() == ["eval", "eval-10"]
    assert table.loc["accuracy", "other"] == "0.500 (0.250-0.750)"
    f1 = json.loads((tiny_run / "eval" / "metrics.json").read_text())["clinical"]["macro"]["f1"]
    assert table.loc["macro F1", tiny_run.name] == f"{f1['value']:.3f} ({f1['ci_low']:.3f}-{f1['ci_high']:.3f})"

    assert main(["compare", str(tiny_run), str(other)]) == 0
    assert "0.500 (0.250-0.750)" in capsys.readouterr().out
    assert main(["compare", str(tmp_path)]) == 2
    assert "no evaluation with metrics.json" in capsys.readouterr().err


def _evaluation(folder, files, truth, predicted, classes=("COVID", "Normal"), groups=None):
    """An evaluation folder with a metrics.json and the predictions the paired comparison reads."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"splits": {"test": {"images": len(files)}}, "classes": classes}))
    frame = pd.DataFrame({"file": files, "true_label": truth, "predicted_label": predicted,
                          "correct": [t == p for t, p in zip(truth, predicted, strict=True)]})
    if groups is not None:
        frame["group"] = groups
    frame.to_csv(folder / "predictions_test.csv", index=False)
    return folder


def test_two_evaluations_of_the_same_images_get_a_paired_comparison(tmp_path, capsys):
    from scipy.stats import binomtest

    files = [f"img{i:03d}.png" for i in range(100)]
    truth = ["COVID"] * 50 + ["Normal"] * 50
    wrong = {"COVID": "Normal", "Normal": "COVID"}
    # A wrong on 0-19, B wrong on 0-9 and 90-91: A right and B wrong on 2, A wrong and B right on 10.
    a = [wrong[t] if i < 20 else t for i, t in enumerate(truth)]
    b = [wrong[t] if i < 10 or i in (90, 91) else t for i, t in enumerate(truth)]
    first = _evaluation(tmp_path / "runA" / "eval", files, truth, a)
    second = _evaluation(tmp_path / "runB" / "eval", files[::-1], truth[::-1], b[::-1])  # order does not matter
    assert main(["compare", str(first), str(second), "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "paired comparison of runA/eval and runB/eval on the same 100 images:" in printed
    assert "both right 78, only runA/eval right 2, only runB/eval right 10, both wrong 10" in printed
    p = binomtest(2, 12, 0.5).pvalue
    assert f"p = {p:.3g}" in printed and p == pytest.approx(0.0386, abs=1e-4)
    assert "accuracy: runA/eval 0.800, runB/eval 0.880, runB/eval - runA/eval +0.080" in printed

    other = _evaluation(tmp_path / "runC" / "eval", files[:90] + [f"new{i}.png" for i in range(10)],
                        truth, b)
    assert main(["compare", str(first), str(other)]) == 0
    printed = capsys.readouterr().out
    assert "no paired comparison of runA/eval and runC/eval: the image sets differ: 10 images only in runA/eval" \
        in printed
    assert "compare the unpaired table above" in printed


def test_the_paired_comparison_draws_copies_in_the_test_set_together(tmp_path, capsys):
    # 50 radiographs each in the test set twice (as a split with near copies can hold them): the interval of
    # the difference must be the 50 radiographs', not 100 independent images'.
    files = [f"img{i:03d}.png" for i in range(100)]
    truth = (["COVID"] * 25 + ["Normal"] * 25) * 2
    wrong = {"COVID": "Normal", "Normal": "COVID"}
    a = [wrong[t] if i % 50 < 12 else t for i, t in enumerate(truth)]
    b = [wrong[t] if i % 50 < 4 else t for i, t in enumerate(truth)]
    groups = list(range(50)) * 2

    def interval(printed):
        line = next(line for line in printed.splitlines() if line.strip().startswith("accuracy:"))
        low, high = (float(x) for x in line.split("95 % CI ")[1].rstrip(")").split(" to "))
        return high - low

    widths = {}
    for name, grouped in (("image", None), ("group", groups)):
        first = _evaluation(tmp_path / name / "runA" / "eval", files, truth, a, groups=grouped)
        second = _evaluation(tmp_path / name / "runB" / "eval", files, truth, b, groups=grouped)
        assert main(["compare", str(first), str(second), "--bootstrap", "500"]) == 0
        printed = capsys.readouterr().out
        assert ("the bootstrap draws copies of one radiograph together" in printed) == (grouped is not None)
        widths[name] = interval(printed)
    assert widths["group"] > 1.2 * widths["image"]
