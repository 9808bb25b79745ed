"""Stratified train/val/test split that keeps duplicate radiographs together.

The COVID-19 Radiography Database holds the same radiograph under several file names. If copies
land in both train and test, test accuracy measures memory rather than skill, so exact copies
(same bytes) and near copies (perceptual hashes within a few bits) form groups, and a group is
always assigned to one split as a whole.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cxr import files
from cxr.data.scan import SKIPPED_COLUMNS, Scan
from cxr.errors import DatasetError

__all__ = ["assign_splits", "DUPLICATE_COLUMNS", "duplicate_groups", "group_ids", "HASH_COLUMNS", "hash_words",
           "make_split", "read_split", "Split", "SPLIT_COLUMNS", "SPLITS", "write_split"]

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["file", "label", "group"]
DUPLICATE_COLUMNS = ["group", "file", "label", "match", "distance"]
HASH_COLUMNS = ["file", "md5", "phash"]


@dataclass
class Split:
    """A train/val/test split: per split the files and labels, the duplicate groups and skipped files."""

    frames: dict[str, pd.DataFrame]  # split name -> SPLIT_COLUMNS
    duplicates: pd.DataFrame  # DUPLICATE_COLUMNS, one row per image in a group of 2 or more
    skipped: pd.DataFrame  # SKIPPED_COLUMNS: files the scan could not use
    root: str | None  # the dataset folder that `file` paths are relative to
    classes: list[str] | None  # class names in model output order
    # HASH_COLUMNS of every image, for the leakage check of an external evaluation; None for a split
    # written before cxr kept them (the check then hashes the run's images again).
    hashes: pd.DataFrame | None = None


def hash_words(phashes: pd.Series) -> np.ndarray:
    """Hex perceptual hashes as rows of uint64 words, for vectorised Hamming distances."""
    return np.stack([np.frombuffer(bytes.fromhex(h), dtype=">u8").astype(np.uint64) for h in phashes])


def _near_pairs(words: np.ndarray, max_distance: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) whose hashes differ in at most max_distance bits."""
    firsts, seconds = [], []
    for start in range(0, len(words), chunk):
        block = words[start : start + chunk]
        distance = np.bitwise_count(block[:, None, :] ^ words[None, :, :]).sum(axis=-1)
        i, j = np.nonzero(distance <= max_distance)
        i = i + start
        keep = j > i
        firsts.append(i[keep])
        seconds.append(j[keep])
    return np.concatenate(firsts), np.concatenate(seconds)


def duplicate_groups(images: pd.DataFrame, max_distance: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Group id of every image, and the table of groups with more than one member.

    Images are linked when their file bytes are identical (md5) or, if max_distance >= 0, when
    their perceptual hashes differ in at most max_distance bits; groups are the connected
    components. Group ids follow the order of `images`, so they are stable for a given input.
    """
    n = len(images)
    if n == 0:
        return np.zeros(0, dtype=int), pd.DataFrame(columns=DUPLICATE_COLUMNS)
    words = hash_words(images["phash"])
    firsts, seconds = [np.zeros(0, dtype=int)], [np.zeros(0, dtype=int)]
    if max_distance >= 0:
        i, j = _near_pairs(words, max_distance)
        firsts.append(i)
        seconds.append(j)
    for members in images.groupby("md5", sort=False).indices.values():
        if len(members) > 1:
            firsts.append(np.full(len(members) - 1, members[0]))
            seconds.append(members[1:])
    i, j = np.concatenate(firsts), np.concatenate(seconds)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # Renumber components by first appearance so that ids do not depend on scipy's order.
    _, first_index, inverse = np.unique(component, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_index))
    groups = order[inverse]

    sizes = np.bincount(groups)
    rows = []
    for group in np.flatnonzero(sizes > 1):
        members = np.flatnonzero(groups == group)
        md5 = images["md5"].iloc[members]
        first_words = words[members[0]]
        for index in members:
            exact = (md5 == images["md5"].iloc[index]).sum() > 1
            distance = int(np.bitwise_count(words[index] ^ first_words).sum())
            rows.append(
                (int(group), images["file"].iloc[index], images["label"].iloc[index],
                 "exact" if exact else "near", distance)
            )
    return groups, pd.DataFrame(rows, columns=DUPLICATE_COLUMNS)


def _targets(n: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Images per split for a class of n images: val and test rounded half up, train the rest."""
    val = math.floor(n * fractions[1] + 0.5)
    test = math.floor(n * fractions[2] + 0.5)
    return np.array([n - val - test, val, test])


def assign_splits(
    labels: pd.Series, groups: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> np.ndarray:
    """Split name for every image: stratified by label, whole groups at a time.

    Within a class, groups are shuffled with the seed, larger groups placed first, and each goes
    to the split furthest below its target. With no duplicates, every class meets its targets
    exactly; a group can move a split off its target by at most the group's size.
    """
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"label": labels.to_numpy(), "group": groups})
    # A group's class is its most common label (a duplicate filed under two classes stays whole).
    group_label = frame.groupby("group")["label"].agg(lambda s: s.value_counts().sort_index().idxmax())
    group_size = frame.groupby("group").size()
    assignment = {}
    for label in sorted(group_label.unique()):
        members = group_label.index[group_label == label].to_numpy()
        members = members[rng.permutation(len(members))]
        members = members[np.argsort(-group_size.loc[members].to_numpy(), kind="stable")]
        target = _targets(int(group_size.loc[members].sum()), fractions)
        filled = np.zeros(3, dtype=int)
        for group in members:
            # Ties go to test, then val, then train, so small classes still reach test.
            choice = int(np.argmax((target - filled)[::-1]))
            choice = 2 - choice
            assignment[group] = choice
            filled[choice] += group_size.loc[group]
    return np.array([SPLITS[assignment[g]] for g in groups])


def make_split(
    scan: Scan,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 42,
    max_distance: int = 20,
) -> Split:
    """Split a scan's images into train/val/test with duplicate groups kept whole."""
    images = scan.images.sort_values(["label", "file"], kind="stable").reset_index(drop=True)
    groups, duplicates = duplicate_groups(images, max_distance)
    names = assign_splits(images["label"], groups, fractions, seed)
    table = images.assign(group=groups)[SPLIT_COLUMNS]
    frames = {name: table[names == name].reset_index(drop=True) for name in SPLITS}
    return Split(frames=frames, duplicates=duplicates, skipped=scan.skipped, root=str(scan.root),
                 classes=list(scan.classes), hashes=images[HASH_COLUMNS].copy())


def write_split(split: Split, folder: str | os.PathLike) -> Path:
    """Write train/val/test.csv, duplicates.csv, skipped.csv, hashes.csv (when known) and dataset.yaml."""
    folder = Path(folder)
    for name, frame in split.frames.items():
        files.write_csv(folder / f"{name}.csv", frame)
    files.write_csv(folder / "duplicates.csv", split.duplicates)
    files.write_csv(folder / "skipped.csv", split.skipped)
    if split.hashes is not None:
        files.write_csv(folder / "hashes.csv", split.hashes)
    files.write_text(folder / "dataset.yaml", yaml.safe_dump({"root": split.root, "classes": split.classes},
                                                             sort_keys=False))
    return folder


def _read_csv(path: Path, **options) -> pd.DataFrame:
    """A CSV this module wrote, with every value as written: a class folder may be called "None" or "NA",
    which pandas would otherwise read as missing.
    """
    return pd.read_csv(path, keep_default_na=False, na_values=[], **options)


def _read_optional(path: Path, columns: list[str]) -> pd.DataFrame:
    return _read_csv(path, dtype={"file": str, "label": str}) if path.is_file() else pd.DataFrame(columns=columns)


def group_ids(column: pd.Series) -> np.ndarray:
    """A split's (or a predictions file's) `group` column as integers, -1 where blank: as written by
    write_split, or by hand with numbers or names (a patient id, say), which are numbered in order of
    appearance.

    Args:
        column: the group of each row, as read from a CSV file (numbers, names or blanks).

    Returns:
        One integer per row; -1 where the group is blank.
    """
    text = column.astype(str).str.strip()
    blank = text.isin(["", "nan"])
    numbers = pd.to_numeric(text.where(~blank), errors="coerce")
    if numbers[~blank].notna().all():
        return numbers.fillna(-1).astype(int).to_numpy()
    codes, _ = pd.factorize(text.where(~blank))
    return codes.astype(int)  # factorize gives -1 to the blanks


def read_split(folder: str | os.PathLike) -> Split:
    """Read a split written by write_split (or by hand: file,label[,group] per split)."""
    folder = Path(folder)
    frames = {}
    for name in SPLITS:
        path = folder / f"{name}.csv"
        if not path.is_file():
            raise DatasetError(f"split file missing: {path}")
        frame = _read_csv(path, dtype={"file": str, "label": str})
        missing = {"file", "label"} - set(frame.columns)
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        frame["group"] = group_ids(frame["group"]) if "group" in frame.columns else -1
        frames[name] = frame[SPLIT_COLUMNS]
    dataset_path = folder / "dataset.yaml"
    dataset = yaml.safe_load(dataset_path.read_text(encoding="utf-8")) if dataset_path.is_file() else {}
    return Split(
        frames=frames,
        duplicates=_read_optional(folder / "duplicates.csv", DUPLICATE_COLUMNS),
        skipped=_read_optional(folder / "skipped.csv", SKIPPED_COLUMNS),
        root=(dataset or {}).get("root"),
        classes=(dataset or {}).get("classes"),
        hashes=(_read_csv(folder / "hashes.csv", dtype=str)[HASH_COLUMNS]
                if (folder / "hashes.csv").is_file() else None),
    )
