"""Synthetic chest-X-ray-like phantoms, so the demo and the tests need no download.

Each image is a torso with two dark lung fields, a mediastinum and faint ribs, with random
position, size, rotation, exposure and noise. The four classes differ in what the lungs hold,
in ways a radiologist would recognise and a small network can learn:

- Normal: clear lungs.
- COVID: bilateral, peripheral, lower-zone patchy ground-glass opacities.
- Lung_Opacity: one dense, well-defined consolidation in one lung.
- Viral Pneumonia: diffuse bilateral perihilar streaks (an interstitial pattern).

These are phantoms for exercising the software, not a model of disease.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

__all__ = ["CLASSES", "make_phantom", "write_synthetic_dataset"]

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


def _blob(canvas: np.ndarray, center: tuple[float, float], axes: tuple[float, float],
          angle: float, value: float, blur: float) -> None:
    """Add a soft-edged filled ellipse of intensity `value` to a float canvas in place."""
    layer = np.zeros_like(canvas)
    cv2.ellipse(layer, (int(center[0]), int(center[1])), (max(1, int(axes[0])), max(1, int(axes[1]))),
                angle, 0, 360, value, -1, lineType=cv2.LINE_AA)
    if blur > 0:
        layer = cv2.GaussianBlur(layer, (0, 0), blur)
    canvas += layer


def _anatomy(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A normal phantom chest and its two lung fields as (cx, cy, half-width, half-height)."""
    s = size
    canvas = np.full((s, s), 15.0 + rng.normal(0, 4), dtype=np.float32)
    cx = s * (0.5 + rng.normal(0, 0.02))
    cy = s * (0.53 + rng.normal(0, 0.02))
    scale = rng.uniform(0.88, 1.05)
    _blob(canvas, (cx, cy), (0.46 * s * scale, 0.50 * s * scale), 0, 125 + rng.normal(0, 8), s * 0.03)
    lungs = []
    for side in (-1, 1):
        lx = cx + side * 0.19 * s * scale
        ly = cy - 0.03 * s * scale
        w, h = 0.13 * s * scale * rng.uniform(0.92, 1.08), 0.30 * s * scale * rng.uniform(0.92, 1.08)
        _blob(canvas, (lx, ly), (w, h), side * rng.uniform(2, 8), -85 + rng.normal(0, 5), s * 0.02)
        lungs.append((lx, ly, w, h))
        ribs = np.zeros_like(canvas)
        for k in range(5):  # ribs: faint bright arcs across each lung field
            ry = ly - h + (k + 0.8) * (2 * h / 5.5)
            cv2.ellipse(ribs, (int(lx), int(ry)), (int(w * 1.05), int(h * 0.15)), 0, 200, 340,
                        14.0, max(1, s // 96), cv2.LINE_AA)
        canvas += cv2.GaussianBlur(ribs, (0, 0), s * 0.004)
    _blob(canvas, (cx - 0.02 * s, cy + 0.06 * s), (0.09 * s * scale, 0.17 * s * scale), 0,
          70 + rng.normal(0, 6), s * 0.025)
    return canvas, lungs


def _covid(canvas: np.ndarray, lungs: list, size: int, rng: np.random.Generator) -> None:
    for side, (lx, ly, w, h) in zip((-1, 1), lungs, strict=True):
        for _ in range(rng.integers(3, 6)):
            px = lx + side * w * rng.uniform(0.25, 0.75)
            py = ly + h * rng.uniform(0.0, 0.75)
            _blob(canvas, (px, py), (w * rng.uniform(0.25, 0.45), h * rng.uniform(0.12, 0.25)),
                  rng.uniform(0, 180), rng.uniform(28, 42), size * 0.035)


def _lung_opacity(canvas: np.ndarray, lungs: list, size: int, rng: np.random.Generator) -> None:
    lx, ly, w, h = lungs[rng.integers(0, 2)]
    px = lx + w * rng.uniform(-0.3, 0.3)
    py = ly + h * rng.uniform(-0.5, 0.5)
    _blob(canvas, (px, py), (w * rng.uniform(0.45, 0.7), h * rng.uniform(0.25, 0.4)),
          rng.uniform(0, 180), rng.uniform(70, 90), size * 0.012)


def _viral_pneumonia(canvas: np.ndarray, lungs: list, size: int, rng: np.random.Generator) -> None:
    layer = np.zeros_like(canvas)
    for side, (lx, ly, w, h) in zip((-1, 1), lungs, strict=True):
        hilum = (lx - side * w * 0.6, ly + h * 0.05)
        for _ in range(rng.integers(10, 15)):
            angle = rng.uniform(-1.2, 1.2) + (0 if side > 0 else np.pi)
            length = rng.uniform(0.5, 1.1) * w * 1.4
            end = (hilum[0] + np.cos(angle) * length, hilum[1] + np.sin(angle) * length * 1.6)
            cv2.line(layer, (int(hilum[0]), int(hilum[1])), (int(end[0]), int(end[1])),
                     float(rng.uniform(35, 55)), max(1, size // 80), cv2.LINE_AA)
    canvas += cv2.GaussianBlur(layer, (0, 0), size * 0.006)


_FINDINGS = {"COVID": _covid, "Lung_Opacity": _lung_opacity, "Normal": None,
             "Viral Pneumonia": _viral_pneumonia}


def make_phantom(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 grayscale phantom of the given class."""
    if kind not in _FINDINGS:
        raise ValueError(f"unknown phantom class {kind!r}; choose from {', '.join(CLASSES)}")
    canvas, lungs = _anatomy(size, rng)
    finding = _FINDINGS[kind]
    if finding is not None:
        finding(canvas, lungs, size, rng)
    angle = rng.normal(0, 3)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, matrix, (size, size), borderMode=cv2.BORDER_REPLICATE)
    canvas = canvas * rng.uniform(0.85, 1.15) + rng.normal(0, 8)
    canvas += rng.normal(0, 6, canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def write_synthetic_dataset(
    root: str | os.PathLike,
    per_class: int = 100,
    size: int = 128,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
) -> Path:
    """Write a deterministic phantom dataset in the Kaggle layout: root/<Class>/images/<Class>-<n>.png."""
    root = Path(root)
    for class_index, kind in enumerate(classes):
        folder = root / kind / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            rng = np.random.default_rng([seed, class_index, n])
            image = make_phantom(kind, size, rng)
            ok, encoded = cv2.imencode(".png", image)
            if not ok:
                raise RuntimeError(f"PNG encoding failed for {kind}-{n}")
            (folder / f"{kind}-{n}.png").write_bytes(encoded.tobytes())
    return root
