"""Several sandboxes side by side (`SandboxPool`), and how many the machine holds
(`default_workers`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from sandbox import cgroups
from sandbox.isolation import WORKER_MB, Sandbox, TaskResult

# Workers a pool starts when not told: at most this many, however many cores there are.
MAX_WORKERS = 16


def default_workers(memory_mb: int) -> int:
    """Workers for a pool: one per CPU this process may use (its affinity and its cgroup's CPU
    quota), at most MAX_WORKERS, and no more than the memory there is (available on the host
    and left in its cgroup) holds with every worker's programs at their cap."""
    try:
        cores: float = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota, headroom = cgroups.cgroup_limits()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))  # whole CPUs: no worker waits on the quota
    free = cgroups.available_bytes()
    if headroom is not None:
        free = min(free, headroom)
    fit = free // ((int(memory_mb) + WORKER_MB) << 20)
    return int(max(1, min(cores, MAX_WORKERS, fit)))


class SandboxPool:
    """Several sandboxes side by side, for throughput on many cores: `run_batch` hands a batch
    out in shares of `share_size` programs (0: about a quarter of each worker's part) to
    `workers` workers (0: `default_workers`), each its own `Sandbox` (worker process,
    namespaces, sandbox uid and memory cgroup), and returns the results in the batch's order.
    Every program still runs in its own forked process. Programs of different workers run at
    the same time, so where the isolation level leaves them the caller's uid without
    namespaces (`process`), one could signal or write to another: there the pool runs one
    worker."""

    def __init__(self, workers: int = 0, share_size: int = 0, **sandbox_kwargs: Any):
        if int(workers) < 0 or int(share_size) < 0:
            raise ValueError("workers and share_size must be >= 0 (0: chosen for you)")
        memory_mb = int(sandbox_kwargs.get("memory_mb", 1024))
        self.workers = int(workers) if int(workers) > 0 else default_workers(memory_mb)
        self.share_size = int(share_size)
        self.boxes = [Sandbox(**sandbox_kwargs) for _ in range(self.workers)]

    @property
    def isolation(self) -> str:
        """The level the workers ran at ("none" before any ran)."""
        return _levels(box.isolation for box in self._started()) or "none"

    @property
    def memory_limit(self) -> str:
        return _levels(box.memory_limit for box in self._started()) or "per process"

    @property
    def restarts(self) -> int:
        return sum(box.restarts for box in self.boxes)

    def _started(self) -> list[Sandbox]:
        return [box for box in self.boxes if box.isolation != "none"]

    def run_batch(
        self,
        items: list[tuple[str, str | None, list[list[Any]]]],
        timeout: float | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> list[TaskResult]:
        """The results of `items` in their order; `progress(n)` is called as each share of n
        programs is done. If the caller is interrupted (Ctrl-C, SIGTERM) while the workers run,
        they are killed, no further share starts, and the exception goes on."""
        if not items:
            return []
        self.boxes[0].start()  # its isolation level decides how many workers may run at once
        busy = 1 if self.boxes[0].isolation == "process" else min(len(self.boxes), len(items))
        size = self.share_size or max(1, -(-len(items) // (4 * busy)))
        busy = min(busy, -(-len(items) // size))  # no worker without a share
        starts = iter(range(0, len(items), size))
        shares: dict[int, list[TaskResult]] = {}
        raised: list[BaseException] = []
        stop = threading.Event()
        take = threading.Lock()

        def serve(box: Sandbox) -> None:
            # Shares taken in turn: a worker that drew slow programs takes fewer.
            while not stop.is_set():
                with take:
                    start = next(starts, None)
                if start is None:
                    return
                try:
                    shares[start] = box.run_batch(items[start : start + size], timeout)
                    if progress:
                        progress(len(shares[start]))
                except BaseException as e:  # a worker that cannot start: the caller hears of it
                    raised.append(e)
                    stop.set()
                    return

        threads = [
            threading.Thread(target=serve, args=(box,), daemon=True) for box in self.boxes[:busy]
        ]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException:  # interrupted: stop the workers, then let the exception go on
            stop.set()
            for box in self.boxes[:busy]:
                box.abort()
            for t in threads:
                if t.is_alive():
                    t.join()
            for box in self.boxes[:busy]:
                box.close()  # cleaned up, and usable again: no "stopped" result later
            raise
        if raised:
            raise raised[0]
        out = [r for start in sorted(shares) for r in shares[start]]
        if len(out) != len(items):
            raise RuntimeError(f"the sandbox pool returned {len(out)} results for {len(items)}")
        return out

    def close(self) -> None:
        for box in self.boxes:
            box.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _levels(values: Any) -> str:
    return ",".join(sorted(set(values)))
