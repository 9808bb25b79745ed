"""Find the classes and images of a dataset folder, and check every file by decoding it.

Two layouts are read: Kaggle's `<root>/<Class>/images/*.png` (with `masks/` and the
`*.metadata.xlsx` files beside it, which are ignored here) and a plain `<root>/<Class>/*.png|jpg`.
Bad files do not stop a scan: they are returned with a reason, for `skipped.csv`.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import pandas as pd
from PIL import Image

from cxr import logs
from cxr.data.images import decode_gray, looks_like_image, read_bytes
from cxr.errors import DatasetError, ImageError

__all__ = ["check_image", "discover_classes", "IMAGE_COLUMNS", "PHASH_SIZE", "Scan", "scan_dataset", "SKIPPED_COLUMNS"]

IMAGE_COLUMNS = ["file", "label", "md5", "phash", "height", "width"]
SKIPPED_COLUMNS = ["file", "label", "reason"]
# A 16x16 DCT hash (256 bits): on the real sample, distinct radiographs differ in at least 54
# bits, while a resized, JPEG-recompressed, re-contrasted copy differs in at most 14.
PHASH_SIZE = 16


@dataclass
class Scan:
    """What a dataset folder holds: its classes, every usable image and every skipped file."""

    root: Path
    classes: list[str]
    layout: str  # "kaggle", "plain" or "mixed"
    images: pd.DataFrame  # IMAGE_COLUMNS; `file` is relative to root, with "/" separators
    skipped: pd.DataFrame  # SKIPPED_COLUMNS


def _class_files(folder: Path) -> tuple[str, list[Path]]:
    """The layout of one class folder and its candidate files (hidden files are ignored)."""
    images = folder / "images"
    layout, source = ("kaggle", images) if images.is_dir() else ("plain", folder)
    # A broken link is a candidate too: it is then reported in skipped.csv as unreadable, not lost silently.
    files = sorted(p for p in source.iterdir()
                   if (p.is_file() or (p.is_symlink() and not p.exists())) and not p.name.startswith("."))
    return layout, files


def discover_classes(root: Path) -> dict[str, tuple[str, list[Path]]]:
    """Class folders under root: those with an `images/` folder or image files of their own.

    Every other file inside a class folder is a candidate too, so that a stray non-image file
    is reported in `skipped.csv` rather than silently ignored.
    """
    found = {}
    for folder in sorted(_subfolders(root)):
        layout, files = _class_files(folder)
        if layout == "kaggle" or any(looks_like_image(p) for p in files):
            found[folder.name] = (layout, files)
    return found


def _subfolders(root: Path) -> list[Path]:
    """Visible subfolders (skips `.git`, `__MACOSX` and the like)."""
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]


def _resolve_root(root: Path) -> Path:
    """Accept the folder a Kaggle download unpacks to, one level above the class folders."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if (root / "images").is_dir() and {p.name for p in _subfolders(root)} <= {"images", "masks"}:  # not classes
        raise DatasetError(f"{root} is one class folder of the Kaggle layout (an images/ folder inside); give the "
                           "folder above it, which holds the class folders (for this class alone, a folder that "
                           f"holds only {root.name}/)")
    if discover_classes(root):
        return root
    subfolders = _subfolders(root)
    if len(subfolders) == 1 and discover_classes(subfolders[0]):
        return subfolders[0]
    raise DatasetError(
        f"no class folders found in {root}: expected <Class>/images/*.png (Kaggle layout) "
        "or <Class>/*.png|jpg"
    )


def _check_file(path: Path) -> tuple[str, str, int, int]:
    """Decode a file fully; return its md5, perceptual hash and size, or raise ImageError."""
    data = read_bytes(path)
    gray = decode_gray(data, path)
    phash = str(imagehash.phash(Image.fromarray(gray), hash_size=PHASH_SIZE))
    return hashlib.md5(data).hexdigest(), phash, gray.shape[0], gray.shape[1]


def scan_dataset(
    root: str | os.PathLike,
    classes: list[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    min_classes: int = 2,
) -> Scan:
    """Scan a dataset folder; raise DatasetError when it cannot make a classification task.

    Args:
        root: the dataset folder (or the folder a Kaggle download unpacks to, one level above).
        classes: the class folders to use (default: every one found).
        workers: decoding threads (default: one per core, at most 8).
        progress: show a progress bar.
        min_classes: fewer class folders are refused (2 to train; 1 for an external evaluation,
            where a folder of one class is a fair question to ask of a model).

    Returns:
        The Scan: classes, layout, usable images with their hashes, and skipped files with reasons.
    """
    # Absolute, so that a run's config.yaml and split still find the images from any working folder.
    root = _resolve_root(Path(os.path.abspath(Path(root).expanduser())))
    found = discover_classes(root)
    if classes:
        missing = [name for name in classes if name not in found]
        if missing:
            raise DatasetError(
                f"class folder(s) not found in {root}: {', '.join(missing)} "
                f"(found: {', '.join(found) or 'none'})"
            )
        found = {name: found[name] for name in classes}
    if len(found) < min_classes:
        raise DatasetError(
            f"{root} holds {len(found)} class folder(s) ({', '.join(found) or 'none'}); "
            f"at least {min_classes} are needed"
        )

    jobs = [(name, path) for name, (_, files) in found.items() for path in files]
    rows, skipped = [], []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check_image, [path for _, path in jobs])
        bar = logs.progress(results, len(jobs), "scan", enabled=progress)
        for (label, path), result in zip(jobs, bar, strict=True):
            relative = path.relative_to(root).as_posix()
            if isinstance(result, ImageError):
                skipped.append((relative, label, result.reason))
            else:
                rows.append((relative, label, *result))

    images = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    counts = images["label"].value_counts()
    empty = [name for name in found if counts.get(name, 0) == 0]
    if empty:
        raise DatasetError(
            "class folder(s) without a single valid image: "
            + ", ".join(str(root / name) for name in empty)
        )
    layouts = {layout for layout, _ in found.values()}
    return Scan(
        root=root,
        classes=list(found),
        layout=layouts.pop() if len(layouts) == 1 else "mixed",
        images=images,
        skipped=pd.DataFrame(skipped, columns=SKIPPED_COLUMNS),
    )


def check_image(path: Path) -> tuple[str, str, int, int] | ImageError:
    """md5, perceptual hash, height and width of an image file, or the ImageError saying why it cannot be
    used (returned, not raised, so that a pool of threads goes on past bad files).
    """
    try:
        return _check_file(path)
    except ImageError as error:
        return error
