import shutil

import cv2
import numpy as np
import pytest
from helpers import dicom_bytes, ramp12

from cxr.data.scan import scan_dataset
from cxr.errors import DatasetError


def write_png(path, value=128, size=(24, 24), channels=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    image = np.clip(rng.normal(value, 30, size), 0, 255).astype(np.uint8)
    if channels == 3:
        image = np.dstack([image] * 3)
    elif channels == 4:
        image = np.dstack([image] * 3 + [np.full(size, 255, np.uint8)])
    cv2.imwrite(str(path), image)
    return path


def test_real_sample_in_kaggle_layout(sample):
    scan = scan_dataset(sample, progress=False)
    assert scan.layout == "kaggle"
    assert scan.classes == ["COVID", "Normal", "Viral Pneumonia"]  # no Lung_Opacity folder in the sample
    assert scan.images["label"].value_counts().to_dict() == {"COVID": 150, "Normal": 150, "Viral Pneumonia": 150}
    assert scan.skipped.empty
    assert scan.images["file"].iloc[0].startswith("COVID/images/COVID-")
    # Viral Pneumonia images are 256 px in the sample, the others 224 px: sizes are recorded.
    sizes = scan.images.groupby("label")["height"].unique().map(list).to_dict()
    assert sizes == {"COVID": [224], "Normal": [224], "Viral Pneumonia": [256]}


def test_plain_layout_with_mixed_formats_and_custom_classes(tmp_path):
    for name in ("cats", "dogs", "owls"):
        write_png(tmp_path / name / f"{name}-1.png", channels=3)
        cv2.imwrite(str(tmp_path / name / f"{name}-2.jpg"), np.full((20, 20), 90, np.uint8))
    write_png(tmp_path / "owls" / "owls-3.png", channels=4)
    scan = scan_dataset(tmp_path, progress=False)
    assert scan.layout == "plain"
    assert scan.classes == ["cats", "dogs", "owls"]
    assert len(scan.images) == 7 and scan.skipped.empty


def test_bad_files_are_skipped_with_reasons_and_the_scan_goes_on(tmp_path):
    for cls in ("COVID", "Normal"):
        for i in range(3):
            write_png(tmp_path / cls / "images" / f"{cls}-{i}.png")
    folder = tmp_path / "COVID" / "images"
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / "text.png").write_text("also not an image")
    good = (folder / "COVID-0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored entirely
    (folder / "moved.png").symlink_to(tmp_path / "elsewhere" / "moved.png")  # a link whose target is gone
    write_png(tmp_path / "COVID" / "masks" / "COVID-0.png")  # masks are not images of the class

    scan = scan_dataset(tmp_path, progress=False)
    assert len(scan.images) == 6
    reasons = dict(zip(scan.skipped["file"], scan.skipped["reason"], strict=True))
    assert reasons == {
        "COVID/images/empty.png": "empty file",
        "COVID/images/notes.txt": "not an image (unrecognised content)",
        "COVID/images/text.png": "not an image (unrecognised content)",
        "COVID/images/truncated.png": "PNG cannot be decoded (truncated or corrupt)",
        "COVID/images/moved.png": "unreadable (No such file or directory)",
    }
    assert set(scan.skipped["label"]) == {"COVID"}


def test_class_without_a_valid_image_is_an_error_naming_it(tmp_path):
    write_png(tmp_path / "COVID" / "images" / "a.png")
    write_png(tmp_path / "Normal" / "images" / "b.png")
    (tmp_path / "Lung_Opacity" / "images").mkdir(parents=True)
    (tmp_path / "Lung_Opacity" / "images" / "c.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"without a single valid image: .*Lung_Opacity"):
        scan_dataset(tmp_path, progress=False)


def test_fewer_than_two_classes_is_an_error(tmp_path):
    write_png(tmp_path / "COVID" / "images" / "a.png")
    with pytest.raises(DatasetError, match=r"holds 1 class folder\(s\) \(COVID\); at least 2 are needed"):
        scan_dataset(tmp_path, progress=False)
    # An external evaluation asks a model about a folder of one class: that is allowed there.
    assert scan_dataset(tmp_path, progress=False, min_classes=1).classes == ["COVID"]


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        scan_dataset(tmp_path / "nowhere", progress=False)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("hi")
    with pytest.raises(DatasetError, match="no class folders found"):
        scan_dataset(tmp_path, progress=False)


def test_one_kaggle_class_folder_is_refused_saying_which_folder_to_give(sample):
    with pytest.raises(DatasetError, match=r"COVID is one class folder of the Kaggle layout \(an images/ folder "
                                           r"inside\); give the folder above it"):
        scan_dataset(sample / "COVID", progress=False, min_classes=1)


def test_kaggle_download_folder_one_level_up_is_accepted(tmp_path, sample):
    inner = tmp_path / "archive" / "COVID-19_Radiography_Dataset"
    for cls in ("COVID", "Normal"):
        (inner / cls / "images").mkdir(parents=True)
        for src in sorted((sample / cls / "images").iterdir())[:2]:
            shutil.copy(src, inner / cls / "images" / src.name)
    scan = scan_dataset(tmp_path / "archive", progress=False)
    assert scan.root == inner and len(scan.images) == 4


def test_classes_option_selects_and_orders(sample):
    scan = scan_dataset(sample, classes=["Normal", "COVID"], progress=False)
    assert scan.classes == ["Normal", "COVID"]
    assert set(scan.images["label"]) == {"Normal", "COVID"}
    with pytest.raises(DatasetError, match="class folder\\(s\\) not found in .*: Lung_Opacity"):
        scan_dataset(sample, classes=["COVID", "Lung_Opacity"], progress=False)


def test_a_relative_dataset_path_is_recorded_absolute_and_extensionless_dicom_makes_a_class(tmp_path, monkeypatch):
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(2):  # a PACS export: DICOM files without an extension
            (tmp_path / "data" / label / f"IM000{i}").write_bytes(dicom_bytes(ramp12(40 + i, 50)))
    monkeypatch.chdir(tmp_path)
    scan = scan_dataset("data", progress=False)
    assert scan.root == tmp_path / "data" and scan.root.is_absolute()
    assert scan.classes == ["a", "b"] and len(scan.images) == 4 and scan.skipped.empty
