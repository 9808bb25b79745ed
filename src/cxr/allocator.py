"""A faster memory allocator for `cxr`, where one is installed: tcmalloc, then jemalloc.

On Linux, glibc's malloc gives TensorFlow's large tensors back to the system after every step and maps
them again at the next: on a 2-core AMD EPYC, training DenseNet169 at 128 px spent as long in the kernel
as in computing. tcmalloc keeps them (AMD's ZenDNN guide and Intel's TensorFlow guide both recommend it).
An allocator must be in place before the process starts, so the `cxr` command re-executes itself once
with LD_PRELOAD naming the library, before it imports anything heavy. `CXR_ALLOCATOR` chooses:
`auto` (default: tcmalloc, then jemalloc, else the system's), `system`, `tcmalloc`, `jemalloc`, or a
library's path. macOS and Windows are left alone (their allocators do not show the problem, and
LD_PRELOAD is Linux's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["ENV", "INSTALL_HINT", "active", "describe", "find", "reexec_with_allocator"]

ENV = "CXR_ALLOCATOR"
_REEXECUTED = "CXR_ALLOCATOR_REEXECUTED"  # set in the re-executed process: never loop
LIBRARIES = {"tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"), "jemalloc": ("libjemalloc.so.2",)}
FOLDERS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib/x86_64-linux-gnu",
           "/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
INSTALL_HINT = ("sudo apt-get install libtcmalloc-minimal4 (Debian, Ubuntu) or sudo dnf install gperftools-libs "
                "(Fedora, RHEL)")


def find(choice: str = "auto", folders: tuple[str, ...] = FOLDERS) -> Path | None:
    """The library file for `choice` (auto, tcmalloc, jemalloc or a path), or None if there is none.

    Args:
        choice: what CXR_ALLOCATOR says.
        folders: where libraries are looked for (the usual library folders of Linux distributions).

    Returns:
        The library's path, or None (also for `system`).
    """
    if choice == "system":
        return None
    if choice not in ("auto", *LIBRARIES):
        path = Path(choice)
        return path if path.is_file() else None
    kinds = LIBRARIES if choice == "auto" else {choice: LIBRARIES[choice]}
    for names in kinds.values():
        for folder in folders:
            for name in names:
                if (Path(folder) / name).is_file():
                    return Path(folder) / name
    return None


def active() -> str:
    """The allocator this process runs with: tcmalloc, jemalloc, or system (from its memory map)."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "system"
    for kind in LIBRARIES:
        if f"lib{kind}" in maps:
            return kind
    return "system"


def describe() -> str:
    """One line for the console: which allocator runs and, without a fast one on Linux, how to get it."""
    kind = active()
    if kind != "system":
        return f"memory allocator: {kind}"
    if sys.platform != "linux":
        return "memory allocator: the system's"
    why = "switched off by CXR_ALLOCATOR=system" if os.environ.get(ENV) == "system" else "none faster is installed"
    return (f"memory allocator: the system's ({why}); training on a CPU is up to 3x faster with tcmalloc: "
            f"{INSTALL_HINT}")


def reexec_with_allocator(argv: list[str]) -> None:
    """Re-execute `python -m cxr ARGV` with the chosen allocator preloaded, when there is one to load.

    Returns (doing nothing) off Linux, with CXR_ALLOCATOR=system, when a fast allocator is already
    loaded, when this process is the re-executed one, or when no library is found.
    """
    choice = os.environ.get(ENV, "auto")
    if sys.platform != "linux" or choice == "system" or os.environ.get(_REEXECUTED) or active() != "system":
        return
    library = find(choice)
    if library is None:
        return
    preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD", "")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "cxr", *argv],
              {**os.environ, "LD_PRELOAD": preload, _REEXECUTED: "1"})
