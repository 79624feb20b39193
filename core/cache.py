"""Content-addressed cache with resume, for anything computed per record (generations, scores).

A step's results live in `<cache_dir>/steps/<step>/<key>/`, where `key` hashes everything the
results depend on (model identity, engine, decoding, the exact prompts). While a step runs, each
chunk's results are appended to `partial.jsonl` (whole lines, fsync'd); when it finishes, the file
is renamed to `done.jsonl`. A rerun with the same key reads `done.jsonl` and calls no model; a
killed run resumes from `partial.jsonl`, skipping ids already there.

Jobs that run at once (a sweep under joblib or SLURM) share steps: each step is computed under a
lock on its key (`<key>/.lock`), so a second job that needs the same step waits for the first and
reads its `done.jsonl` instead of computing it again or renaming a fragment over it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.errors import NotCached
from core.records import AppendLog, write_json_atomic
from core.signals import check_interrupt

log = logging.getLogger(__name__)


def _entry(obj: Any) -> bool:
    """A cache line's shape: {"id": str, "result": ...}."""
    return isinstance(obj, dict) and isinstance(obj.get("id"), str) and "result" in obj


@contextlib.contextmanager
def file_lock(path: Path, what: str | None = None) -> Iterator[None]:
    """An advisory lock (flock) between processes, on this machine or any sharing the folder:
    held while a shared result is computed, so the others wait and then reuse it. `what`, when
    given, is logged if the lock is held by another process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if what:
                log.info("%s: another job is computing it; waiting to reuse its result", what)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def stable_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class StepReport:
    step: str
    key: str
    total: int
    cached: int  # results found on disk (done or partial)
    computed: int
    seconds: float

    @property
    def status(self) -> str:
        if self.computed == 0:
            return "cache hit"
        return "resumed" if self.cached else "computed"


@dataclass
class StepCache:
    root: Path
    reports: list[StepReport] = field(default_factory=list)
    # True: results are only read; a step with missing results raises NotCached.
    read_only: bool = False

    def __post_init__(self) -> None:
        self.root = Path(os.path.expanduser(str(self.root))) / "steps"

    def run(
        self,
        step: str,
        key_payload: Any,
        ids: Sequence[str],
        compute: Callable[[list[str]], list[dict]],
        chunk_size: int,
        desc: str | None = None,
        keep: Callable[[dict], bool] | None = None,
    ) -> dict[str, dict]:
        """Results for every id: from the cache where present, else `compute(chunk_of_ids)`.

        `compute` returns one JSON-able dict per id, in order. Results are keyed by id. A result
        that `keep` rejects (a failed request) is returned but not saved: the step still ends,
        and a rerun computes only those ids again.
        """
        if len(set(ids)) != len(ids):
            raise ValueError(f"step {step}: ids are not unique")
        key = stable_hash({"step": step, "payload": key_payload, "ids": list(ids)})[:20]
        folder = self.root / step / key
        t0 = time.perf_counter()
        hit = self._done(folder, ids)
        if hit is not None:
            self._report(step, key, len(ids), len(ids), 0, t0)
            return hit
        with file_lock(folder / ".lock", what=f"{step} ({key})"):
            hit = self._done(folder, ids)  # computed by another job while this one waited
            if hit is not None:
                self._report(step, key, len(ids), len(ids), 0, t0)
                return hit
            return self._compute(step, key, folder, ids, compute, chunk_size, desc, t0, keep)

    @staticmethod
    def _done(folder: Path, ids: Sequence[str]) -> dict[str, dict] | None:
        done_path = folder / "done.jsonl"
        if not done_path.is_file():
            return None
        results = {r["id"]: r["result"] for r in AppendLog(done_path, _entry).records}
        if set(ids) <= set(results):
            return {i: results[i] for i in ids}
        return None

    def _compute(
        self,
        step: str,
        key: str,
        folder: Path,
        ids: Sequence[str],
        compute: Callable[[list[str]], list[dict]],
        chunk_size: int,
        desc: str | None,
        t0: float,
        keep: Callable[[dict], bool] | None = None,
    ) -> dict[str, dict]:
        done_path = folder / "done.jsonl"
        if done_path.is_file() and not (folder / "partial.jsonl").exists():
            # Lines were lost (damaged, quarantined): resume from what is left.
            os.replace(done_path, folder / "partial.jsonl")
        partial = AppendLog(folder / "partial.jsonl", _entry)
        results = {r["id"]: r["result"] for r in partial.records}
        todo = [i for i in ids if i not in results]
        if todo and self.read_only:
            raise NotCached(f"step {step}: {len(todo)} of {len(ids)} results are not in the cache")
        cached = len(ids) - len(todo)
        if cached:
            log.info("%s: resuming, %d of %d already done", step, cached, len(ids))
        if todo:
            write_json_atomic(folder / "info.json", {"step": step, "n": len(ids)})
        with tqdm(total=len(ids), initial=cached, desc=desc or step, unit="item") as bar:
            for start in range(0, len(todo), chunk_size):
                check_interrupt()
                chunk = todo[start : start + chunk_size]
                out = compute(chunk)
                if len(out) != len(chunk):
                    raise RuntimeError(f"step {step}: {len(out)} results for {len(chunk)} ids")
                partial.append(
                    [{"id": i, "result": r} for i, r in zip(chunk, out) if keep is None or keep(r)]
                )
                results.update(zip(chunk, out))
                bar.update(len(chunk))
        partial.path.touch()
        os.replace(partial.path, done_path)
        self._report(step, key, len(ids), cached, len(todo), t0)
        return {i: results[i] for i in ids}

    def _report(self, step: str, key: str, total: int, cached: int, computed: int, t0: float):
        rep = StepReport(step, key, total, cached, computed, time.perf_counter() - t0)
        self.reports.append(rep)
        log.info(
            "%s: %s (%d items: %d from cache, %d computed)",
            step,
            rep.status,
            total,
            cached,
            computed,
        )
