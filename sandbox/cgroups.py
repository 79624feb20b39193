"""Cgroup files: the CPU and memory limits the caller's cgroup and its parents set (how many
workers a pool may start), and a memory cgroup per worker (one cap for all of a program's
processes together), where the caller may make one.

Written in place on purpose: cgroup control files are kernel interfaces, not outputs.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

CGROUP_ROOT = "/sys/fs/cgroup"
_CGROUP_IDS = itertools.count()  # workers start at once from several threads: unique names


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo; unbounded where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


def cgroup_limits(
    root: str = CGROUP_ROOT, self_cgroup: str = "/proc/self/cgroup"
) -> tuple[float | None, int | None]:
    """(CPUs, bytes of memory left) that the caller's cgroup and its parents allow (a container's
    or a SLURM job's limits); None for what none of them limits or what cannot be read."""
    try:
        with open(self_cgroup) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None, None
    cpus: list[float] = []
    left: list[int] = []
    for hier, controllers, path in lines:
        names = controllers.split(",") if controllers else []
        if hier == "0" and not controllers:  # v2: every controller in one tree
            for d in _up(os.path.join(root, path.lstrip("/")), root):
                q = _read(d, "cpu.max").split()
                if len(q) == 2 and q[0].isdigit() and q[1].isdigit() and int(q[1]) > 0:
                    cpus.append(int(q[0]) / int(q[1]))
                limit = _read(d, "memory.max")
                used = _used(d, "memory.current", "inactive_file")
                if limit.isdigit() and used is not None:
                    left.append(int(limit) - used)
        elif "cpu" in names:  # v1
            base = _v1_base(root, controllers, ["cpu"])
            for d in _up(os.path.join(base, path.lstrip("/")), base):
                q, period = _read(d, "cpu.cfs_quota_us"), _read(d, "cpu.cfs_period_us")
                if q.isdigit() and period.isdigit() and int(period) > 0:
                    cpus.append(int(q) / int(period))
        elif "memory" in names:
            base = _v1_base(root, controllers, ["memory"])
            for d in _up(os.path.join(base, path.lstrip("/")), base):
                limit = _read(d, "memory.limit_in_bytes")
                used = _used(d, "memory.usage_in_bytes", "total_inactive_file")
                if limit.isdigit() and used is not None and int(limit) < 1 << 60:
                    left.append(int(limit) - used)
    return (min(cpus) if cpus else None), (max(0, min(left)) if left else None)


def _up(path: str, top: str) -> list[str]:
    """`path` and its parents up to `top`, both included (nothing if `path` is not under it)."""
    out, path, top = [], os.path.normpath(path), os.path.normpath(top)
    while os.path.commonpath([path, top]) == top:
        out.append(path)
        if path == top:
            break
        path = os.path.dirname(path)
    return out


def _v1_base(root: str, controllers: str, names: list[str]) -> str:
    """The v1 hierarchy's folder: `cpu,cpuacct` as listed, else one named after a controller
    (`cpu`, `memory`: the usual links)."""
    for candidate in (controllers, *names):
        if os.path.isdir(os.path.join(root, candidate)):
            return os.path.join(root, candidate)
    return os.path.join(root, controllers)


def _used(folder: str, current: str, stat_key: str) -> int | None:
    """Memory in use, less the inactive page cache the kernel reclaims first (as kubelet counts
    it); None where it cannot be read."""
    used = _read(folder, current)
    if not used.isdigit():
        return None
    for line in _read(folder, "memory.stat").splitlines():
        key, _, value = line.partition(" ")
        if key == stat_key and value.isdigit():
            return max(0, int(used) - int(value))
    return int(used)


def _read(folder: str, name: str) -> str:
    try:
        with open(os.path.join(folder, name)) as f:
            return f.read().strip()
    except OSError:
        return ""


def memory_cgroup(limit: int) -> str | None:
    """A new memory cgroup under the caller's own, capped at `limit` bytes; None where the
    caller may not make one (not root, no memory controller, not delegated)."""
    if os.geteuid() != 0:
        return None
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    name = f"evolvers-sandbox-{os.getpid()}-{next(_CGROUP_IDS)}-{time.monotonic_ns()}"
    for _, controllers, path in lines:  # cgroup v1: the memory hierarchy
        if "memory" in controllers.split(","):
            where = os.path.join(CGROUP_ROOT, "memory", path.lstrip("/"), name)
            if _make_cgroup(where, {"memory.limit_in_bytes": limit}):
                return where
    for hier, controllers, path in lines:  # cgroup v2, where memory is delegated to us
        if hier == "0" and not controllers:
            for base in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
                where = os.path.join(base, path.lstrip("/"), name)
                if _make_cgroup(where, {"memory.max": limit, "memory.swap.max": 0}):
                    return where
    return None


def _make_cgroup(where: str, limits: dict[str, int]) -> bool:
    try:
        os.mkdir(where)
    except OSError:
        return False
    try:
        first, *rest = limits.items()
        with open(os.path.join(where, first[0]), "w") as f:
            f.write(str(first[1]))
        for key, value in rest:  # optional (swap accounting may be off)
            try:
                with open(os.path.join(where, key), "w") as f:
                    f.write(str(value))
            except OSError:
                pass
        return True
    except OSError:
        remove_cgroup(where)
        return False


def remove_cgroup(where: str) -> None:
    """Kill what is left in the cgroup, then remove it."""
    for _ in range(50):
        try:
            with open(os.path.join(where, "cgroup.procs")) as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            pids = []
        for pid in pids:
            _kill(pid)
        try:
            os.rmdir(where)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
