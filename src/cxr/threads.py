"""TensorFlow's thread pools sized to the CPUs this process may use, not to the host's.

TensorFlow sizes its intra-op pool (the threads inside one convolution) from the CPUs in the
process's affinity mask. A container limited by a CPU quota (`docker run --cpus=2`, a Kubernetes CPU
limit) still has every CPU of the host in that mask, so on a 64-core host TensorFlow starts 64 compute
threads for 2 CPUs' worth of time: they wait for each other at every operation and the quota
throttles them. `configure` reads the quota (cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`) and, when it
is below the mask, sets TF_NUM_INTRAOP_THREADS and TF_NUM_INTEROP_THREADS before TensorFlow starts
(benchmarks/threads.py measures the difference). Where the two agree (a laptop, a VM, a whole
server) TensorFlow's own choice is kept: it measured fastest there. Variables the user has set are
never touched. JAX's CPU thread pool has no such setting and is left alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["INTER_OP", "INTRA_OP", "affinity_cpus", "configure", "quota_cpus", "record", "usable_cpus"]

INTRA_OP, INTER_OP = "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; all of them where there is no such call)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """This process's cgroup path for v2 and for v1's cpu controller, from /proc/self/cgroup."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def quota_cpus(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 = one and a half CPUs' time), or None without one.

    Args:
        root: where the cgroup file systems are mounted.
        proc_cgroup: the text of /proc/self/cgroup (read when None).
    """
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    v2, v1 = _cgroup_paths(proc_cgroup)
    candidates = []
    if v2 is not None:  # in a container the namespace's root is the container's own cgroup
        candidates += [(root / v2.lstrip("/") / "cpu.max", None), (root / "cpu.max", None)]
    if v1 is not None:
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            base = root / mount
            candidates += [(base / v1.lstrip("/") / "cpu.cfs_quota_us", base / v1.lstrip("/") / "cpu.cfs_period_us"),
                           (base / "cpu.cfs_quota_us", base / "cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        text = _read(quota_file)
        if text is None:
            continue
        if period_file is None:  # v2: "max 100000" or "200000 100000"
            quota, _, period = text.partition(" ")
        else:
            quota, period = text, _read(period_file) or ""
        try:
            quota_us, period_us = int(quota), int(period)
        except ValueError:  # "max": no limit
            return None
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> int:
    """The CPUs' worth of time this process may use: its affinity mask, capped by a cgroup quota."""
    quota = quota_cpus(root, proc_cgroup)
    mask = affinity_cpus()
    return mask if quota is None else max(1, min(mask, math.ceil(quota)))


def configure(environ: MutableMapping[str, str] | None = None, root: Path = CGROUP_ROOT,
              proc_cgroup: str | None = None) -> dict[str, str]:
    """Set TensorFlow's thread counts when a CPU quota is below the affinity mask; before TensorFlow starts.

    Args:
        environ: the environment to set them in (default os.environ).
        root: where the cgroup file systems are mounted.
        proc_cgroup: the text of /proc/self/cgroup (read when None).

    Returns:
        The variables it set (empty when it set none).
    """
    environ = os.environ if environ is None else environ
    if INTRA_OP in environ or INTER_OP in environ:
        return {}
    usable = usable_cpus(root, proc_cgroup)
    if usable >= affinity_cpus():
        return {}
    chosen = {INTRA_OP: str(usable), INTER_OP: str(min(2, usable))}
    environ.update(chosen)
    return chosen


def record() -> dict[str, object]:
    """What a run or a benchmark records: the CPUs of the mask, the quota, and TensorFlow's thread settings
    (None: TensorFlow's own choice).
    """
    return {"affinity_cpus": affinity_cpus(), "quota_cpus": quota_cpus(),
            "tf_intra_op": os.environ.get(INTRA_OP), "tf_inter_op": os.environ.get(INTER_OP)}
