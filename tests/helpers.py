"""Helpers that several test modules share (test modules never import each other)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr.run import Run


def only_run(runs: Path) -> Path:
    """The one run folder in a runs folder (which also holds the decode cache and demo data)."""
    folders = [p for p in runs.iterdir() if p.is_dir() and p.name not in ("cache", "demo-data")]
    assert len(folders) == 1, folders
    return folders[0]


def read_state(run: str | Path) -> dict[str, Any] | None:
    """The run's saved training state (checkpoints/state.json)."""
    return Run(run).state()
