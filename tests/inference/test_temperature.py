"""Applying a temperature and finding one: what a user is told when there is none."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.errors import UserError
from cxr.inference.temperature import apply_temperature, find_temperature, require_temperature


def test_a_temperature_of_one_changes_nothing_and_rows_still_sum_to_one():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]])
    np.testing.assert_allclose(apply_temperature(probabilities, 1.0), probabilities)
    flatter = apply_temperature(probabilities, 3.0)
    np.testing.assert_allclose(flatter.sum(axis=1), 1.0)
    assert (flatter.max(axis=1) < probabilities.max(axis=1)).all()


def test_a_model_file_outside_a_run_is_told_so(tmp_path):
    copied = tmp_path / "model.keras"
    copied.write_bytes(b"not read")
    assert find_temperature(copied) is None
    with pytest.raises(UserError, match=f"no temperature for {copied}: the file carries none and it is not in a "
                                        "run folder, where evaluations keep the temperature they fit; predict from "
                                        "the model inside its run, hand it on with cxr package RUN --out DIR"):
        require_temperature(copied)
