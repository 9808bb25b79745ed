"""The per-source audit, on the real sample's metadata files."""

import json

import numpy as np
import pandas as pd
import pytest

from cxr.config import resolve
from cxr.evaluation.sources import UNKNOWN, assign_sources, read_sources, source_audit, warnings
from cxr.training.loop import train


@pytest.fixture(scope="module")
def mapping(sample):
    return read_sources(sample)


def test_every_metadata_row_is_read_and_names_are_matched_across_quirks(mapping):
    assert len(mapping) == 3616 + 6012 + 10192 + 1345
    files = ["COVID/images/COVID-1.png", "COVID/images/COVID-2000.png", "Normal/images/Normal-1.png",
             "Normal/images/Normal-9000.png", "Viral Pneumonia/images/Viral Pneumonia-7.png",
             "Lung_Opacity/images/Lung_Opacity-5.png", "Other/images/x-1.png"]
    assert assign_sources(files, mapping).tolist() == [
        "SIRM", "BIMCV/PadChest", "RSNA (adults)", "Kaggle paediatric pneumonia (children)",
        "Kaggle paediatric pneumonia (children)", "RSNA (adults)", UNKNOWN]


def test_warnings_on_the_real_sample_name_the_paediatric_shortcut(sample, mapping):
    files = sorted(p.relative_to(sample).as_posix() for p in sample.glob("*/images/*.png"))
    labels = pd.Series([f.split("/")[0] for f in files])
    notes = warnings(labels, assign_sources(files, mapping))
    assert ("All 150 Viral Pneumonia images come from Kaggle paediatric pneumonia (children), which also supplies "
            "19 Normal images: between these classes the model may be telling sources apart, not diseases.") in notes
    assert any(n.startswith("150 of the 150 COVID images come from sources that supply no other class") for n in notes)
    assert any(n.startswith("131 of the 150 Normal images") for n in notes)


def test_audit_counts_per_class_and_source():
    truth = np.array([0, 0, 1, 1, 1])
    probabilities = np.eye(2)[[0, 1, 1, 1, 0]]
    test_sources = np.array(["A", "B", "B", "B", "C"])
    audit = source_audit(truth, probabilities, test_sources, ["x", "y"], pd.Series(["x", "x", "y", "y", "y"]),
                         test_sources)
    assert audit["per_source"] == {"A": {"images": 1, "accuracy": 1.0}, "B": {"images": 3, "accuracy": 2 / 3},
                                   "C": {"images": 1, "accuracy": 0.0}}
    rows = {(r["class"], r["source"]): r for r in audit["per_class_source"]}
    assert rows[("x", "B")]["sensitivity"] == 0.0 and rows[("x", "B")]["predicted_as"] == {"y": 1}
    assert rows[("y", "B")]["sensitivity"] == 1.0 and rows[("y", "C")]["predicted_as"] == {"x": 1}
    assert audit["composition"] == {"x": {"A": 1, "B": 1}, "y": {"B": 2, "C": 1}}


@pytest.mark.slow
def test_a_run_on_the_real_sample_reports_sources(sample, tmp_path):
    config = resolve(recipe="reference", data=str(sample), runs_dir=str(tmp_path), backbone="tiny", weights="none",
                     image_size=32,
                     epochs=1, batch_size=16, bootstrap=50, ask_epoch=0)
    lines = []
    run = train(config, progress=False, echo=lines.append)
    audit = json.loads((run / "eval" / "metrics.json").read_text())["sources"]
    assert audit["available"] and sum(v["images"] for v in audit["per_source"].values()) == 45
    table = pd.read_csv(run / "eval" / "metrics_per_source.csv")
    assert table["images"].sum() == 45 and set(table["class"]) == {"COVID", "Normal", "Viral Pneumonia"}
    assert any(line.startswith("  warning: All 150 Viral Pneumonia images") for line in lines)


def test_without_metadata_files_the_audit_says_so(tiny_run):
    audit = json.loads((tiny_run / "eval" / "metrics.json").read_text())["sources"]
    assert audit["available"] is False and "no <Class>.metadata.xlsx files in" in audit["note"]
