"""A sandbox for model-written Python (AutoIF verifiers, HumanEval/MBPP solutions).

A worker process serves the caller over a pipe; each program ("item") runs in its own forked
process, which can reach nothing but its own result pipe. The strongest isolation the machine
allows is used, and `Sandbox.isolation` (recorded in metrics.json) says which:

  full     root with CAP_SYS_ADMIN: new mount, network, PID and IPC namespaces; the filesystem
           read-only except a size-limited tmpfs on /tmp and /dev/shm; a fresh /proc that shows
           only the sandbox's processes; items run as a unique unprivileged uid.
  userns   no CAP_SYS_ADMIN (a Docker/Kubernetes root, or an ordinary user) but user namespaces
           allowed: the same namespaces and read-only filesystem inside a user namespace, and
           items drop every capability (they stay the caller's uid outside, but see no process
           and reach no file of the caller's outside the tmpfs).
  uid      root without namespaces: items run as a unique unprivileged uid (they cannot write
           the caller's files, read its /proc/<pid>/environ or signal it); no network through
           a seccomp filter.
  process  neither: limits, a clean environment, a seccomp filter against network sockets and
           a non-dumpable worker (its /proc/<pid>/fd and environ are closed to items); items can
           still read files of the caller's user. The weakest level; said in metrics.json.

Memory: each process of a program is capped at `memory_mb` of address space; where the caller may
create a memory cgroup (root, cgroup v1 or a delegated v2 memory controller), the worker and
everything it starts also share one cgroup capped at `memory_mb` plus the worker's own room, so
a program's processes together (and its tmpfs files) cannot exceed it either. `memory_limit` says
which held: "cgroup" or "per process".

In every mode: per-program limits (address space, CPU time, file size, open files, processes),
stdout/stderr to /dev/null, a timeout per test case and per program, every process a program
left killed after it, results through the program's own pipe, bounded in size and
shape-checked (a malformed result is that program's failure), and a deadline the caller itself
enforces: if the worker stops answering (a program froze or killed it), the caller kills the
worker and everything it started, records a timeout, and starts a new one.

`SandboxPool` runs several sandboxes side by side (by default one per CPU the process may use,
as its affinity, its cgroup's quota and the memory there is allow; one at the `process` level)
and hands a batch out among them; each program still runs in its own forked process of one
worker.

What no in-process harness can prevent: a program decides its own result (a HumanEval solution
that calls os._exit(0) before the tests ends without an exception). It cannot write another
program's result or the worker's.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The caller's grace beyond the programs' own time budgets before it declares the worker stuck.
GRACE_S = 10.0
# The worker's own memory (interpreter, preloaded modules) on top of a program's in the cgroup.
WORKER_MB = 96
CGROUP_ROOT = "/sys/fs/cgroup"
_CGROUP_IDS = itertools.count()  # workers start at once from several threads: unique names

WORKER = r"""
import ctypes, gc, importlib, json, os, platform, pwd, resource, select, signal, socket, struct
import sys, time

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

NEWNS, NEWNET, NEWPID, NEWIPC, NEWUSER = 0x20000, 0x40000000, 0x20000000, 0x8000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 16384, 1 << 18
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
X86_64 = platform.machine() == "x86_64"

def check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))

def prctl(*args):
    return libc.prctl(*[ctypes.c_ulong(a) for a in args])

def free_uid():
    # Far above the ranges of real users (sssd allocates from 200000 to 2000200000): a uid no
    # account has and no process runs as.
    used = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                used.add(os.stat("/proc/" + p).st_uid)
            except OSError:
                pass
    for k in range(1000):
        uid = 4100000000 + (os.getpid() * 7919 + k) % 100000000
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if uid not in used:
                return uid
    raise OSError(0, "no free uid")

def write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)

def read_only_root():
    # mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, {attr_set=MOUNT_ATTR_RDONLY}): every mount
    # read-only (mounts made after it, the tmpfs below, stay writable).
    if not X86_64:
        raise OSError(0, "read-only remount needs mount_setattr (x86_64 here)")
    attr = struct.pack("QQQQ", 1, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    check(libc.syscall(442, -100, b"/", 0x8000, buf, len(attr)), "mount_setattr read-only")

def namespaces(user):
    if user:
        uid, gid = os.getuid(), os.getgid()
        check(libc.unshare(NEWUSER | NEWNS | NEWNET | NEWPID | NEWIPC), "unshare(user)")
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", "0 %d 1" % uid)
        write("/proc/self/gid_map", "0 %d 1" % gid)
    else:
        check(libc.unshare(NEWNS | NEWNET | NEWPID | NEWIPC), "unshare")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
    read_only_root()
    opts = ("size=%dm,mode=1777" % cfg["tmpfs_mb"]).encode()
    for target in (b"/tmp", b"/dev/shm"):
        if os.path.isdir(target):
            check(libc.mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, opts), "tmpfs")

def mount_proc():
    # In the new PID namespace (PID 1): a /proc of its own processes only; if procfs cannot be
    # mounted here, an empty tmpfs hides the outer one.
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(b"proc", b"/proc", b"proc", flags, None) != 0:
        check(libc.mount(b"tmpfs", b"/proc", b"tmpfs", flags | MS_RDONLY, b"size=1k"), "hide /proc")

# --- choose the isolation level ---------------------------------------------------------------
isolation, errors, uid = None, [], None
for level in cfg["levels"]:
    try:
        if level == "full":
            if os.geteuid() != 0:
                raise OSError(0, "not root")
            uid = free_uid()
            namespaces(user=False)
        elif level == "userns":
            namespaces(user=True)
        elif level == "uid":
            if os.geteuid() != 0:
                raise OSError(0, "not root")
            uid = free_uid()
        isolation = level
        break
    except OSError as e:
        errors.append("%s: %s" % (level, e))
        uid = None
if isolation is None:
    print(json.dumps({"ready": False, "error": "; ".join(errors)}), flush=True)
    sys.exit(1)
in_ns = isolation in ("full", "userns")

if in_ns:
    # The worker stays outside the new PID namespace; its child is that namespace's PID 1 and
    # serves the caller (stdin/stdout are inherited). Killing it kills every process inside.
    go_r, go_w = os.pipe()
    init = os.fork()
    if init:
        print(json.dumps({"hello": "worker", "init_pid": init}), flush=True)
        os.write(go_w, b"1")  # init speaks only after this line
        os.close(0)
        os.close(1)
        os.waitpid(init, 0)
        os._exit(0)
    os.read(go_r, 1)
    os.close(go_r)
    os.close(go_w)
    mount_proc()
    workdir = "/tmp/work"
    os.makedirs(workdir, exist_ok=True)
else:
    import tempfile
    workdir = tempfile.mkdtemp(prefix="sandbox-")
if uid is not None:
    os.chown(workdir, uid, uid)
    os.chmod(workdir, 0o700)
prctl(4, 0)  # PR_SET_DUMPABLE 0: no item can open /proc/<this>/fd or environ, or ptrace it
prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans (daemonised leftovers) come back here
os.chdir(workdir)

# Built once: the capset arguments (every set empty) and the seccomp program, under which
# socket() for anything but AF_UNIX fails with EACCES (x86-64).
CAP_HDR = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
CAP_NONE = ctypes.create_string_buffer(24)
SECCOMP = [
    (0x20, 0, 0, 4), (0x15, 0, 5, 0xC000003E), (0x20, 0, 0, 0), (0x15, 0, 3, 41),
    (0x20, 0, 0, 16), (0x15, 1, 0, 1), (0x06, 0, 0, 0x00050000 | 13), (0x06, 0, 0, 0x7FFF0000),
]
FILTER = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in SECCOMP))
FPROG = ctypes.create_string_buffer(
    struct.pack("HxxxxxxQ", len(SECCOMP), ctypes.addressof(FILTER))
)

def drop_privileges():
    prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    # PR_SET_SECUREBITS NOROOT | NO_SETUID_FIXUP | KEEP_CAPS off, all locked: uid 0 (inside a
    # user namespace) gets no capability from any exec; with no_new_privs below, neither does
    # a setuid or file-capability binary.
    prctl(28, 0x2F)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    libc.capset(CAP_HDR, CAP_NONE)  # no capability left in any set
    prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if X86_64:
        prctl(22, 2, ctypes.addressof(FPROG))  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER

def refuse(*a, **k):
    raise PermissionError("network access is disabled in the sandbox")

class CaseTimeout(BaseException):
    pass

def on_alarm(*a):
    raise CaseTimeout()

def describe(e):
    if isinstance(e, CaseTimeout):
        return "timeout after %ss" % cfg["case_timeout"]
    return "%s: %s" % (type(e).__name__, str(e)[:200])

def timed(fn):
    signal.setitimer(signal.ITIMER_REAL, cfg["case_timeout"])
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

def close_from(low):
    # close_range(low, ~0, 0): one system call (x86-64); else each descriptor that is open.
    if X86_64 and libc.syscall(436, low, 0xFFFFFFFF, 0) == 0:
        return
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) >= low:
            try:
                os.close(int(fd))
            except OSError:
                pass

def run_items(items, w):
    os.setpgid(0, 0)
    os.dup2(w, 3)
    close_from(4)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    budget = sum(item_budget(item) for item in items)
    soft = cfg["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
    resource.setrlimit(resource.RLIMIT_CPU, (int(budget) + 1, int(budget) + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_mb"] << 20, cfg["file_mb"] << 20))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    drop_privileges()
    prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (after the uid change, which clears it)
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_procs"], cfg["max_procs"]))
    socket.socket = refuse
    socket.create_connection = refuse
    signal.signal(signal.SIGALRM, on_alarm)
    outs = [run_program(item) for item in items]
    try:
        blob = json.dumps(outs).encode()
    except (TypeError, ValueError):  # a value that is not JSON: that case's failure
        for out in outs:
            for row in out["results"]:
                try:
                    json.dumps(row)
                except (TypeError, ValueError) as e:
                    row.clear()
                    row.update(ok=False, error=describe(e))
        blob = json.dumps(outs).encode()
    if len(blob) > cfg["max_result_bytes"] * len(items):
        too_big = {"ok": False, "error": "result larger than %d bytes" % cfg["max_result_bytes"]}
        blob = json.dumps([too_big] * len(items)).encode()
    os.write(3, blob)
    os._exit(0)

def run_program(item):
    out = {"ok": False, "results": []}
    ns = {"__name__": "__sandbox__"}
    try:
        timed(lambda: exec(compile(item["code"], "<sandbox>", "exec"), ns))
        fn = ns.get(item["func"]) if item.get("func") else None
        if item.get("func") and not callable(fn):
            raise NameError("no function named %r" % item["func"])
        for args in item.get("inputs") or []:
            try:
                value = timed(lambda: fn(*args))
                out["results"].append({"ok": True, "value": value})
            except BaseException as e:
                out["results"].append({"ok": False, "error": describe(e)})
        out["ok"] = True
    except BaseException as e:
        out["error"] = describe(e)
    return out

def item_budget(item):
    # A timeout per test case (and one for the program's own top level), not one for them all.
    return cfg["case_timeout"] * (1 + len(item.get("inputs") or [])) + 1.0

def valid(res):
    if not isinstance(res, dict) or not isinstance(res.get("ok"), bool):
        return False
    rows = res.get("results", [])
    if not isinstance(rows, list):
        return False
    if not all(isinstance(r, dict) and isinstance(r.get("ok"), bool) for r in rows):
        return False
    return res.get("error") is None or isinstance(res.get("error"), str)

def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

def leftovers():
    # In a namespace: every process but this one. With a sandbox uid: that uid's processes.
    # Otherwise: this process's children (orphans come back to it as subreaper).
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if in_ns:
                found.append(int(name))
            elif uid is not None:
                if os.stat("/proc/" + name).st_uid == uid:
                    found.append(int(name))
            else:
                with open("/proc/%s/stat" % name, "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == me:
                        found.append(int(name))
        except (OSError, ValueError, IndexError):
            pass
    return found

def remove(path):
    import shutil
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass

SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

def files_left():
    # What the item wrote: in a namespace its tmpfs (emptied); with a sandbox uid, whatever
    # that uid owns in the world-writable folders, and its System V IPC objects.
    if in_ns:
        for d in (workdir, "/dev/shm"):
            for e in os.listdir(d):
                remove(os.path.join(d, e))
        return
    if uid is None:
        return
    for d in SHARED_DIRS:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid == uid:
                    remove(e.path)
            except OSError:
                pass
    for kind, rm in (("shm", libc.shmctl), ("msg", libc.msgctl), ("sem", libc.semctl)):
        try:
            rows = open("/proc/sysvipc/" + kind).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            owner = int(cols[4] if kind == "sem" else cols[7])
            if owner == uid:
                rm(int(cols[1]), 0, None)  # IPC_RMID

def clean(pid):
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.waitpid(pid, 0)  # the item itself, dead now
    except ChildProcessError:
        pass
    for _ in range(200):  # until nothing the item started is left
        reap()
        left = leftovers()
        if not left:
            break
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.001)
    files_left()

def run_group(items):
    # Programs in one forked process: one program per process unless share_process. The
    # worker's objects are frozen first, so the child's garbage collector never walks (and
    # copies the pages of) the worker's heap.
    gc.freeze()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            run_items(items, w)
        finally:
            os._exit(1)
    os.close(w)
    cap = cfg["max_result_bytes"] * len(items) + 1
    chunks, size, timed_out = [], 0, False
    budget = sum(item_budget(item) for item in items)
    end = time.monotonic() + budget
    while size < cap:
        left = end - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        data = os.read(r, min(65536, cap - size))
        if not data:
            break
        chunks.append(data)
        size += len(data)
    os.close(r)
    clean(pid)
    if timed_out:
        return failed(items, "timeout after %.0fs" % budget)
    if size >= cap:
        return failed(items, "result larger than %d bytes" % cfg["max_result_bytes"])
    if not chunks:
        return failed(items, "the program died (memory or CPU limit, or it exited)")
    try:
        res = json.loads(b"".join(chunks))
    except ValueError:
        return failed(items, "a malformed result")
    if not isinstance(res, list) or len(res) != len(items):
        return failed(items, "a malformed result")
    return [x if valid(x) else {"ok": False, "error": "a malformed result"} for x in res]

def failed(items, error):
    return [{"ok": False, "error": error} for _ in items]

def run_task(items):
    if not cfg["share_process"]:
        return [run_group([item])[0] for item in items]
    out = run_group(items)
    if len(items) > 1 and all(not x["ok"] and "results" not in x for x in out):
        # The shared process failed as a whole (a timeout, a crash): each program alone, so
        # one bad program cannot sink the others and its own failure is recorded.
        return [run_group([item])[0] for item in items]
    return out

print(json.dumps({"ready": True, "isolation": isolation, "uid": uid, "workdir": workdir,
                  "skipped": errors}), flush=True)
for line in sys.stdin:
    task = json.loads(line)
    print(json.dumps({"batch": run_task(task["items"])}), flush=True)
"""


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

    LEVELS = ("full", "userns", "uid", "process")

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
        cmd = [*self.wrapper, sys.executable, "-I", "-S", "-c", WORKER, json.dumps(self.cfg)]
        self._cgroup = memory_cgroup((int(self.cfg["memory_mb"]) + WORKER_MB) << 20)
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
            remove_cgroup(self._cgroup)
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
    quota, headroom = cgroup_limits()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))  # whole CPUs: no worker waits on the quota
    free = _available_bytes() if headroom is None else min(_available_bytes(), headroom)
    fit = free // ((int(memory_mb) + WORKER_MB) << 20)
    return int(max(1, min(cores, MAX_WORKERS, fit)))


def _available_bytes() -> int:
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
            _signal(lambda pid=pid: os.kill(pid, signal.SIGKILL))
        try:
            os.rmdir(where)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


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
