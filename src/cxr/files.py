"""Atomic file output and numbered folders.

Every file a run writes goes through these helpers, so a crash or a kill never leaves a
half-written file behind, and a new folder never reuses an earlier one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

__all__ = ["DIR_MODE", "atomic_path", "new_numbered_dir", "remove_temporaries", "sha256", "write_csv", "write_json",
           "write_text", "write_with"]

if TYPE_CHECKING:
    import pandas as pd


_UMASK = os.umask(0)  # read once, at import (the only portable way), and put straight back
os.umask(_UMASK)
DIR_MODE = 0o777 & ~_UMASK  # what os.mkdir would give a new folder (tempfile.mkdtemp makes it private)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, new: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the final suffix (Keras and matplotlib choose the format by it). With `new`,
    a file that appeared at `path` meanwhile is never replaced: FileExistsError (a hard link publishes the
    file only where none is; where the file system has none, the existence check comes just before).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes it private; the final file gets the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        if new:
            _publish_new(tmp_path, path)
        else:
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _publish_new(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails if `path` exists, atomically
    except FileExistsError:
        raise FileExistsError(f"{path} already exists (it appeared while this was written); nothing replaced it") \
            from None
    except OSError:  # no hard links here (some network and FAT file systems)
        if path.exists():
            raise FileExistsError(f"{path} already exists; nothing replaced it") from None
        os.replace(tmp, path)


def remove_temporaries(folder: str | os.PathLike, echo: Callable[[str], None] = print) -> int:
    """Delete the temporaries of `atomic_path` (`.name.xxxx.ext`) that a killed process left under `folder`."""
    removed = 0
    for path in Path(folder).rglob(".*"):
        if path.is_file() and path.name.count(".") >= 3:  # .name.xxxx.ext; a lock file (.lock) has one dot
            path.unlink()
            removed += 1
    if removed:
        echo(f"removed {removed} partly written temporary file(s) left by the interrupted process")
    return removed


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes: ties a derived file (an ONNX export, a temperature) to its model."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write indented JSON."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, frame: pd.DataFrame, new: bool = False, **kwargs: Any) -> Path:
    """Atomically write a DataFrame as CSV (without its index unless asked); `new`: see atomic_path."""
    kwargs.setdefault("index", False)
    with atomic_path(path, new=new) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def write_with(path: str | os.PathLike, save: Callable[[Path], Any]) -> Path:
    """Atomically write a file that a library saves itself (a Keras model, a figure)."""
    with atomic_path(path) as tmp:
        save(tmp)
    return Path(path)


def new_numbered_dir(base: str | os.PathLike) -> Path:
    """Create `base`, or `base-2`, `base-3`... if taken; an existing folder is never reused.

    `mkdir` itself decides, so two processes racing for the same name get different folders.
    """
    base = Path(base)
    for attempt in range(1, 1000):
        candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not create a new folder named like {base}")
