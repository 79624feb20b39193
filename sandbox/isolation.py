"""One sandbox: the caller's side of one worker process (`sandbox/worker.py`).

`Sandbox.run` / `run_batch` send programs to the worker over its stdin and read one answer line
from its stdout, under a deadline the caller enforces itself: a worker that does not answer in
time (a program froze or killed it) is killed with everything it started, the request is a
timeout, and the next request starts a new worker.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import cgroups

# The isolation levels, strongest first (what each gives: the package's docstring).
LEVELS = ("full", "userns", "uid", "process")
# The caller's grace beyond the programs' own time budgets before it declares the worker stuck.
GRACE_S = 10.0
# The worker's own memory (interpreter, preloaded modules) on top of a program's in the cgroup.
WORKER_MB = 96
WORKER_FILE = Path(__file__).with_name("worker.py")


def worker_source() -> str:
    """The worker program's source, as it is passed to `python -I -S -c`: on the command line,
    so a worker started as another user (`wrapper`) needs no access to this folder."""
    return WORKER_FILE.read_text(encoding="utf-8")


@dataclass
class TaskResult:
    ok: bool
    results: list[dict] = field(default_factory=list)
    error: str | None = None


class Sandbox:
    """`run(code, func, inputs)` executes `code`, then `func(*args)` for each args in `inputs`.

    `timeout` is per test case (and for the program's own top level). `levels` are the isolation
    levels to try, strongest first; `wrapper` is a command the worker is started under (tests
    start it without CAP_SYS_ADMIN or as another user with `setpriv`)."""

    LEVELS = LEVELS

    def __init__(
        self,
        timeout: float = 5.0,
        memory_mb: int = 1024,
        file_mb: int = 16,
        tmpfs_mb: int = 64,
        max_procs: int = 8,
        max_result_bytes: int = 1 << 20,
        levels: tuple[str, ...] | None = None,
        wrapper: list[str] | None = None,
        grace_s: float = GRACE_S,
        share_process: bool = False,
    ):
        self.timeout = timeout
        self.grace_s = grace_s
        self.levels = tuple(levels or self.LEVELS)
        unknown = [lv for lv in self.levels if lv not in self.LEVELS]
        if unknown:
            raise ValueError(
                f"unknown sandbox level {unknown[0]!r}; valid: {', '.join(self.LEVELS)}"
            )
        self.wrapper = list(wrapper or [])
        self.cfg = {
            "memory_mb": memory_mb,
            "file_mb": file_mb,
            "tmpfs_mb": tmpfs_mb,
            "max_procs": max_procs,
            "max_result_bytes": max_result_bytes,
            "case_timeout": timeout,
            "levels": list(self.levels),
            # False: one process per program (a program cannot touch another's result). True:
            # a batch's programs share one process (fork once; for trusted throughput).
            "share_process": share_process,
        }
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._buf = b""
        self.isolation = "none"
        self.init_pid: int | None = None
        self.uid: int | None = None
        self.workdir: str | None = None
        self.restarts = 0  # workers killed for not answering in time
        self.memory_limit = "per process"  # or "cgroup": all of a program's processes together
        self._cgroup: str | None = None
        self._aborted = False  # set by abort(): no request runs and no worker starts until close()

    # -- the worker's life ------------------------------------------------------------------

    def _start(self) -> None:
        if self.workdir:  # the last worker's folder (uid and process levels)
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self._buf, self.init_pid = b"", None
        cmd = [*self.wrapper, sys.executable, "-I", "-S", "-c", worker_source()]
        cmd.append(json.dumps(self.cfg))
        self._cgroup = cgroups.memory_cgroup((int(self.cfg["memory_mb"]) + WORKER_MB) << 20)
        if self._cgroup:  # joined before anything runs: every process the worker starts is in
            join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
            cmd = ["/bin/sh", "-c", join, self._cgroup, *cmd]
        self.memory_limit = "cgroup" if self._cgroup else "per process"
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            close_fds=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            line = self._readline(deadline, 1 << 16)
            hello = json.loads(line) if line else {"ready": False, "error": "no answer"}
            if "init_pid" in hello:
                self.init_pid = int(hello["init_pid"])
                continue
            break
        if not hello.get("ready"):
            self._kill()
            raise RuntimeError(f"sandbox worker failed to start: {hello.get('error')}")
        self.isolation = hello["isolation"]
        self.uid = hello.get("uid")
        if hello.get("workdir") and self.isolation not in ("full", "userns"):
            self.workdir = hello["workdir"]  # outside any tmpfs: removed on close

    def start(self) -> None:
        """Start the worker now (it starts on the first request otherwise), so `isolation`
        says what the programs will get."""
        with self._lock:
            if not self._aborted and (self._proc is None or self._proc.poll() is not None):
                self._start()

    def abort(self) -> None:
        """From another thread: kill the worker now. The request in flight ends with an error,
        and no request runs and no worker starts again until `close()`."""
        self._aborted = True
        proc, init = self._proc, self.init_pid  # copies: the serving thread may clear them
        if init:
            _signal(lambda: os.kill(init, signal.SIGKILL))
        if proc is not None:
            _signal(lambda: os.killpg(proc.pid, signal.SIGKILL))

    def _readline(self, deadline: float, limit: int) -> bytes | None:
        """One line from the worker, waiting no later than `deadline` and reading no more than
        `limit` bytes; None when it does not come."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or len(self._buf) > limit:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                return None
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line if len(line) <= limit else None

    def _kill(self) -> None:
        """The worker and everything it started: the PID namespace (its PID 1 takes every
        process inside with it), the worker's session, and the sandbox uid's processes."""
        proc, self._proc = self._proc, None
        if self.init_pid:
            _signal(lambda: os.kill(self.init_pid, signal.SIGKILL))
        if proc is not None:
            _signal(lambda: os.killpg(proc.pid, signal.SIGKILL))
            _signal(lambda: os.kill(proc.pid, signal.SIGKILL))
            proc.wait()
        if self.uid is not None and os.geteuid() == 0:
            for _ in range(50):
                left = _processes_of(self.uid)
                if not left:
                    break
                for pid in left:
                    _signal(lambda pid=pid: os.kill(pid, signal.SIGKILL))
                time.sleep(0.01)
        self.init_pid = None
        if self._cgroup:
            cgroups.remove_cgroup(self._cgroup)
            self._cgroup = None

    # -- running programs -------------------------------------------------------------------

    def run(
        self,
        code: str,
        func: str | None = None,
        inputs: list[list[Any]] | None = None,
        timeout: float | None = None,
    ) -> TaskResult:
        """One program in its own forked process."""
        return self.run_batch([(code, func, inputs or [])], timeout)[0]

    def run_batch(
        self, items: list[tuple[str, str | None, list[list[Any]]]], timeout: float | None = None
    ) -> list[TaskResult]:
        """Many programs in one request to the worker, each in its own forked process (or, with
        `share_process`, in one process for the batch; a batch that fails as a whole is rerun
        one program at a time)."""
        if not items:
            return []
        if timeout is not None and timeout != self.timeout:
            with self._lock:  # a worker with the new per-case timeout
                self._kill()
                self.timeout = self.cfg["case_timeout"] = timeout
        task = {"items": [{"code": c, "func": f, "inputs": i} for c, f, i in items]}
        res = self._send(task)
        batch = res.get("batch")
        if not isinstance(batch, list) or len(batch) != len(items):
            error = res.get("error") or "the sandbox returned a malformed answer"
            return [TaskResult(False, [], error) for _ in items]
        return [_task_result(o) for o in batch]

    def _budget(self, task: dict) -> float:
        """What the worker may take for `task`: its programs' own budgets and a grace."""
        per_case = float(self.cfg["case_timeout"])
        return self.grace_s + sum(per_case * (1 + len(i["inputs"])) + 1.0 for i in task["items"])

    def _send(self, task: dict) -> dict:
        with self._lock:
            try:
                return self._exchange(task)
            except BaseException:  # interrupted mid-request: its answer must not meet the next
                self._kill()
                raise

    def _exchange(self, task: dict) -> dict:
        limit = len(task["items"]) * (int(self.cfg["max_result_bytes"]) + 4096) + 4096
        stopped = {"error": "the sandbox was stopped"}
        for _ in range(2):
            if self._aborted:
                self._kill()
                return stopped
            if self._proc is None or self._proc.poll() is not None:
                try:
                    self._start()
                except RuntimeError:
                    if self._aborted:  # abort() killed it while it started
                        return stopped
                    raise
                if self._aborted:  # abort() may have looked before the worker was there
                    self._kill()
                    return stopped
            assert self._proc is not None and self._proc.stdin is not None
            deadline = time.monotonic() + self._budget(task)
            try:
                self._proc.stdin.write((json.dumps(task) + "\n").encode())
                self._proc.stdin.flush()
                line = self._readline(deadline, limit)
            except (BrokenPipeError, OSError):
                line = None
            if line is not None:
                try:
                    answer = json.loads(line)
                    if isinstance(answer, dict):
                        return answer
                except ValueError:
                    pass
                self._kill()
                return {"error": "the sandbox returned a malformed answer"}
            timed_out = time.monotonic() >= deadline
            self._kill()  # frozen, killed or flooded: nothing it started survives
            if timed_out:
                self.restarts += 1
                return {"error": f"timeout: no answer within {self._budget(task):.0f}s"}
        return {"error": "sandbox worker died"}

    def close(self) -> None:
        with self._lock:  # after a request in flight (abort() first to end it now)
            self._kill()
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
            self._aborted = False

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _task_result(o: Any) -> TaskResult:
    if not isinstance(o, dict) or not isinstance(o.get("ok"), bool):
        return TaskResult(False, [], "a malformed result")
    rows = o.get("results") or []
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return TaskResult(False, [], "a malformed result")
    error = o.get("error")
    return TaskResult(o["ok"], rows, error if isinstance(error, str) or error is None else None)


def _signal(send: Any) -> None:
    try:
        send()
    except (ProcessLookupError, PermissionError):
        pass


def _processes_of(uid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    out.append(int(name))
            except OSError:
                pass
    return out
