"""From a configuration to a split: scan and split a dataset folder, or reuse a split."""

from __future__ import annotations

import dataclasses
import os

import pandas as pd

from cxr.config import Config
from cxr.data.scan import scan_dataset
from cxr.data.split import Split, make_split, read_split
from cxr.errors import DatasetError

__all__ = ["empty_cells", "prepare_split", "summary_table"]


def prepare_split(config: Config, progress: bool = True, echo=print) -> Split:
    """Scan and split the dataset, or read the split in `config.split`.

    The returned split says which dataset folder its files are relative to (`root`) and the
    class names in model output order (`classes`); `--data` and `--classes` override both.
    """
    if config.split:
        split = read_split(config.split)
        root = config.data or split.root
        if not root:
            raise DatasetError(f"{config.split} does not say which dataset folder its files are in; pass --data")
        root = os.path.abspath(os.path.expanduser(root))  # the run must find it from any working folder
        labels = sorted(set().union(*(set(f["label"]) for f in split.frames.values())))
        echo(f"reusing the split in {config.split} (images relative to {root})")
        return dataclasses.replace(split, root=str(root), classes=list(config.classes or split.classes or labels))

    scan = scan_dataset(config.data, config.classes, config.workers or None, progress)
    echo(f"dataset {scan.root}: {scan.layout} layout, classes {', '.join(scan.classes)}; "
         f"{len(scan.images)} images, {len(scan.skipped)} skipped")
    for row in scan.skipped.itertuples():
        echo(f"  skipped {row.file}: {row.reason}")
    return make_split(scan, tuple(config.split_fractions), config.seed, config.duplicate_distance)


def summary_table(split: Split) -> pd.DataFrame:
    """Images per class (rows) and split (columns)."""
    counts = {name: frame["label"].value_counts() for name, frame in split.frames.items()}
    table = pd.DataFrame(counts).reindex(split.classes).fillna(0).astype(int)
    table["total"] = table.sum(axis=1)
    return table


def empty_cells(split: Split) -> list[str]:
    """Notes for the classes that have no image in val or test: with 10 % each, a class of 4 images or fewer
    goes to train whole, and its test metrics are then undefined (said, not silently missing).
    """
    table = summary_table(split)
    notes = []
    for label, row in table.iterrows():
        missing = [name for name in ("val", "test") if name in row and row[name] == 0]
        if missing and row["total"] > 0:
            notes.append(f"note: class {label} has {row['total']} image(s), none in {' or '.join(missing)}: "
                         + ("its test metrics are undefined" if "test" in missing else "it is not validated")
                         + " (more images of it, or a split of your own with --split)")
    return notes
