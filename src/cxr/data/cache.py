"""Decode once: each split's images at a given size, in memory or as one memory-mapped uint8 `.npy`.

The reference pipeline decoded and resized every PNG again in every epoch. Here the first use of a
file list at a size decodes it in parallel into `<cache>/<size>px-<key>.npy`; later epochs and
later runs map that file instead, so memory stays near one byte per pixel and only the pages a
batch touches are read. The key hashes the size and every file's path, byte size and modification
time, so a changed data set gets a new cache instead of stale pixels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import files as outputs
from cxr import logs
from cxr.data.images import load_image
from cxr.errors import DatasetError, ImageError

__all__ = ["CACHE_FORMAT", "cache_key", "cached_images", "decode_into", "load_split_images", "resolve_cache_dir",
           "unreadable_images"]

CACHE_FORMAT = 3  # 2: JPEGs upright by their EXIF orientation; 3: DICOM windows as a viewer shows them


def decode_into(
    out: np.ndarray,
    root: str | os.PathLike,
    files: list[str] | pd.Series,
    size: int,
    workers: int = 0,
    progress: bool = True,
    desc: str = "decode",
) -> None:
    """Decode files (relative to root) into `out`, an array or writable memory map (N, size, size, 1).

    OpenCV releases the GIL while decoding and resizing, so threads use every core. Raises
    DatasetError naming every file that does not decode (a reused split may point at files that
    changed since it was made).
    """
    root = Path(root)
    paths = [root / f for f in files]
    failures = []

    def load(index: int) -> None:
        try:
            out[index, :, :, 0] = load_image(paths[index], size)
        except ImageError as error:
            failures.append(f"{error.path}: {error.reason}")

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for _ in logs.progress(pool.map(load, range(len(paths))), len(paths), desc, enabled=progress):
            pass
    if failures:
        raise unreadable_images(failures)


def unreadable_images(failures: list[str]) -> DatasetError:
    """One error listing the split's unreadable files ("path: reason"), the first ten in order."""
    shown = "\n  ".join(sorted(failures)[:10])
    more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
    return DatasetError(f"{len(failures)} image(s) in the split cannot be read:\n  {shown}{more}")


def cache_key(root: str | os.PathLike, files: list[str] | pd.Series, size: int) -> str:
    """A digest of the size and each file's path, byte size and modification time (order matters)."""
    root = Path(root)
    digest = hashlib.sha256(f"cxr-cache {CACHE_FORMAT} {size}\n".encode())
    missing = []
    for name in files:
        try:
            stat = (root / name).stat()
        except OSError as error:
            missing.append(f"{root / name}: {error.strerror or error}")
            continue
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    if missing:
        raise unreadable_images(missing)
    return digest.hexdigest()[:24]


def cached_images(
    cache_dir: str | os.PathLike,
    root: str | os.PathLike,
    files: list[str] | pd.Series,
    size: int,
    workers: int = 0,
    progress: bool = True,
    desc: str = "decode",
    echo: Callable[[str], None] = print,
) -> np.memmap:
    """The images of `files` at `size` as a read-only memory map (N, size, size, 1), decoding if needed."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{size}px-{cache_key(root, files, size)}.npy"
    shape = (len(files), size, size, 1)
    if path.is_file():
        try:
            images = np.load(path, mmap_mode="r")
            if images.shape == shape and images.dtype == np.uint8:
                echo(f"decode cache: reusing {path}")
                return images
            reason = f"shape {images.shape} instead of {shape}"
        except (OSError, ValueError) as error:
            reason = str(error)
        echo(f"decode cache {path} is damaged ({reason}); decoding again")

    with outputs.atomic_path(path) as tmp:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        decode_into(images, root, files, size, workers, progress, desc)
        images.flush()
        del images
    outputs.write_json(path.with_suffix(".json"), {
        "format": CACHE_FORMAT, "root": str(root), "size": size, "images": len(files),
        "files": list(files)})
    echo(f"decode cache: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return np.load(path, mmap_mode="r")


def resolve_cache_dir(setting: str, runs_dir: str | os.PathLike) -> Path | None:
    """`auto` is `<runs_dir>/cache`; `none` turns the cache off (decode into memory every run)."""
    if setting == "none":
        return None
    return Path(runs_dir) / "cache" if setting == "auto" else Path(setting).expanduser()


def load_split_images(cache_dir: Path | None, root: str | os.PathLike, files: list[str] | pd.Series, size: int,
                      workers: int = 0, progress: bool = True, desc: str = "decode",
                      echo: Callable[[str], None] = print) -> np.ndarray:
    """From the cache when there is one, else decoded into memory."""
    if cache_dir is None:
        images = np.empty((len(files), size, size, 1), dtype=np.uint8)
        decode_into(images, root, files, size, workers, progress, desc)
        return images
    return cached_images(cache_dir, root, files, size, workers, progress, desc, echo)
