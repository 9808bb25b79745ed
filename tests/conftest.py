"""Shared fixtures: the real sample (read in place), phantom datasets and a small trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxr.config import resolve
from cxr.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DEFAULT = REPO.parent / "shared" / "data" / "cxr-sample" / "COVID-19_Radiography_Dataset"


# Fixtures that train a model: every test that uses one is slow, whatever its own body does.
TRAINING_FIXTURES = {"tiny_run", "lesion_model"}


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the tests that train through a fixture as slow, so that `-m "not slow"` stays fast."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def sample_root() -> Path:
    """The real 450-image sample. Without it the tests that read it are skipped, except on CI
    (`CI=true`), which must run them, so a missing sample fails the run there."""
    root = Path(os.environ.get("CXR_SAMPLE_DATA", SAMPLE_DEFAULT))
    if not root.is_dir():
        message = f"the real sample is not at {root}; set CXR_SAMPLE_DATA to its COVID-19_Radiography_Dataset folder"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def sample() -> Path:
    return sample_root()


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    """A small four-class phantom dataset in the Kaggle layout (12 images per class, 64 px)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("phantoms"), per_class=12, size=64, seed=3)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, phantoms) -> Path:
    """A finished run of the tiny backbone on phantoms: model, split, history and evaluation."""
    from cxr.training.loop import train

    config = resolve(recipe="reference", data=str(phantoms), runs_dir=str(tmp_path_factory.mktemp("runs")), name="tiny",
                     backbone="tiny", weights="none", image_size=32, epochs=2, batch_size=8, seed=1,
                     bootstrap=200)
    return train(config, progress=False, echo=lambda *_: None)
