"""The sandbox service: one owner-closed holder of the worker pools that everything running
model-written code goes through (AutoIF's verifiers, the code benchmarks), with results cached
when it is given a cache.

    service = SandboxService(cache=step_cache)     # the run's; None: nothing is cached
    try:
        results = service.run_batch(items, SandboxSettings(timeout=5, workers=0), desc="...")
        one = service.run(program, settings=SandboxSettings(timeout=10, workers=1))
    finally:
        service.close()                             # its owner closes it, once

Pools are started on first use, one per distinct `SandboxSettings`, and reused by every later
call with the same settings until `close()`. `Usage` records what ran (the isolation levels and
memory limits of the workers that ran programs; a cache hit runs nothing): pass one per call to
learn what that call ran, and `service.usage` holds everything.

The cache is duck-typed (this package imports nothing of the project): an object with
`run(step, key_payload, ids, compute, chunk_size, desc=...) -> {id: result}`, as
`core.cache.StepCache` has. Results are cached under step `sandbox`, keyed by the settings that
change a result (`SandboxSettings.cache_key`) and each program's hash (`program_key`), so a
resumed run replays the same verdicts, a timeout included.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sandbox.isolation import TaskResult
from sandbox.pool import SandboxPool

Item = tuple[str, str | None, list[list[Any]]]  # (code, function name or None, inputs)
CACHE_STEP = "sandbox"
CHUNK_SIZE = 4096  # programs per cache chunk (resumed at chunk granularity)


@dataclass(frozen=True)
class SandboxSettings:
    """How programs run: `timeout` per test case (and per program's top level), `memory_mb`
    per program, `share_process` (a batch's programs in one process: faster, but they can touch
    each other's results); and how they are spread: `workers` side by side (0: one per CPU the
    process may use, as `default_workers`), `batch_size` programs per request to a worker (0:
    about a quarter of each worker's part)."""

    timeout: float = 5.0
    memory_mb: int = 1024
    share_process: bool = False
    workers: int = 0
    batch_size: int = 0

    def __post_init__(self) -> None:
        for name, kind in (("timeout", float), ("memory_mb", int), ("workers", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "share_process", bool(self.share_process))
        if self.timeout <= 0 or self.memory_mb <= 0:
            raise ValueError("sandbox timeout and memory_mb must be > 0")
        if self.workers < 0 or self.batch_size < 0:
            raise ValueError("sandbox workers and batch_size must be >= 0 (0: chosen for you)")

    @classmethod
    def of(cls, cfg: Any, **overrides: Any) -> SandboxSettings:
        """From a config section with some of these fields (AutoIF's `scenario.sandbox`); what
        it lacks keeps its default."""
        names = ("timeout", "memory_mb", "share_process", "workers", "batch_size")
        values = {n: getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None}
        return cls(**{**values, **overrides})

    def cache_key(self) -> dict[str, Any]:
        """What a cached result depends on: the limits, not how many workers ran it."""
        key: dict[str, Any] = {"timeout": self.timeout, "memory_mb": self.memory_mb}
        if self.share_process:
            key["share_process"] = True
        return key


def program_key(item: Item) -> str:
    """A program's cache id: the hash of (code, func, inputs), as core.cache.stable_hash makes
    it (sorted keys, UTF-8, `str` for the rest), 24 hex digits."""
    blob = json.dumps(list(item), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


@dataclass
class Usage:
    """What ran: the isolation levels and memory limits of the workers that ran programs, how
    many programs ran and how many came from the cache."""

    levels: set[str] = field(default_factory=set)
    memory_limits: set[str] = field(default_factory=set)
    ran: int = 0
    cached: int = 0

    @property
    def isolation(self) -> str | None:
        """ "full", "userns", "uid" or "process" (several joined by commas); None when no
        program ran."""
        return ",".join(sorted(self.levels)) or None

    @property
    def memory_limit(self) -> str | None:
        """ "cgroup" or "per process" (both joined by a comma); None when no program ran."""
        return ",".join(sorted(self.memory_limits)) or None

    def counts(self) -> dict[str, str]:
        """`sandbox_isolation` and `sandbox_memory_limit` (AutoIF's metrics.json), or nothing
        when no program ran."""
        if not self.levels:
            return {}
        return {"sandbox_isolation": self.isolation, "sandbox_memory_limit": self.memory_limit}

    def add(self, levels: Iterable[str], memory_limits: Iterable[str], ran: int) -> None:
        self.levels.update(x for x in levels if x and x != "none")
        self.memory_limits.update(x for x in memory_limits if x)
        self.ran += ran


class SandboxService:
    """The pools of sandbox workers a run uses, cached when given a `cache`, closed by their
    owner (`close()`, or a `with` block). `sandbox_options` go to every `Sandbox` (`levels`,
    `wrapper`, `grace_s`, `file_mb`, ...: tests use them)."""

    def __init__(self, cache: Any = None, **sandbox_options: Any):
        self.cache = cache
        self.options = sandbox_options
        self.usage = Usage()
        self._pools: dict[SandboxSettings, SandboxPool] = {}
        self._lock = threading.Lock()
        self.closed = False

    def pool(self, settings: SandboxSettings) -> SandboxPool:
        """The pool for `settings`: made on first use, then reused until `close()`."""
        with self._lock:
            if self.closed:
                raise RuntimeError("the sandbox service is closed")
            pool = self._pools.get(settings)
            if pool is None:
                pool = SandboxPool(
                    workers=settings.workers,
                    share_size=settings.batch_size,
                    timeout=settings.timeout,
                    memory_mb=settings.memory_mb,
                    share_process=settings.share_process,
                    **self.options,
                )
                self._pools[settings] = pool
            return pool

    def run_batch(
        self,
        items: list[Item],
        settings: SandboxSettings | None = None,
        desc: str = "sandbox",
        usage: Usage | None = None,
    ) -> list[TaskResult]:
        """The results of `items`, in their order, each program in its own forked process (or,
        with `share_process`, a batch's in one). With a cache, results are read from it where
        present and saved as they are computed; the same program twice in `items` runs once."""
        settings = settings or SandboxSettings()
        if not items:
            return []
        keys = [program_key(item) for item in items]
        unique = dict(zip(keys, items))
        ran = Usage()

        def compute(ids: list[str]) -> list[dict]:
            res = self._execute([unique[i] for i in ids], settings, desc, ran)
            return [{"ok": r.ok, "results": r.results, "error": r.error} for r in res]

        if self.cache is None:
            rows = dict(zip(unique, compute(list(unique))))
        else:
            rows = self.cache.run(
                CACHE_STEP, settings.cache_key(), list(unique), compute, CHUNK_SIZE, desc=desc
            )
        ran.cached = len(unique) - ran.ran
        for target in (usage, self.usage):
            if target is not None:
                with self._lock:
                    target.add(ran.levels, ran.memory_limits, ran.ran)
                    target.cached += ran.cached
        return [TaskResult(rows[k]["ok"], rows[k]["results"], rows[k]["error"]) for k in keys]

    def run(
        self,
        code: str,
        func: str | None = None,
        inputs: list[list[Any]] | None = None,
        settings: SandboxSettings | None = None,
        usage: Usage | None = None,
    ) -> TaskResult:
        """One program (the code benchmarks score one per document), never cached: a cache
        entry per program would be a cache folder per program; batch them through `run_batch`
        to cache them."""
        settings = settings or SandboxSettings(workers=1)
        ran = Usage()
        result = self._execute([(code, func, inputs or [])], settings, None, ran)[0]
        for target in (usage, self.usage):
            if target is not None:
                with self._lock:
                    target.add(ran.levels, ran.memory_limits, ran.ran)
        return result

    def _execute(
        self, items: list[Item], settings: SandboxSettings, desc: str | None, usage: Usage
    ) -> list[TaskResult]:
        pool = self.pool(settings)
        bar = _progress_bar(len(items), desc) if desc else None
        lock = threading.Lock()

        def done(n: int) -> None:
            if bar is not None:
                with lock:  # shares end in the workers' threads
                    bar.update(n)

        try:
            out = pool.run_batch(items, progress=done)
        finally:
            if bar is not None:
                bar.close()
        usage.add(pool.isolation.split(","), pool.memory_limit.split(","), len(items))
        return out

    @property
    def isolation(self) -> str | None:
        """The levels that every program run through this service so far ran at (None: none
        ran)."""
        return self.usage.isolation

    @property
    def memory_limit(self) -> str | None:
        return self.usage.memory_limit

    @property
    def restarts(self) -> int:
        """Workers killed for not answering in time."""
        return sum(pool.restarts for pool in list(self._pools.values()))

    def close(self) -> None:
        """Stop every worker (after the request in flight). The service cannot be used again."""
        with self._lock:
            pools, self._pools, self.closed = list(self._pools.values()), {}, True
        for pool in pools:
            pool.close()

    def __enter__(self) -> SandboxService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar where tqdm is installed (it is optional here), else None."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False)
