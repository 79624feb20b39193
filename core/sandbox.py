"""A sandbox for model-written Python (AutoIF verifiers, HumanEval/MBPP solutions).

A long-lived worker process runs each task in a forked child. Guarantees, as root (CI, most
cluster jobs start the worker as root and it drops privileges itself):
  - a clean environment and no inherited file descriptors (the worker is started with both);
  - no network: a new network namespace (no interfaces up), and `socket` refused in Python;
  - a private mount namespace with a fresh, size-limited tmpfs on /tmp and /dev/shm: the working
    directory lives there, and nothing written there is visible outside;
  - an unprivileged, unique user id: it cannot write outside the sandbox's tmpfs (every other path
    belongs to other users), and process-count limits bind (they do not bind root);
  - per task: address-space, CPU-time, file-size, open-file and process-count limits, stdout/stderr
    to /dev/null, a wall-clock timeout after which the task's whole process group is killed, and
    every process left by the sandbox user is killed after each task.
Not as root, the namespaces and the user switch are unavailable: the limits, the clean environment,
the Python-level socket refusal and the timeout still hold (`Sandbox.isolation` says which).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

WORKER = r"""
import ctypes, importlib, json, os, resource, select, signal, socket, sys, time

# Loaded before the privilege drop: the unprivileged user may be unable to read the interpreter's
# library folder (a Python installed under /root), and model-written code imports these.
PRELOAD = (
    "abc array base64 binascii bisect calendar cmath collections collections.abc contextlib copy "
    "csv dataclasses datetime decimal difflib enum fractions functools hashlib heapq io itertools "
    "math numbers operator pprint queue random re statistics string struct textwrap types typing "
    "unicodedata weakref zlib"
).split()
for name in PRELOAD:
    try:
        importlib.import_module(name)
    except ImportError:
        pass

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 16384, 1 << 18
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
isolation = "partial"
uid = 200000 + os.getpid() % 100000
if os.geteuid() == 0:
    try:
        if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount private")
        opts = ("size=%dm,mode=1777" % cfg["tmpfs_mb"]).encode()
        for target in (b"/tmp", b"/dev/shm"):
            if not os.path.isdir(target):
                continue
            if libc.mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
                raise OSError(ctypes.get_errno(), "mount tmpfs")
        os.makedirs("/tmp/work", exist_ok=True)
        os.chown("/tmp/work", uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        isolation = "full"
    except OSError as e:
        print(json.dumps({"ready": False, "error": str(e)}), flush=True)
        sys.exit(1)
    os.chdir("/tmp/work")
else:
    import tempfile
    os.chdir(tempfile.mkdtemp(prefix="sandbox-"))

def refuse(*a, **k):
    raise PermissionError("network access is disabled in the sandbox")

def run_task(task, w):
    os.setpgid(0, 0)
    soft = cfg["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
    cpu = int(task["timeout"]) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_mb"] << 20, cfg["file_mb"] << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_procs"], cfg["max_procs"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    socket.socket = refuse
    socket.create_connection = refuse
    outs = [run_one(item) for item in task["items"]]
    blob = json.dumps({"batch": outs}).encode()[: cfg["max_result_bytes"]]
    os.write(w, blob)
    os._exit(0)

def describe(e):
    return "%s: %s" % (type(e).__name__, str(e)[:200])

def run_one(item):
    ns = {"__name__": "__sandbox__"}
    out = {"results": []}
    try:
        exec(compile(item["code"], "<sandbox>", "exec"), ns)
        fn = ns.get(item["func"]) if item.get("func") else None
        if item.get("func") and not callable(fn):
            raise NameError("no function named %r" % item["func"])
        for args in item.get("inputs") or []:
            try:
                value = fn(*args)
                json.dumps(value)
                out["results"].append({"ok": True, "value": value})
            except BaseException as e:
                out["results"].append({"ok": False, "error": describe(e)})
        out["ok"] = True
    except BaseException as e:
        out.update(ok=False, error=describe(e))
    return out

PR_SET_CHILD_SUBREAPER = 36
libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to us to be reaped

def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

def leftovers():
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    found.append(int(name))
            except OSError:
                pass
    return found

print(json.dumps({"ready": True, "isolation": isolation}), flush=True)
for line in sys.stdin:
    task = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        run_task(task, w)
    os.close(w)
    chunks, deadline_hit = [], False
    end = time.monotonic() + float(task["timeout"])
    while True:
        left = end - time.monotonic()
        if left <= 0:
            deadline_hit = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    reap()
    for _ in range(100):  # anything the task left behind (this uid only), until nothing is left
        left = leftovers() if isolation == "full" else []
        if not left:
            break
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.001)
        reap()
    if deadline_hit:
        res = {"error": "timeout after %ss" % task["timeout"]}
    else:
        try:
            died = {"error": "the task died (memory or CPU limit)"}
            res = json.loads(b"".join(chunks) or b"null") or died
        except ValueError:
            res = {"error": "result too large or cut short"}
    print(json.dumps(res), flush=True)
"""


@dataclass
class TaskResult:
    ok: bool
    results: list[dict] = field(default_factory=list)
    error: str | None = None


class Sandbox:
    """`run(code, func, inputs)` executes `code`, then `func(*args)` for each args in `inputs`."""

    def __init__(
        self,
        timeout: float = 5.0,
        memory_mb: int = 1024,
        file_mb: int = 16,
        tmpfs_mb: int = 64,
        max_procs: int = 16,
        max_result_bytes: int = 1 << 20,
    ):
        self.timeout = timeout
        self.cfg = {
            "memory_mb": memory_mb,
            "file_mb": file_mb,
            "tmpfs_mb": tmpfs_mb,
            "max_procs": max_procs,
            "max_result_bytes": max_result_bytes,
        }
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.isolation = "none"

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WORKER, json.dumps(self.cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            close_fds=True,
            start_new_session=True,
            text=True,
        )
        hello = json.loads(self._proc.stdout.readline() or '{"ready": false}')
        if not hello.get("ready"):
            raise RuntimeError(f"sandbox worker failed to start: {hello.get('error')}")
        self.isolation = hello["isolation"]

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
        """Many programs in one forked process (each in a fresh namespace): the fast path for
        cross-validating thousands of (function, case) pairs. If the batch as a whole fails (a
        timeout, a crash), each program is rerun alone, so one bad function cannot sink the
        others and its own failure is recorded."""
        if not items:
            return []
        limit = timeout or self.timeout
        res = self._send(
            {
                "items": [{"code": c, "func": f, "inputs": i} for c, f, i in items],
                "timeout": limit if len(items) == 1 else 4 * limit,
            }
        )
        if len(res.get("batch") or []) == len(items):
            return [
                TaskResult(o.get("ok", False), o.get("results", []), o.get("error"))
                for o in res["batch"]
            ]
        if len(items) == 1:
            return [TaskResult(False, [], res.get("error") or "the task failed")]
        return [r for item in items for r in self.run_batch([item], timeout)]

    def _send(self, task: dict) -> dict:
        with self._lock:
            for _ in range(2):
                if self._proc is None or self._proc.poll() is not None:
                    self._start()
                try:
                    self._proc.stdin.write(json.dumps(task) + "\n")
                    self._proc.stdin.flush()
                    line = self._proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                if line:
                    return json.loads(line)
                self.close()  # the worker itself died: restart once
            return {"error": "sandbox worker died"}

    def close(self) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
