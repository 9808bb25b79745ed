"""Decode any image file the tool accepts into 8-bit grayscale, with a reason when it cannot.

One loader for scanning, training, evaluation and prediction, so every path sees the same pixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from cxr.data.dicom import DICOM_MAGIC_OFFSET, decode_dicom, is_dicom
from cxr.errors import ImageError

__all__ = ["decode_gray", "image_format", "IMAGE_SUFFIXES", "load_image", "looks_like_image", "read_bytes",
           "read_gray", "resize_square", "to_gray8"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")

_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def image_format(data: bytes) -> str | None:
    """"PNG", "JPEG", "BMP", "TIFF" or "DICOM" by the file's content; None for anything else."""
    if is_dicom(data):
        return "DICOM"
    for signature, name in _SIGNATURES.items():
        if data.startswith(signature):
            return name
    return None


# What a folder walk accepts by content when the name does not say: PNG, JPEG and DICOM (PACS exports
# are often named IM0001 with no extension). BMP's two-byte "BM" is too weak a sign to trust alone.
_SNIFFED_FORMATS = ("PNG", "JPEG", "DICOM")
_SNIFF_BYTES = DICOM_MAGIC_OFFSET + 4


def looks_like_image(path: str | os.PathLike) -> bool:
    """Whether a file found in a folder should be read as an image: an image suffix, or the first bytes
    of a PNG, JPEG or DICOM file. An unreadable file with an image suffix still counts (and is then
    reported with its reason); an unreadable file without one does not.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return image_format(head) in _SNIFFED_FORMATS


def to_gray8(image: np.ndarray) -> np.ndarray:
    """Convert a decoded OpenCV image (gray, BGR, BGRA; 8 or 16 bit) to uint8 grayscale.

    16-bit data is scaled by the bit depth its maximum implies (12-bit data stored in 16 bits
    becomes full range; data that uses all 16 bits is divided by 257), so scaling is monotone
    and does not depend on the image's contrast.
    """
    if image.ndim == 3:
        if image.shape[2] == 1:
            image = image[:, :, 0]
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            raise ValueError(f"unsupported number of channels: {image.shape[2]}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        peak = int(image.max())
        bits = max(8, math.ceil(math.log2(peak + 1))) if peak > 0 else 8
        scaled = image.astype(np.float32) * (255.0 / (2**bits - 1))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported pixel type: {image.dtype}")


def decode_gray(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode image bytes into a uint8 grayscale array (H, W); raise ImageError if impossible."""
    if len(data) == 0:
        raise ImageError(path, "empty file")
    kind = image_format(data)
    if kind == "DICOM":
        return decode_dicom(data, path)
    if kind is None:
        raise ImageError(path, "not an image (unrecognised content)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageError(path, f"{kind} cannot be decoded (truncated or corrupt)")
    try:
        gray = to_gray8(image)
    except ValueError as error:
        raise ImageError(path, str(error)) from None
    return _upright(gray, data) if kind == "JPEG" else gray


# EXIF orientation -> the array operation that shows the image upright (PIL's ImageOps.exif_transpose table).
_ORIENTATIONS = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                 5: lambda a: a.T, 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).T,
                 8: lambda a: np.rot90(a)}


def _upright(gray: np.ndarray, data: bytes) -> np.ndarray:
    """A JPEG as a viewer shows it: a camera (a phone photographing a film, say) stores the pixels as the
    sensor read them and the rotation in EXIF, which OpenCV's IMREAD_UNCHANGED does not apply.
    """
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # an unreadable EXIF block leaves the pixels as stored
        return gray
    turn = _ORIENTATIONS.get(orientation)
    return np.ascontiguousarray(turn(gray)) if turn else gray


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes, or ImageError("unreadable (...)") for a missing or unreadable file."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageError(path, f"unreadable ({error.strerror or error})") from None


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read and fully decode an image file into uint8 grayscale (H, W)."""
    return decode_gray(read_bytes(path), path)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a grayscale image to size x size (area interpolation when shrinking)."""
    if image.shape == (size, size):
        return image
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read an image file as the model's input: uint8 grayscale, size x size."""
    return resize_square(read_gray(path), size)
