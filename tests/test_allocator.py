"""The allocator choice: which library is found, when `cxr` re-executes itself, and what it reports."""

import os
import subprocess
import sys

import pytest

from cxr import allocator


def test_tcmalloc_is_preferred_then_jemalloc_and_system_means_none(tmp_path):
    folders = (str(tmp_path / "a"), str(tmp_path / "b"))
    for folder in folders:
        os.makedirs(folder)
    assert allocator.find("auto", folders) is None
    (tmp_path / "b" / "libjemalloc.so.2").write_bytes(b"")
    assert allocator.find("auto", folders) == tmp_path / "b" / "libjemalloc.so.2"
    (tmp_path / "b" / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert allocator.find("auto", folders) == tmp_path / "b" / "libtcmalloc_minimal.so.4"
    assert allocator.find("jemalloc", folders) == tmp_path / "b" / "libjemalloc.so.2"
    assert allocator.find("system", folders) is None
    assert allocator.find(str(tmp_path / "b" / "libjemalloc.so.2")) == tmp_path / "b" / "libjemalloc.so.2"
    assert allocator.find(str(tmp_path / "missing.so")) is None


@pytest.fixture
def execs(monkeypatch):
    """Catch os.execve instead of replacing the test process; pretend to be Linux with a library found."""
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator, "active", lambda: "system")
    library = "/lib/libtcmalloc_minimal.so.4"
    monkeypatch.setattr(allocator, "find", lambda choice: None if choice == "system" else library)
    for name in (allocator.ENV, allocator._REEXECUTED, "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_cxr_reexecutes_itself_once_with_the_library_preloaded(execs, monkeypatch):
    allocator.reexec_with_allocator(["train", "--data", "x"])
    (path, argv, env), = execs
    assert path == sys.executable and argv == [sys.executable, "-m", "cxr", "train", "--data", "x"]
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4" and env[allocator._REEXECUTED] == "1"
    monkeypatch.setenv(allocator._REEXECUTED, "1")  # the re-executed process does not do it again
    allocator.reexec_with_allocator(["train"])
    assert len(execs) == 1


def test_system_or_a_loaded_allocator_means_no_reexecution(execs, monkeypatch):
    monkeypatch.setenv(allocator.ENV, "system")
    allocator.reexec_with_allocator(["train"])
    monkeypatch.delenv(allocator.ENV)
    monkeypatch.setattr(allocator, "active", lambda: "jemalloc")
    allocator.reexec_with_allocator(["train"])
    assert execs == []


def test_without_a_fast_allocator_the_console_says_how_to_install_one(monkeypatch):
    monkeypatch.setattr(allocator, "active", lambda: "system")
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.delenv(allocator.ENV, raising=False)
    assert allocator.describe().endswith("up to 3x faster with tcmalloc: " + allocator.INSTALL_HINT)
    monkeypatch.setenv(allocator.ENV, "system")
    assert "switched off by CXR_ALLOCATOR=system" in allocator.describe()


@pytest.mark.skipif(allocator.find() is None and not os.environ.get("CI"),
                    reason="no tcmalloc or jemalloc here (apt-get install libtcmalloc-minimal4); CI installs it")
def test_a_preloaded_library_shows_in_the_process_map():
    library = allocator.find()
    assert library is not None, "CI's .ci/run installs libtcmalloc-minimal4"
    shown = subprocess.run([sys.executable, "-c", "from cxr.allocator import active; print(active())"],
                           env={**os.environ, "LD_PRELOAD": str(library)}, capture_output=True, text=True, timeout=60)
    assert shown.stdout.strip() == ("tcmalloc" if "tcmalloc" in library.name else "jemalloc")
