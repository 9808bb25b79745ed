import cv2
import numpy as np
import pandas as pd
import pytest

from cxr.data.scan import scan_dataset
from cxr.data.split import SPLITS, assign_splits, make_split, read_split, write_split
from cxr.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def sample_scan(sample):
    return scan_dataset(sample, progress=False)


def test_real_sample_is_split_80_10_10_per_class(sample_scan):
    split = make_split(sample_scan, seed=42)
    for label in sample_scan.classes:
        counts = [int((split.frames[name]["label"] == label).sum()) for name in SPLITS]
        assert counts == [120, 15, 15], (label, counts)
    assert split.duplicates.empty  # the sample was curated to hold no copies


@pytest.mark.parametrize("n", [7, 13, 101, 3616, 10192])
def test_each_class_is_within_one_image_of_its_target(n):
    labels = pd.Series(["a"] * n + ["b"] * (n // 2 + 3))
    names = assign_splits(labels, np.arange(len(labels)), (0.8, 0.1, 0.1), seed=5)
    for label, size in (("a", n), ("b", n // 2 + 3)):
        got = [int(((labels == label) & (names == s)).sum()) for s in SPLITS]
        for count, fraction in zip(got, (0.8, 0.1, 0.1), strict=True):
            assert abs(count - fraction * size) <= 1, (label, got)


def test_same_seed_same_split_and_other_seed_other_split(sample_scan):
    first, again = make_split(sample_scan, seed=7), make_split(sample_scan, seed=7)
    other = make_split(sample_scan, seed=8)
    for name in SPLITS:
        pd.testing.assert_frame_equal(first.frames[name], again.frames[name])
    assert set(first.frames["test"]["file"]) != set(other.frames["test"]["file"])


@pytest.fixture(scope="module")
def dataset_with_copies(tmp_path_factory):
    """Phantoms plus exact copies and near copies (resized, recompressed, brightened) under new names."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("copies"), per_class=20, size=96, seed=11)
    covid = root / "COVID" / "images"
    for i in range(1, 6):
        (covid / f"COVID-copy{i}.png").write_bytes((covid / f"COVID-{i}.png").read_bytes())
        image = cv2.imread(str(covid / f"COVID-{i + 5}.png"), cv2.IMREAD_GRAYSCALE)
        near = cv2.convertScaleAbs(cv2.resize(image, (120, 120)), alpha=1.05, beta=4)
        cv2.imwrite(str(covid / f"COVID-near{i}.jpg"), near, [cv2.IMWRITE_JPEG_QUALITY, 80])
    # The same radiograph filed under two classes stays in one split too.
    (root / "Normal" / "images" / "Normal-fromcovid.png").write_bytes((covid / "COVID-11.png").read_bytes())
    return root


def test_copies_form_groups_that_never_straddle_splits(dataset_with_copies):
    scan = scan_dataset(dataset_with_copies, progress=False)
    for seed in range(5):
        split = make_split(scan, seed=seed)
        where = {row.file: name for name in SPLITS for row in split.frames[name].itertuples()}
        for _, members in split.duplicates.groupby("group"):
            assert len({where[f] for f in members["file"]}) == 1

    dup = make_split(scan, seed=0).duplicates.set_index("file")
    group = dup["group"]
    for i in range(1, 6):
        assert dup.loc[f"COVID/images/COVID-copy{i}.png", "match"] == "exact"
        assert dup.loc[f"COVID/images/COVID-near{i}.jpg", "match"] == "near"
        assert group[f"COVID/images/COVID-copy{i}.png"] == group[f"COVID/images/COVID-{i}.png"]
        assert group[f"COVID/images/COVID-near{i}.jpg"] == group[f"COVID/images/COVID-{i + 5}.png"]
    assert group["Normal/images/Normal-fromcovid.png"] == group["COVID/images/COVID-11.png"]


def test_exact_only_mode_ignores_near_copies(dataset_with_copies):
    scan = scan_dataset(dataset_with_copies, progress=False)
    dup = make_split(scan, max_distance=-1).duplicates
    assert set(dup["match"]) == {"exact"}
    assert not dup["file"].str.contains("near").any()


def test_split_round_trips_through_its_folder(tmp_path, sample_scan):
    split = make_split(sample_scan, seed=3)
    write_split(split, tmp_path / "split")
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == [
        "dataset.yaml", "duplicates.csv", "hashes.csv", "skipped.csv", "test.csv", "train.csv", "val.csv"]
    back = read_split(tmp_path / "split")
    for name in SPLITS:
        pd.testing.assert_frame_equal(back.frames[name], split.frames[name], check_dtype=False)
    assert back.root == str(sample_scan.root) and back.classes == sample_scan.classes
    # The hashes the leakage check of an external evaluation compares against: every image's, as scanned.
    pd.testing.assert_frame_equal(back.hashes.sort_values("file").reset_index(drop=True),
                                  sample_scan.images[["file", "md5", "phash"]].sort_values("file")
                                  .reset_index(drop=True))
    header = (tmp_path / "split" / "train.csv").read_text().splitlines()[0]
    assert header == "file,label,group"


def test_class_names_that_pandas_takes_for_missing_values_survive_the_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("None", "NA"):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))
    split = make_split(scan_dataset(tmp_path / "data", progress=False), seed=0)
    write_split(split, tmp_path / "split")
    back = read_split(tmp_path / "split")
    assert back.classes == ["NA", "None"]
    for name in SPLITS:
        assert back.frames[name]["label"].tolist() == split.frames[name]["label"].tolist()
    assert set(back.hashes["md5"]) == set(split.hashes["md5"])


def test_a_class_too_small_to_reach_val_and_test_is_named(tmp_path, capsys):
    from cxr.cli import main

    rng = np.random.default_rng(1)
    for name, count in (("Big", 20), ("Rare", 3)):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))
    assert main(["split", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "split")]) == 0
    out = capsys.readouterr().out
    assert "note: class Rare has 3 image(s), none in val or test: its test metrics are undefined" in out
    assert "note: class Big" not in out


def test_a_hand_made_split_may_leave_groups_blank_or_name_them(tmp_path):
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "train.csv").write_text("file,label,group\na.png,A,\nb.png,B,7\nc.png,A,7\n")
    (folder / "val.csv").write_text("file,label,group\nd.png,A,P001\ne.png,B,\nf.png,B,P001\ng.png,A,P002\n")
    (folder / "test.csv").write_text("file,label\nh.png,A\n")
    split = read_split(folder)
    assert split.frames["train"]["group"].tolist() == [-1, 7, 7]
    assert split.frames["val"]["group"].tolist() == [0, -1, 0, 1]  # names numbered in order of appearance
    assert split.frames["test"]["group"].tolist() == [-1]
