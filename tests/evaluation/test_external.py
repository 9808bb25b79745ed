"""External validation of a finished run: class matching, the leakage check, a subset of classes, DICOM,
and what it writes and says. The tiny run on phantoms stands in for a trained model; the real DenseNet169
goes through the same command in tests/test_end_to_end.py.
"""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import dicom_bytes

from cxr.cli import main
from cxr.data.split import read_split
from cxr.data.synthetic import write_synthetic_dataset
from cxr.errors import DatasetError
from cxr.evaluation.external import evaluate_external, match_classes
from cxr.evaluation.leakage import find_overlap, overlap_summary
from cxr.run import Run


@pytest.fixture
def run(tiny_run, tmp_path):
    """A copy of the shared tiny run, so that the evaluations written here stay out of other tests' way."""
    return shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))


def _planted_folder(tmp_path, tiny_run):
    """New phantoms (another seed) in the Kaggle layout, plus copies of the run's own images: an exact copy
    of a training image, a resized JPEG of a validation image, an extensionless DICOM of a training image,
    and an exact copy of a test image. Returns the folder and the planted files by kind.
    """
    root = write_synthetic_dataset(tmp_path / "elsewhere", per_class=6, size=64, seed=11)
    split = read_split(tiny_run / "split")
    first = {name: split.frames[name].iloc[0] for name in ("train", "val", "test")}
    source = {name: split.root + "/" + row["file"] for name, row in first.items()}
    planted = {}
    target = root / first["train"]["label"] / "images"
    shutil.copy(source["train"], target / "copy-of-train.png")
    planted["train"] = f"{first['train']['label']}/images/copy-of-train.png"
    gray = cv2.imread(source["val"], cv2.IMREAD_GRAYSCALE)
    target = root / first["val"]["label"] / "images"
    cv2.imwrite(str(target / "val-resized.jpg"), cv2.resize(gray, (96, 96)), [cv2.IMWRITE_JPEG_QUALITY, 80])
    planted["val"] = f"{first['val']['label']}/images/val-resized.jpg"
    second = split.frames["train"].iloc[1]
    pixels = cv2.imread(split.root + "/" + second["file"], cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 16
    (root / second["label"] / "images" / "IM0001").write_bytes(dicom_bytes(pixels))
    planted["dicom"] = f"{second['label']}/images/IM0001"
    target = root / first["test"]["label"] / "images"
    shutil.copy(source["test"], target / "copy-of-test.png")
    planted["test"] = f"{first['test']['label']}/images/copy-of-test.png"
    (root / "Normal" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root, planted


def test_external_evaluation_finds_planted_copies_and_leaves_out_train_and_val_ones(run, tmp_path, capsys):
    root, planted = _planted_folder(tmp_path, run)
    lines = []
    metrics = evaluate_external(run, root, "site-a", progress=False, echo=lines.append, bootstrap=50)
    out = run / "external-site-a"
    assert metrics["eval_dir"] == str(out)

    overlap = pd.read_csv(out / "overlap.csv")
    found = dict(zip(overlap["file"], overlap["run_split"], strict=True))
    assert found == {planted["train"]: "train", planted["val"]: "val", planted["dicom"]: "train",
                     planted["test"]: "test"}, "exactly the planted copies, each traced to its split"
    assert overlap.set_index("file").loc[planted["train"], "match"] == "exact"
    assert overlap.set_index("file").loc[planted["val"], "match"] == "near"
    summary = metrics["external"]["overlap"]
    assert summary["by_split"] == {"train": 2, "val": 1, "test": 1} and summary["excluded"] == 3

    scored = pd.read_csv(out / "predictions_external.csv")
    assert len(scored) == 4 * 6 + 4 - 3  # phantoms + planted - the train/val copies; the test copy stays
    assert planted["test"] in set(scored["file"]) and planted["train"] not in set(scored["file"])
    assert metrics["splits"]["external"]["images"] == len(scored)
    assert metrics["external"]["unreadable"] == 1
    assert pd.read_csv(out / "skipped.csv")["file"].tolist() == ["Normal/images/broken.png"]

    for name in ("confusion_matrix.csv", "classification_report.txt", "metrics_per_class.csv", "report.html",
                 "confusion_matrix.png", "roc_pr.png", "gradcam_test.png"):
        assert (out / name).is_file(), name
    assert metrics["calibration"]["fitted_on"].startswith("the run's validation split")
    assert metrics["calibration"]["temperature"] == pytest.approx(Run(run).temperature()[0])
    page = (out / "report.html").read_text()
    assert "cxr external validation: site-a" in page and "Leakage check: 4 of the 28 external images" in page
    assert "not refitted" in page
    said = "\n".join(lines)
    assert "leakage check: 4 of the 28 external images are copies of run images (train 2, val 1, test 1" in said
    assert "unreadable Normal/images/broken.png" in said
    assert f"open {out / 'report.html'}" in said

    # --keep-overlap scores them all, into a new folder; nothing earlier is overwritten.
    assert main(["evaluate", str(run), "--data", str(root), "--name", "site-a", "--keep-overlap",
                 "--bootstrap", "0"]) == 0
    kept = pd.read_csv(run / "external-site-a-2" / "predictions_external.csv")
    assert len(kept) == 4 * 6 + 4
    assert len(pd.read_csv(out / "predictions_external.csv")) == len(scored)
    assert "all are kept in the metrics (--keep-overlap)" in capsys.readouterr().out


def test_copies_within_the_external_folder_are_resampled_together(run, tmp_path):
    root = write_synthetic_dataset(tmp_path / "site-b", per_class=6, size=64, seed=12)
    originals = sorted((root / "COVID" / "images").iterdir())[:2]
    for original in originals:  # two radiographs of this folder present twice, under other names
        shutil.copy(original, original.with_name(f"again-{original.name}"))
    lines = []
    metrics = evaluate_external(run, root, "site-b", progress=False, echo=lines.append, bootstrap=50)
    scored = pd.read_csv(run / "external-site-b" / "predictions_external.csv").set_index("file")
    for original in originals:
        name = f"COVID/images/{original.name}"
        assert scored.loc[name, "group"] == scored.loc[f"COVID/images/again-{original.name}", "group"]
    assert scored["group"].nunique() == len(scored) - 2
    assert metrics["external"]["copy_groups"] == {"groups": 2, "images": 4}
    assert metrics["clinical"]["bootstrap"]["unit"] == "duplicate group"
    said = "Copies of one radiograph (found by perceptual hash, as the split finds them) are drawn together."
    assert said in (run / "external-site-b" / "report.html").read_text()
    assert said in (run / "external-site-b" / "MODEL_CARD.md").read_text()
    assert "copies within the folder: 2 group(s) of one radiograph (4 images); the bootstrap draws each group as " \
        "one" in lines


def test_a_subset_of_classes_is_scored_on_those_classes(run, tmp_path):
    root = write_synthetic_dataset(tmp_path / "two", per_class=5, size=64, seed=12)
    for name in ("Lung_Opacity", "Viral Pneumonia"):
        shutil.rmtree(root / name)
    (root / "normal").mkdir()  # folder names match the model's classes ignoring case, spaces and _
    for path in (root / "Normal" / "images").iterdir():
        shutil.move(path, root / "normal" / path.name)
    shutil.rmtree(root / "Normal")
    lines = []
    metrics = evaluate_external(run, root, progress=False, echo=lines.append, bootstrap=20)
    clinical = metrics["clinical"]
    assert clinical["averaged_over"] == ["COVID", "Normal"] and list(clinical["per_class"]) == ["COVID", "Normal"]
    expected = np.mean([clinical["per_class"][c]["f1"]["value"] for c in ("COVID", "Normal")])
    assert clinical["macro"]["f1"]["value"] == pytest.approx(expected)
    assert metrics["external"]["per_class"] == {"COVID": 5, "Normal": 5}
    assert any("the folder has 2 of the model's 4 classes" in line for line in lines)
    assert "2 of the model's 4 classes" in (run / "external-two" / "report.html").read_text()
    report = (run / "external-two" / "classification_report.txt").read_text()
    assert "COVID" in report and "Lung_Opacity" not in report


def test_an_unknown_class_folder_is_refused_with_the_model_classes(run, tmp_path, capsys):
    root = write_synthetic_dataset(tmp_path / "odd", per_class=2, size=64, seed=13)
    shutil.move(root / "Lung_Opacity", root / "Pneumothorax")
    before = sorted(p.name for p in run.iterdir())
    assert main(["evaluate", str(run), "--data", str(root)]) == 2
    error = capsys.readouterr().err
    assert "class folder(s) Pneumothorax are not classes of this model" in error
    assert "its classes are COVID, Lung_Opacity, Normal, Viral Pneumonia" in error
    assert sorted(p.name for p in run.iterdir()) == before, "a refused folder writes nothing"


def test_match_classes():
    classes = ["COVID", "Normal", "Viral Pneumonia"]
    assert match_classes(["viral_pneumonia", "COVID"], classes, "x") == {"viral_pneumonia": "Viral Pneumonia",
                                                                         "COVID": "COVID"}
    with pytest.raises(DatasetError, match="TB are not classes"):
        match_classes(["TB"], classes, "x")


def _hashes(rows):
    return pd.DataFrame(rows, columns=["file", "label", "md5", "phash"])


def test_find_overlap_takes_exact_copies_first_then_the_nearest_hash():
    zero, near, far = "0" * 64, "0" * 63 + "7", "f" * 64  # 0, 3 and 256 bits from zero
    known = pd.DataFrame({"file": ["a.png", "b.png", "c.png"], "label": ["X", "X", "Y"],
                          "split": ["train", "val", "test"], "md5": ["m1", "m2", "m3"], "phash": [far, near, zero]})
    external = _hashes([("same-bytes.png", "X", "m1", zero), ("close.png", "Y", "e2", near),
                        ("new.png", "Y", "e3", "0f" * 32)])
    overlap = find_overlap(external, known, max_distance=20)
    assert overlap.to_dict("records") == [
        {"file": "same-bytes.png", "label": "X", "run_file": "a.png", "run_label": "X", "run_split": "train",
         "match": "exact", "distance": 256},
        {"file": "close.png", "label": "Y", "run_file": "b.png", "run_label": "X", "run_split": "val",
         "match": "near", "distance": 0},
    ]
    assert find_overlap(external, known, max_distance=-1)["file"].tolist() == ["same-bytes.png"]
    summary = overlap_summary(overlap, 3, 20, keep=False)
    assert summary["by_split"] == {"train": 1, "val": 1, "test": 0} and summary["excluded"] == 2
    assert overlap_summary(overlap.iloc[:0], 3, 20, keep=False)["summary"].startswith("none of the 3 external")


def test_a_copy_of_a_training_image_is_named_before_a_nearer_copy_of_a_test_image():
    def bits(*ranges):  # a 256-bit perceptual hash with these bits set
        return f"{sum(1 << bit for bits in ranges for bit in bits):064x}"

    # The test image and the training image are 30 bits apart, so the split could put them apart; the external
    # image is 12 bits from the test image and 18 from the training image: a copy of both at distance 20.
    known = pd.DataFrame({"file": ["T.png", "R.png"], "label": ["X", "X"], "split": ["test", "train"],
                          "md5": ["t", "r"], "phash": [bits(range(12)), bits(range(12, 30))]})
    external = _hashes([("between.png", "X", "e", bits()), ("test-only.png", "X", "e2", bits(range(10)))])
    overlap = find_overlap(external, known, max_distance=20)
    assert overlap[["file", "run_file", "run_split", "distance"]].values.tolist() == [
        ["between.png", "R.png", "train", 18], ["test-only.png", "T.png", "test", 2]]
    assert overlap_summary(overlap, 2, 20, keep=False)["excluded"] == 1
    same_bytes = _hashes([("copy.png", "X", "m", bits())])
    both = known.assign(md5="m")  # the same bytes in test and train: the training copy is named
    assert find_overlap(same_bytes, both, max_distance=-1)["run_split"].tolist() == ["train"]
    # The same bytes as the test image, and within reach of the training image: the training copy is named.
    exact_test = _hashes([("test-bytes.png", "X", "t", bits(range(12)))])  # 30 bits from R: reach it at 30
    assert find_overlap(exact_test, known, max_distance=30)[["run_file", "match"]].values.tolist() == [
        ["R.png", "near"]]
    assert find_overlap(exact_test, known, max_distance=20)[["run_file", "match"]].values.tolist() == [
        ["T.png", "exact"]]


def test_old_splits_without_hashes_are_hashed_again(tiny_run, tmp_path):
    from cxr.evaluation.leakage import run_hashes

    split = read_split(tiny_run / "split")
    assert split.hashes is not None and len(split.hashes) == sum(len(f) for f in split.frames.values())
    old = shutil.copytree(tiny_run / "split", tmp_path / "old-split")
    (old / "hashes.csv").unlink()
    lines = []
    again = run_hashes(read_split(old), progress=False, echo=lines.append)
    assert "predates hashes.csv" in lines[0]
    kept = run_hashes(split, echo=lines.append)
    merged = again.merge(kept, on=["file", "label", "split"], suffixes=("_again", "_kept"))
    assert len(merged) == len(kept) and (merged["phash_again"] == merged["phash_kept"]).all()
    assert (merged["md5_again"] == merged["md5_kept"]).all()


def test_an_external_evaluation_is_listed_beside_the_internal_one(run, tmp_path, capsys):
    root = write_synthetic_dataset(tmp_path / "listed", per_class=3, size=64, seed=14)
    evaluate_external(run, root, "listed", progress=False, echo=lambda _: None, bootstrap=0)
    assert main(["compare", str(run)]) == 0
    printed = capsys.readouterr().out
    assert f"{run.name} external-listed" in printed and "external: " in printed
    metrics = json.loads((run / "external-listed" / "metrics.json").read_text())
    assert Run(run).latest_eval().name.startswith("eval"), "an external evaluation is not the run's own"
    assert metrics["kind"] == "external"
