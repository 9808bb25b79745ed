"""The test setup itself: the fast set trains nothing, and the real sample is optional except on CI."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TEST = "tests/data/test_split.py::test_real_sample_is_split_80_10_10_per_class"


def run_pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "CI"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=REPO,
                          env={**environment, **env}, capture_output=True, text=True, timeout=300)


def test_without_the_sample_its_tests_skip_naming_the_variable_but_fail_on_ci(tmp_path):
    nowhere = str(tmp_path / "nowhere")
    skipped = run_pytest(SAMPLE_TEST, "-rs", CXR_SAMPLE_DATA=nowhere)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    assert f"the real sample is not at {nowhere}; set CXR_SAMPLE_DATA" in skipped.stdout
    failed = run_pytest(SAMPLE_TEST, CXR_SAMPLE_DATA=nowhere, CI="true")
    assert failed.returncode != 0 and "1 error" in failed.stdout and "CXR_SAMPLE_DATA" in failed.stdout


def test_the_fast_set_leaves_out_every_test_that_trains_through_a_fixture():
    collected = run_pytest("--collect-only", "-m", "not slow", "tests/serve/test_serve.py")
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert "test_the_micro_batcher_groups_concurrent_requests" in collected.stdout  # needs no model
    assert "test_health_readiness_and_model_description" not in collected.stdout  # uses tiny_run: trains
