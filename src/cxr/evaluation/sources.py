"""Where each image came from, and whether the model's accuracy could be the source's.

The database's `<Class>.metadata.xlsx` files (columns FILE NAME, FORMAT, SIZE, URL) give every
image's original collection. Classes confined to one collection, and collections shared by only a
few classes, let a model tell classes apart by hospital, scanner or age group instead of disease:
the audit reports metrics per source and per class x source and says so in plain words.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["assign_sources", "composition", "metadata_files", "per_source_frame", "read_sources", "source_audit",
           "source_name", "SOURCE_NAMES", "UNKNOWN", "warnings"]

# Readable names for the URLs the metadata files use; anything else is shown as its URL.
SOURCE_NAMES = {
    "sirm.org": "SIRM",
    "bimcv": "BIMCV/PadChest",
    "covid-cxnet": "COVID-CXNet",
    "eurorad": "Eurorad",
    "ml-workgroup": "ml-workgroup",
    "ieee8023": "ieee8023 COVID collection",
    "rsna-pneumonia-detection-challenge": "RSNA (adults)",
    "chest-xray-pneumonia": "Kaggle paediatric pneumonia (children)",
}
UNKNOWN = "unknown"


def source_name(url: str) -> str:
    """A readable collection name for a metadata URL (RSNA, BIMCV, ...), or the URL itself."""
    lowered = str(url).lower()
    return next((name for key, name in SOURCE_NAMES.items() if key in lowered), str(url).strip())


def _key(name: str) -> str:
    """The image's identity across naming quirks: the Normal sheet writes NORMAL-<n> for Normal-<n>.png."""
    return Path(str(name)).stem.strip().lower()


def metadata_files(root: str | os.PathLike) -> list[Path]:
    """`<Class>.metadata.xlsx` files in the dataset folder or one level below it (Kaggle's archive layout)."""
    root = Path(root)
    return sorted({*root.glob("*.metadata.xlsx"), *root.glob("*/*.metadata.xlsx")})


def read_sources(root: str | os.PathLike) -> dict[str, str]:
    """{image key: source name} from every metadata file found; empty when there are none."""
    mapping: dict[str, str] = {}
    for path in metadata_files(root):
        sheet = pd.read_excel(path, usecols=["FILE NAME", "URL"])
        mapping.update(zip(sheet["FILE NAME"].map(_key), sheet["URL"].map(source_name), strict=True))
    return mapping


def assign_sources(files: pd.Series | list[str], mapping: dict[str, str]) -> np.ndarray:
    """Each file's source from `read_sources`' mapping; UNKNOWN where the metadata has no row for it."""
    return np.array([mapping.get(_key(f), UNKNOWN) for f in files], dtype=object)


def _group_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict:
    return {"images": int(len(truth)), "accuracy": float(np.mean(truth == predicted)) if len(truth) else None}


def source_audit(
    truth: np.ndarray, probabilities: np.ndarray, test_sources: np.ndarray, classes: list[str],
    all_labels: pd.Series, all_sources: np.ndarray,
) -> dict:
    """Test metrics per source and per class x source, and warnings drawn from the whole split
    (`all_labels`, `all_sources`: every image of train, val and test).
    """
    predicted = probabilities.argmax(axis=1)
    per_source = {source: _group_metrics(truth[test_sources == source], predicted[test_sources == source])
                  for source in sorted(set(test_sources))}
    rows = []
    for k, label in enumerate(classes):
        for source in sorted(set(test_sources[truth == k])):
            members = (truth == k) & (test_sources == source)
            rows.append({"class": label, "source": source, "images": int(members.sum()),
                         "sensitivity": float(np.mean(predicted[members] == k)),
                         "predicted_as": {classes[j]: int(n) for j, n in
                                          enumerate(np.bincount(predicted[members], minlength=len(classes))) if n}})
    return {"available": True, "per_source": per_source, "per_class_source": rows,
            "composition": composition(all_labels, all_sources), "warnings": warnings(all_labels, all_sources)}


def composition(labels: pd.Series, sources: np.ndarray) -> dict[str, dict[str, int]]:
    """{class: {source: images}} over the whole split."""
    table = pd.crosstab(pd.Series(np.asarray(labels), name="class"), pd.Series(sources, name="source"))
    return {label: {source: int(n) for source, n in row.items() if n} for label, row in table.iterrows()}


def warnings(labels: pd.Series, sources: np.ndarray) -> list[str]:
    """Plain-language warnings about classes that a source alone could identify."""
    table = composition(labels, sources)
    classes_of: dict[str, set[str]] = {}
    for label, counts in table.items():
        for source in counts:
            classes_of.setdefault(source, set()).add(label)
    notes = []
    for label, counts in table.items():
        known = {s: n for s, n in counts.items() if s != UNKNOWN}
        total = sum(known.values())
        if len(known) == 1:
            source = next(iter(known))
            others = sorted(classes_of[source] - {label})
            if others:
                shared = ", ".join(f"{table[o][source]} {o}" for o in others)
                notes.append(f"All {total} {label} images come from {source}, which also supplies {shared} images: "
                             f"between these classes the model may be telling sources apart, not diseases.")
            else:
                notes.append(f"All {total} {label} images come from {source} and no other class does: the model can "
                             "recognise the source instead of the disease.")
            continue
        exclusive = sorted(s for s in known if classes_of[s] == {label})
        if exclusive:
            share = sum(known[s] for s in exclusive)
            notes.append(f"{share} of the {total} {label} images come from sources that supply no other class "
                         f"({', '.join(exclusive)}): the model can learn their look (scanner, markers, patients) "
                         f"as '{label}'.")
    unknown = sum(counts.get(UNKNOWN, 0) for counts in table.values())
    if unknown:
        notes.append(f"{unknown} image(s) are not in the metadata files; their source is unknown.")
    return notes


def per_source_frame(audit: dict) -> pd.DataFrame:
    """One row per class x source of the test set, for metrics_per_source.csv."""
    frame = pd.DataFrame(audit["per_class_source"], columns=["class", "source", "images", "sensitivity",
                                                              "predicted_as"])
    frame["predicted_as"] = frame["predicted_as"].map(lambda counts: "; ".join(f"{k}: {v}" for k, v in counts.items()))
    return frame
