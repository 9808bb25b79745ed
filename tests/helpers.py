"""Helpers that several test modules share (test modules never import each other)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cxr.environment import active_backend
from cxr.run import Run

# What a test assumes of the machine, said where it assumes it: these tests run the TensorFlow backend in
# the pytest process itself (ONNX export converts a TensorFlow graph); KERAS_BACKEND=jax pytest skips them.
needs_tensorflow = pytest.mark.skipif(active_backend() != "tensorflow",
                                      reason="needs the TensorFlow backend in this process (KERAS_BACKEND=tensorflow)")


def only_run(runs: Path) -> Path:
    """The one run folder in a runs folder (which also holds the decode cache and demo data)."""
    folders = [p for p in runs.iterdir() if p.is_dir() and p.name not in ("cache", "demo-data")]
    assert len(folders) == 1, folders
    return folders[0]


def read_state(run: str | Path) -> dict[str, Any] | None:
    """The run's saved training state (checkpoints/state.json)."""
    return Run(run).state()


# DICOM files made with pydicom ---------------------------------------------------------------

def ramp12(height=40, width=50) -> np.ndarray:
    """12-bit data: a horizontal ramp with a bright square."""
    image = np.tile(np.linspace(200, 3000, width), (height, 1))
    image[10:20, 10:20] = 4000
    return image.astype(np.uint16)


def dicom_bytes(pixels: np.ndarray | None, photometric="MONOCHROME2", syntax=None,
                encoded: bytes | None = None, frames: int | None = None, window=None, **extra) -> bytes:
    """A DICOM Part 10 file (Secondary Capture, CR) holding `pixels` (None: no pixel data)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    syntax = syntax or ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        bits = 8 if pixels.dtype == np.uint8 else 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, (8 if bits == 8 else 12), (7 if bits == 8 else 11)
        ds.PixelRepresentation = 0
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = encoded if encoded is not None else pixels.tobytes()
        if window:
            ds.WindowCenter, ds.WindowWidth = window
    for key, value in extra.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pacs_export(folder):
    """A folder as a PACS export leaves it: DICOM files named IM0001... without an extension, a PNG without
    one either, beside a note, a spreadsheet and hidden files, which are not images."""
    (folder / "series" / ".thumbs").mkdir(parents=True)
    (folder / "series" / "IM0001").write_bytes(dicom_bytes(ramp12(64, 64)))
    (folder / "series" / "IM0002").write_bytes(dicom_bytes((4095 - ramp12(64, 64)).astype(np.uint16), "MONOCHROME1"))
    (folder / "series" / "snapshot").write_bytes(cv2.imencode(".png", np.full((40, 40), 90, np.uint8))[1].tobytes())
    (folder / "series" / "README").write_text("exported from the PACS on Monday")
    (folder / "series" / "index.xlsx").write_bytes(b"PK\x03\x04 not an image")
    (folder / "series" / ".DS_Store").write_bytes(b"\0" * 200)
    (folder / "series" / ".thumbs" / "IM0001").write_bytes(dicom_bytes(ramp12(8, 8)))
    return folder / "series"


# A real browser and a real server -------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """Debian's chromium (`.ci/run` installs it); elsewhere the browser test is skipped, never on CI."""
    found = os.environ.get("CXR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def run_chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def running(app):
    """A real uvicorn server for `app` on a free loopback port; yields its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    import uvicorn

    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


def tensorboard_scalars(folder) -> dict[str, list[float]]:
    """Every scalar in the event files under `folder`, by tag, in step order."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    scalars: dict[str, list[float]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                scalars.setdefault(f"{path.parent.name}/{value.tag}", []).append(float(number))
    return scalars
