"""Is an "external" image really new to the model? Copies of a run's own images, found by hash.

Copies of the same radiograph circulate between public COVID collections under other names, sizes and
compressions. An external image is an overlap when its file bytes equal a run image's (md5) or its
perceptual hash is within the run's duplicate distance of one: the same test, with the same hash, that
keeps copies within one split when the run's split is made (cxr.data.split).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import logs
from cxr.data.scan import check_image
from cxr.data.split import HASH_COLUMNS, SPLITS, Split, hash_words
from cxr.errors import DatasetError, ImageError

__all__ = ["OVERLAP_COLUMNS", "find_overlap", "overlap_summary", "run_hashes"]

OVERLAP_COLUMNS = ["file", "label", "run_file", "run_label", "run_split", "match", "distance"]
# Overlaps with these splits are left out of external metrics by default: the model learnt from them
# (train) or was chosen on them (val). Test copies only make the set less external, and are reported.
EXCLUDED_SPLITS = ("train", "val")


def run_hashes(split: Split, workers: int | None = None, progress: bool = True,
               echo: Callable[[str], None] = print) -> pd.DataFrame:
    """md5 and perceptual hash of every image of a run's split, with its label and split name.

    Splits written since cxr kept `hashes.csv` have them already; for an older split the images are
    read and hashed again from the dataset folder (an unreadable one is left out, and said).

    Args:
        split: the run's split.
        workers: hashing threads for an older split.
        progress: show a progress bar while hashing.
        echo: where notes go.

    Returns:
        One row per image: file, label, split, md5, phash.
    """
    frames = pd.concat([frame.assign(split=name) for name, frame in split.frames.items()], ignore_index=True)
    frames = frames[["file", "label", "split"]]
    if split.hashes is not None and set(frames["file"]) <= set(split.hashes["file"]):
        return frames.merge(split.hashes[HASH_COLUMNS], on="file", how="left")
    if not split.root or not Path(split.root).is_dir():
        raise DatasetError(f"the run's dataset folder is not found ({split.root}); the leakage check needs its "
                           "images (or a split with hashes.csv)")
    echo(f"hashing the run's {len(frames)} images for the leakage check (its split predates hashes.csv)")
    paths = [Path(split.root) / name for name in frames["file"]]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(logs.progress(pool.map(check_image, paths), len(paths), "hash run images", enabled=progress))
    unreadable = [str(path) for path, result in zip(paths, results, strict=True) if isinstance(result, ImageError)]
    if unreadable:
        echo(f"note: {len(unreadable)} run image(s) could not be read and are not checked against, "
             f"e.g. {unreadable[0]}")
    keep = np.array([not isinstance(result, ImageError) for result in results], dtype=bool)
    found = frames[keep].reset_index(drop=True)
    found["md5"] = [result[0] for result in results if not isinstance(result, ImageError)]
    found["phash"] = [result[1] for result in results if not isinstance(result, ImageError)]
    return found


def find_overlap(external: pd.DataFrame, run: pd.DataFrame, max_distance: int, chunk: int = 256) -> pd.DataFrame:
    """Each external image's nearest run image, where it is a copy (same bytes, or hashes within
    `max_distance` bits; -1: same bytes only). A copy of an image the model learnt from (train or val)
    is named before a nearer copy of a test image: two run images more than `max_distance` apart may
    sit in different splits, and an external image can lie within reach of both.

    Args:
        external: file, label, md5, phash of the external images.
        run: file, label, split, md5, phash of the run's images (run_hashes).
        max_distance: the run's duplicate distance (its config's `duplicate_distance`).
        chunk: external images compared at a time (bounds the memory of the distance matrix).

    Returns:
        OVERLAP_COLUMNS, one row per overlapping external image: its nearest run image (an exact copy
        first, then a train or val image), that image's split, `match` ("exact" or "near") and the
        Hamming distance in bits.
    """
    if len(external) == 0 or len(run) == 0:
        return pd.DataFrame(columns=OVERLAP_COLUMNS)
    run = run.reset_index(drop=True)
    run_words = hash_words(run["phash"])
    learnt = run["split"].isin(EXCLUDED_SPLITS).to_numpy()
    # Exact copies: a train or val image's index wins over a test image's with the same bytes.
    by_md5 = {md5: index for index, md5 in sorted(enumerate(run["md5"]), key=lambda pair: (learnt[pair[0]], -pair[0]))}
    rows = []
    for start in range(0, len(external), chunk):
        block = external.iloc[start:start + chunk]
        distance = np.bitwise_count(hash_words(block["phash"])[:, None, :] ^ run_words[None, :, :]).sum(axis=-1)
        candidates = (distance.argmin(axis=1),)
        if learnt.any():
            candidates = (np.where(learnt, distance, np.iinfo(distance.dtype).max).argmin(axis=1), *candidates)
        for row, item in enumerate(block.itertuples(index=False)):
            exact = by_md5.get(item.md5)
            near = next((int(nearest[row]) for nearest in candidates
                         if max_distance >= 0 and distance[row, nearest[row]] <= max_distance), None)
            if exact is not None and (learnt[exact] or near is None or not learnt[near]):
                rows.append(_overlap_row(item, run.iloc[exact], "exact", int(distance[row, exact])))
            elif near is not None:
                rows.append(_overlap_row(item, run.iloc[near], "near", int(distance[row, near])))
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


def _overlap_row(item, match: pd.Series, kind: str, distance: int) -> tuple:
    return item.file, item.label, match["file"], match["label"], match["split"], kind, distance


def overlap_summary(overlap: pd.DataFrame, checked: int, max_distance: int, keep: bool) -> dict:
    """What the report says about the check: how many copies of each split, and which were left out.

    Args:
        overlap: find_overlap's table.
        checked: external images compared.
        max_distance: the distance used.
        keep: whether overlapping images stay in the metrics (`--keep-overlap`).

    Returns:
        JSON-ready: checked, max_distance, per split counts, excluded count, and a plain sentence.
    """
    counts = {name: int((overlap["run_split"] == name).sum()) for name in SPLITS}
    excluded = 0 if keep else counts["train"] + counts["val"]
    found = int(len(overlap))
    if not found:
        sentence = (f"none of the {checked} external images is a copy of a run image (perceptual hashes "
                    f"{'within ' + str(max_distance) + ' bits' if max_distance >= 0 else 'or bytes equal'})")
    else:
        sentence = (f"{found} of the {checked} external images are copies of run images (train {counts['train']}, "
                    f"val {counts['val']}, test {counts['test']}; see overlap.csv); "
                    + (f"{excluded} copies of training or validation images are left out of the metrics"
                       if not keep else "all are kept in the metrics (--keep-overlap)")
                    + ("; test copies are kept but make the set less external" if counts["test"] else ""))
    return {"checked": int(checked), "max_distance": int(max_distance), "found": found, "by_split": counts,
            "excluded": excluded, "kept": bool(keep), "summary": sentence}
