"""DICOM radiographs to the model's 8-bit grayscale, as a radiologist's viewer would show them.

The modality LUT (rescale slope/intercept) and then the VOI LUT or window from the file are applied and
the window's output range becomes 0-255, as a viewer shows it (an image that fills only part of its
window stays as grey as it looks there); a file without a window is scaled over its own range.
MONOCHROME1 (white = low values) is inverted so that bone is always bright. Compressed pixel data (JPEG
baseline and others) is decoded by pydicom's pylibjpeg plugins. Files with no pixel data or several frames
are refused with the reason.
"""

from __future__ import annotations

import io
import os

import numpy as np

from cxr.errors import ImageError

__all__ = ["decode_dicom", "DICOM_MAGIC_OFFSET", "is_dicom"]

DICOM_MAGIC_OFFSET = 128


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"


def decode_dicom(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """uint8 grayscale (H, W) from the bytes of a DICOM file; ImageError with a reason otherwise."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ImageError(path, "DICOM support needs pydicom: pip install 'cxr[dicom]'") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # pydicom raises several types for damaged files
        raise ImageError(path, f"DICOM file cannot be read ({error})") from None
    if "PixelData" not in dataset:
        raise ImageError(path, "DICOM file has no pixel data (not an image)")
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(path, f"multi-frame DICOM ({frames} frames); give a single radiograph")
    try:
        pixels = dataset.pixel_array
    except Exception as error:
        syntax = getattr(dataset.file_meta, "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageError(path, f"DICOM pixel data cannot be decoded (transfer syntax {name}: {error})") from None
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3:  # colour (RGB, YBR): a plain luminance
        pixels = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        low, high = float(pixels.min()), float(pixels.max())
    else:
        stored = apply_modality_lut(pixels, dataset)
        try:
            pixels = apply_voi_lut(stored, dataset).astype(np.float64)
            window = _window_output(dataset, apply_voi_lut)
        except Exception:  # a window pydicom refuses (width < 1, say): the image without it, as a viewer falls back
            pixels, window = np.asarray(stored, dtype=np.float64), None
        low, high = window or (float(pixels.min()), float(pixels.max()))
    scaled = np.zeros(pixels.shape) if high <= low else (pixels - low) * (255.0 / (high - low))
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _window_output(dataset, apply_voi_lut) -> tuple[float, float] | None:
    """The range a file's VOI LUT or window maps into (what a viewer shows as black and white), from pydicom's
    own apply_voi_lut: a window clips -inf and +inf to its ends; a LUT maps its first and last entry. None when
    the file has neither, or only empty ones (pydicom then returns its input unchanged).
    """
    sequence = dataset.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        entries, first = int(sequence[0].LUTDescriptor[0]) or 65536, int(sequence[0].LUTDescriptor[1])
        probe = np.array([first, first + entries - 1], dtype=np.int64)
    elif dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None:
        probe = np.array([-np.inf, np.inf])
    else:
        return None
    ends = np.asarray(apply_voi_lut(probe, dataset), dtype=np.float64)
    if ends is probe or not np.isfinite(ends).all():  # pydicom applied nothing (an empty window or LUT)
        return None
    low, high = float(ends.min()), float(ends.max())
    return (low, high) if high > low else None
