"""`cxr compare`: side-by-side headline metrics from each run's newest evaluation."""

import json
import shutil

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
