"""Thread counts from a CPU quota: cgroup v2 and v1 trees written by the tests, as a container sees them."""

from __future__ import annotations

import pytest

from cxr import threads

V2 = "0::/\n"
V1 = "4:memory:/x\n2:cpuacct:/\n1:cpu:/job\n0::/\n"


def v2_tree(tmp_path, text: str, path: str = ""):
    folder = tmp_path / path
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(text + "\n")
    return tmp_path


def v1_tree(tmp_path, quota: int, period: int = 100_000, path: str = "job"):
    folder = tmp_path / "cpu" / path
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


@pytest.mark.parametrize(("text", "cpus"), [("200000 100000", 2.0), ("150000 100000", 1.5), ("max 100000", None)])
def test_a_v2_quota_is_read_in_cpus(tmp_path, text, cpus):
    assert threads.quota_cpus(v2_tree(tmp_path, text), V2) == cpus


def test_a_v2_quota_of_a_nested_cgroup_is_read_from_its_own_folder(tmp_path):
    root = v2_tree(tmp_path, "300000 100000", "system.slice/job.scope")
    assert threads.quota_cpus(root, "0::/system.slice/job.scope\n") == 3.0


@pytest.mark.parametrize(("quota", "cpus"), [(100_000, 1.0), (250_000, 2.5), (-1, None)])
def test_a_v1_quota_is_read_in_cpus(tmp_path, quota, cpus):
    assert threads.quota_cpus(v1_tree(tmp_path, quota), V1) == cpus


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert threads.quota_cpus(tmp_path, V1) is None and threads.quota_cpus(tmp_path, "") is None


def test_a_quota_below_the_affinity_mask_sets_tensorflows_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 64)
    environ: dict[str, str] = {}
    chosen = threads.configure(environ, v2_tree(tmp_path, "150000 100000"), V2)
    assert chosen == environ == {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "2"}
    one = threads.configure({}, v1_tree(tmp_path / "one", 50_000), V1)  # half a CPU: one thread each
    assert one == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def test_without_a_quota_below_the_mask_or_with_the_users_own_setting_nothing_is_set(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 2)
    root = v2_tree(tmp_path, "400000 100000")  # a quota above the 2 CPUs of the mask
    environ: dict[str, str] = {}
    assert threads.configure(environ, root, V2) == {} and environ == {}
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 64)
    mine = {"TF_NUM_INTRAOP_THREADS": "8"}
    assert threads.configure(mine, root, V2) == {} and mine == {"TF_NUM_INTRAOP_THREADS": "8"}
