"""GZ_WORKERS: how many processes serve one instance; ``auto`` is the CPU limit of the container.

A Python process does its Python work on one core (the GIL), so ``auto`` starts one worker per
core the process may use: the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded
up, and never more than the cores it may run on (its CPU affinity).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def parse_workers(value: object) -> int:
    """``1``, ``4`` or ``auto`` -> a number of workers, at least 1."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return cpu_limit()
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a number of processes or auto, got {value!r}")
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError("expected a number of processes (1 or more) or auto (one per CPU)")
    return int(text)


def cpu_limit(cgroup: Path = CGROUP) -> int:
    """The cores this process may use: its cgroup quota if it has one, else its affinity."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_quota(cgroup)
    cores = cores or 1
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _cgroup_quota(cgroup: Path) -> float | None:
    """CPUs the cgroup may use per period (``1.5``), None without a limit or a cgroup."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # v1: -1 is none
        period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if int(quota) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None
