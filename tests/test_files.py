import os
import stat

import pandas as pd
import pytest

from cxr import files


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    files.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-way")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


def test_atomic_temporary_keeps_the_suffix_libraries_choose_formats_by(tmp_path):
    with files.atomic_path(tmp_path / "model.keras") as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "model.keras").read_bytes() == b"x"


def test_csv_is_written_without_index(tmp_path):
    files.write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1, 2]}))
    assert (tmp_path / "t.csv").read_text() == "a\n1\n2\n"


def test_written_files_get_the_usual_permissions_not_the_temporary_files_private_ones(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = files.write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # e.g. rw-r--r--, as `open` would give


def test_a_new_file_never_replaces_one_that_appeared_while_it_was_written(tmp_path, monkeypatch):
    target = tmp_path / "predictions.csv"
    with pytest.raises(FileExistsError, match="appeared while this was written"):
        with files.atomic_path(target, new=True) as tmp:
            tmp.write_text("ours")
            target.write_text("someone else's")  # made between the caller's check and the rename
    assert target.read_text() == "someone else's" and list(tmp_path.iterdir()) == [target]
    with files.atomic_path(tmp_path / "fresh.csv", new=True) as tmp:
        tmp.write_text("ours")
    assert (tmp_path / "fresh.csv").read_text() == "ours" and len(list(tmp_path.iterdir())) == 2

    def no_links(*args):  # a file system without hard links
        raise PermissionError("operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(FileExistsError, match="already exists"):
        with files.atomic_path(target, new=True) as tmp:
            tmp.write_text("ours")
    with files.atomic_path(tmp_path / "third.csv", new=True) as tmp:
        tmp.write_text("ours")
    assert target.read_text() == "someone else's" and (tmp_path / "third.csv").read_text() == "ours"
