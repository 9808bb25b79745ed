"""What cxr says, where a person or a log file can read it.

- `progress`: tqdm's bar on a terminal; anywhere else (a file, a pipe, a batch job, CI) a plain line now
  and then, instead of thousands of carriage-return frames (a scan of 13,808 images wrote 15 kB of them).
- `run_log`: a run's `train.log`, written by Python's logging (a FileHandler on the `cxr` logger). What a
  command says before its run folder exists (the scan, the split) is held by a MemoryHandler and written
  first, so the file holds everything the console showed, with times.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["LINE_EVERY", "LOG_FILE", "LOGGER", "RunLog", "progress", "run_log"]

LOGGER = logging.getLogger("cxr")
LOG_FILE = "train.log"
LINE_EVERY = 60.0  # seconds between two progress lines when the output is not a terminal
_FORMAT = "%(asctime)s %(message)s"

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, enabled: bool = True, unit: str = "img",
             stream: Any = None, every: float | None = None,
             clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Iterate over `items`, showing progress on `stream` (default stderr).

    Args:
        items: what to iterate over.
        total: how many there are.
        desc: what is being done ("scan", "decode train").
        enabled: False: no progress at all.
        unit: what one item is, for the bar.
        stream: where progress goes (default sys.stderr).
        every: seconds between plain lines when `stream` is not a terminal (default LINE_EVERY).
        clock: seconds (a test's fake clock).
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        yield from items
        return
    if getattr(stream, "isatty", lambda: False)():
        yield from tqdm(items, total=total, desc=desc, unit=unit, file=stream)
        return
    every = LINE_EVERY if every is None else every
    started = last = clock()
    done = 0
    for item in items:
        yield item
        done += 1
        now = clock()
        if now - last >= every and done < total:
            last = now
            print(f"{desc}: {done:,}/{total:,} ({100 * done / max(total, 1):.0f} %), {now - started:.0f} s",
                  file=stream, flush=True)
    print(f"{desc}: {done:,}/{total:,} done in {clock() - started:.0f} s", file=stream, flush=True)


class RunLog:
    """The `cxr` logger's records for one command: held in memory until the run folder is known, then
    written to its train.log (appended to, so a resumed run's log continues).
    """

    def __init__(self) -> None:
        self.memory = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        self.file: logging.FileHandler | None = None

    def echo(self, text: str) -> None:
        """Log one message (the console prints it separately)."""
        LOGGER.info(text)

    def to_folder(self, folder: str | os.PathLike) -> Path:
        """Start writing to `folder/train.log`, beginning with what was said so far."""
        path = Path(folder) / LOG_FILE
        if self.file is None:
            self.file = logging.FileHandler(path, mode="a", encoding="utf-8")
            self.file.setFormatter(logging.Formatter(_FORMAT))
            self.memory.setTarget(self.file)
            self.memory.flush()
            LOGGER.removeHandler(self.memory)  # from now on each line is written at once
            LOGGER.addHandler(self.file)
        return path


@contextlib.contextmanager
def run_log() -> Iterator[RunLog]:
    """Collect the `cxr` logger's INFO records of this block for a run's train.log (see RunLog)."""
    log = RunLog()
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    LOGGER.addHandler(log.memory)
    try:
        yield log
    except BaseException as error:  # how the command ended belongs in the log too (a stop, an error)
        LOGGER.info(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
        raise
    finally:
        for handler in (log.memory, log.file):
            if handler is not None:
                LOGGER.removeHandler(handler)
                handler.close()
        LOGGER.setLevel(level)
