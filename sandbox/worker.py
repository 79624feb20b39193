"""The sandbox worker: the program a `sandbox.isolation.Sandbox` starts and talks to.

Started as `python -I -S -c <this file's source> <config JSON>`: the source travels on the
command line, so the worker needs no read access to the checkout (tests start it as another
user), and it imports nothing but the standard library (`-I -S`: no site, no environment, no
script folder on the path). Importing this module runs nothing; `main()` is the program.

The protocol (one JSON object per line on stdout, requests on stdin):
  1. at the `full` and `userns` levels only: `{"hello": "worker", "init_pid": <pid>}`, the PID
     (outside) of the new PID namespace's first process, which serves from then on;
  2. `{"ready": true, "isolation", "uid", "workdir", "skipped"}` (or `{"ready": false,
     "error"}` and exit status 1 when no level could be entered);
  3. per request line `{"items": [{"code", "func", "inputs"}, ...]}` one answer line
     `{"batch": [{"ok", "results": [{"ok", "value"} | {"ok": false, "error"}], "error"}]}`.

The config: `levels` (tried strongest first), `memory_mb`, `file_mb`, `tmpfs_mb`, `max_procs`,
`max_result_bytes`, `case_timeout`, `share_process` (see `Sandbox`).

Each program runs in a forked child that drops every privilege and writes its result to its own
pipe (descriptor 3), the only descriptor it keeps; the worker reads at most a bounded result,
shape-checks it, then kills and reaps everything the program left and removes its files.
"""

import ctypes
import gc
import importlib
import json
import os
import platform
import pwd
import resource
import select
import signal
import socket
import struct
import sys
import time

# Loaded before the privilege drop: the unprivileged user may be unable to read the interpreter's
# library folder (a Python installed under /root), and model-written code imports these.
PRELOAD = (
    "abc array base64 binascii bisect calendar cmath collections collections.abc contextlib copy "
    "csv dataclasses datetime decimal difflib enum fractions functools hashlib heapq io itertools "
    "math numbers operator pprint queue random re statistics string struct textwrap types typing "
    "unicodedata weakref zlib"
).split()

NEWNS, NEWNET, NEWPID, NEWIPC, NEWUSER = 0x20000, 0x40000000, 0x20000000, 0x8000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 16384, 1 << 18
X86_64 = platform.machine() == "x86_64"
# World-writable folders a program at the `uid` level may leave files in.
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# A seccomp program (x86-64) under which socket() for anything but AF_UNIX fails with EACCES:
# (code, jt, jf, k) rows of struct sock_filter.
SECCOMP = [
    (0x20, 0, 0, 4),
    (0x15, 0, 5, 0xC000003E),
    (0x20, 0, 0, 0),
    (0x15, 0, 3, 41),
    (0x20, 0, 0, 16),
    (0x15, 1, 0, 1),
    (0x06, 0, 0, 0x00050000 | 13),
    (0x06, 0, 0, 0x7FFF0000),
]


def preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


# -- system calls -------------------------------------------------------------------------------
def check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def free_uid(pid: int | None = None) -> int:
    """A uid far above the ranges of real users (sssd allocates from 200000 to 2000200000): one
    no account has and no process runs as."""
    used = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                used.add(os.stat("/proc/" + p).st_uid)
            except OSError:
                pass
    pid = os.getpid() if pid is None else pid
    for k in range(1000):
        uid = 4100000000 + (pid * 7919 + k) % 100000000
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if uid not in used:
                return uid
    raise OSError(0, "no free uid")


def seccomp_program() -> tuple[ctypes.Array, ctypes.Array]:
    """(the filter, the sock_fprog pointing at it): both must stay alive while in use."""
    rows = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in SECCOMP))
    prog = ctypes.create_string_buffer(
        struct.pack("HxxxxxxQ", len(SECCOMP), ctypes.addressof(rows))
    )
    return rows, prog


def item_budget(item: dict, case_timeout: float) -> float:
    """A timeout per test case (and one for the program's own top level), not one for them all."""
    return case_timeout * (1 + len(item.get("inputs") or [])) + 1.0


def valid(res: object) -> bool:
    """The shape of one program's result as the worker passes it on."""
    if not isinstance(res, dict) or not isinstance(res.get("ok"), bool):
        return False
    rows = res.get("results", [])
    if not isinstance(rows, list):
        return False
    if not all(isinstance(r, dict) and isinstance(r.get("ok"), bool) for r in rows):
        return False
    return res.get("error") is None or isinstance(res.get("error"), str)


def failed(items: list, error: str) -> list[dict]:
    return [{"ok": False, "error": error} for _ in items]


def parent_pid(stat: bytes) -> int:
    """The parent PID field of a /proc/<pid>/stat line (the name in parentheses may hold any
    character, spaces and parentheses included)."""
    return int(stat.rsplit(b")", 1)[1].split()[1])


def refuse(*a, **k):
    raise PermissionError("network access is disabled in the sandbox")


class CaseTimeout(BaseException):
    pass


def on_alarm(*a):
    raise CaseTimeout()


def describe(e: BaseException, case_timeout: float) -> str:
    if isinstance(e, CaseTimeout):
        return f"timeout after {case_timeout}s"
    return f"{type(e).__name__}: {str(e)[:200]}"


def close_from(libc, low: int) -> None:
    """close_range(low, ~0, 0): one system call (x86-64); else each descriptor that is open."""
    if X86_64 and libc.syscall(436, low, 0xFFFFFFFF, 0) == 0:
        return
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) >= low:
            try:
                os.close(int(fd))
            except OSError:
                pass


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def remove(path: str) -> None:
    import shutil

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


# -- the worker ---------------------------------------------------------------------------------
class Worker:
    """One worker process's state: its config, the level it entered, the sandbox uid (or None)
    and its folder."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.isolation: str | None = None
        self.errors: list[str] = []
        self.uid: int | None = None
        self.in_ns = False
        self.workdir = ""
        # Built once: the capset arguments (every set empty) and the seccomp program.
        self.cap_hdr = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
        self.cap_none = ctypes.create_string_buffer(24)
        self.filter, self.fprog = seccomp_program()

    def prctl(self, *args: int) -> int:
        return self.libc.prctl(*[ctypes.c_ulong(a) for a in args])

    # -- isolation ------------------------------------------------------------------------------
    def read_only_root(self) -> None:
        # mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, {attr_set=MOUNT_ATTR_RDONLY}): every mount
        # read-only (mounts made after it, the tmpfs below, stay writable).
        if not X86_64:
            raise OSError(0, "read-only remount needs mount_setattr (x86_64 here)")
        attr = struct.pack("QQQQ", 1, 0, 0, 0)
        buf = ctypes.create_string_buffer(attr, len(attr))
        check(self.libc.syscall(442, -100, b"/", 0x8000, buf, len(attr)), "mount_setattr read-only")

    def namespaces(self, user: bool) -> None:
        libc = self.libc
        if user:
            uid, gid = os.getuid(), os.getgid()
            check(libc.unshare(NEWUSER | NEWNS | NEWNET | NEWPID | NEWIPC), "unshare(user)")
            write("/proc/self/setgroups", "deny")
            write("/proc/self/uid_map", f"0 {uid} 1")
            write("/proc/self/gid_map", f"0 {gid} 1")
        else:
            check(libc.unshare(NEWNS | NEWNET | NEWPID | NEWIPC), "unshare")
        check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
        self.read_only_root()
        opts = f"size={int(self.cfg['tmpfs_mb'])}m,mode=1777".encode()
        for target in (b"/tmp", b"/dev/shm"):
            if os.path.isdir(target):
                check(libc.mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, opts), "tmpfs")

    def mount_proc(self) -> None:
        # In the new PID namespace (PID 1): a /proc of its own processes only; if procfs cannot
        # be mounted here, an empty tmpfs hides the outer one.
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        if self.libc.mount(b"proc", b"/proc", b"proc", flags, None) != 0:
            hide = self.libc.mount(b"tmpfs", b"/proc", b"tmpfs", flags | MS_RDONLY, b"size=1k")
            check(hide, "hide /proc")

    def choose_level(self) -> bool:
        """Enter the first of `levels` the machine allows; False when none."""
        for level in self.cfg["levels"]:
            try:
                if level == "full":
                    if os.geteuid() != 0:
                        raise OSError(0, "not root")
                    self.uid = free_uid()
                    self.namespaces(user=False)
                elif level == "userns":
                    self.namespaces(user=True)
                elif level == "uid":
                    if os.geteuid() != 0:
                        raise OSError(0, "not root")
                    self.uid = free_uid()
                self.isolation = level
                return True
            except OSError as e:
                self.errors.append(f"{level}: {e}")
                self.uid = None
        return False

    def enter_pid_namespace(self) -> None:
        """The worker stays outside the new PID namespace; its child is that namespace's PID 1
        and serves the caller (stdin/stdout are inherited). Killing it kills every process
        inside. The outer process announces it, waits for it and exits with it."""
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
        self.mount_proc()

    def drop_privileges(self) -> None:
        self.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
        # PR_SET_SECUREBITS NOROOT | NO_SETUID_FIXUP | KEEP_CAPS off, all locked: uid 0 (inside
        # a user namespace) gets no capability from any exec; with no_new_privs below, neither
        # does a setuid or file-capability binary.
        self.prctl(28, 0x2F)
        if self.uid is not None:
            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)
        self.libc.capset(self.cap_hdr, self.cap_none)  # no capability left in any set
        self.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        if X86_64:
            self.prctl(22, 2, ctypes.addressof(self.fprog))  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER

    # -- one program (in the forked child) -------------------------------------------------------
    def timed(self, fn, *args):
        signal.setitimer(signal.ITIMER_REAL, self.cfg["case_timeout"])
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def run_program(self, item: dict) -> dict:
        out: dict = {"ok": False, "results": []}
        ns = {"__name__": "__sandbox__"}
        case_timeout = self.cfg["case_timeout"]
        try:
            self.timed(lambda: exec(compile(item["code"], "<sandbox>", "exec"), ns))
            fn = ns.get(item["func"]) if item.get("func") else None
            if item.get("func") and not callable(fn):
                raise NameError(f"no function named {item['func']!r}")
            for args in item.get("inputs") or []:
                try:
                    value = self.timed(fn, *args)
                    out["results"].append({"ok": True, "value": value})
                except BaseException as e:
                    out["results"].append({"ok": False, "error": describe(e, case_timeout)})
            out["ok"] = True
        except BaseException as e:
            out["error"] = describe(e, case_timeout)
        return out

    def run_items(self, items: list[dict], w: int) -> None:
        cfg = self.cfg
        os.setpgid(0, 0)
        os.dup2(w, 3)
        close_from(self.libc, 4)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        budget = sum(item_budget(item, cfg["case_timeout"]) for item in items)
        soft = cfg["memory_mb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
        resource.setrlimit(resource.RLIMIT_CPU, (int(budget) + 1, int(budget) + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_mb"] << 20, cfg["file_mb"] << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        self.drop_privileges()
        self.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (after the uid change, which clears it)
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_procs"], cfg["max_procs"]))
        socket.socket = refuse
        socket.create_connection = refuse
        signal.signal(signal.SIGALRM, on_alarm)
        outs = [self.run_program(item) for item in items]
        try:
            blob = json.dumps(outs).encode()
        except (TypeError, ValueError):  # a value that is not JSON: that case's failure
            for out in outs:
                for row in out["results"]:
                    try:
                        json.dumps(row)
                    except (TypeError, ValueError) as e:
                        row.clear()
                        row.update(ok=False, error=describe(e, cfg["case_timeout"]))
            blob = json.dumps(outs).encode()
        if len(blob) > cfg["max_result_bytes"] * len(items):
            limit = int(cfg["max_result_bytes"])
            too_big = {"ok": False, "error": f"result larger than {limit} bytes"}
            blob = json.dumps([too_big] * len(items)).encode()
        os.write(3, blob)
        os._exit(0)

    # -- after a program (in the worker) ---------------------------------------------------------
    def leftovers(self) -> list[int]:
        """In a namespace: every process but this one. With a sandbox uid: that uid's processes.
        Otherwise: this process's children (orphans come back to it as subreaper)."""
        me, found = os.getpid(), []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                if self.in_ns:
                    found.append(int(name))
                elif self.uid is not None:
                    if os.stat("/proc/" + name).st_uid == self.uid:
                        found.append(int(name))
                else:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        if parent_pid(f.read()) == me:
                            found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
        return found

    def files_left(self) -> None:
        """What the program wrote: in a namespace its tmpfs (emptied); with a sandbox uid,
        whatever that uid owns in the world-writable folders, and its System V IPC objects."""
        if self.in_ns:
            for d in (self.workdir, "/dev/shm"):
                for e in os.listdir(d):
                    remove(os.path.join(d, e))
            return
        if self.uid is None:
            return
        for d in SHARED_DIRS:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.stat(follow_symlinks=False).st_uid == self.uid:
                        remove(e.path)
                except OSError:
                    pass
        libc = self.libc
        for kind, rm in (("shm", libc.shmctl), ("msg", libc.msgctl), ("sem", libc.semctl)):
            try:
                with open("/proc/sysvipc/" + kind) as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                owner = int(cols[4] if kind == "sem" else cols[7])
                if owner == self.uid:
                    rm(int(cols[1]), 0, None)  # IPC_RMID

    def clean(self, pid: int) -> None:
        for target in (
            lambda: os.killpg(pid, signal.SIGKILL),
            lambda: os.kill(pid, signal.SIGKILL),
        ):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.waitpid(pid, 0)  # the program itself, dead now
        except ChildProcessError:
            pass
        for _ in range(200):  # until nothing the program started is left
            reap()
            left = self.leftovers()
            if not left:
                break
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.001)
        self.files_left()

    def run_group(self, items: list[dict]) -> list[dict]:
        """Programs in one forked process: one program per process unless share_process. The
        worker's objects are frozen first, so the child's garbage collector never walks (and
        copies the pages of) the worker's heap."""
        cfg = self.cfg
        gc.freeze()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                self.run_items(items, w)
            finally:
                os._exit(1)
        os.close(w)
        cap = cfg["max_result_bytes"] * len(items) + 1
        chunks, size, timed_out = [], 0, False
        budget = sum(item_budget(item, cfg["case_timeout"]) for item in items)
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
        self.clean(pid)
        if timed_out:
            return failed(items, f"timeout after {budget:.0f}s")
        if size >= cap:
            return failed(items, f"result larger than {int(cfg['max_result_bytes'])} bytes")
        if not chunks:
            return failed(items, "the program died (memory or CPU limit, or it exited)")
        try:
            res = json.loads(b"".join(chunks))
        except ValueError:
            return failed(items, "a malformed result")
        if not isinstance(res, list) or len(res) != len(items):
            return failed(items, "a malformed result")
        return [x if valid(x) else {"ok": False, "error": "a malformed result"} for x in res]

    def run_task(self, items: list[dict]) -> list[dict]:
        if not self.cfg["share_process"]:
            return [self.run_group([item])[0] for item in items]
        out = self.run_group(items)
        if len(items) > 1 and all(not x["ok"] and "results" not in x for x in out):
            # The shared process failed as a whole (a timeout, a crash): each program alone, so
            # one bad program cannot sink the others and its own failure is recorded.
            return [self.run_group([item])[0] for item in items]
        return out

    # -- the program ----------------------------------------------------------------------------
    def start(self) -> None:
        """Enter the strongest level allowed and set up the folder programs run in; exits with
        status 1 (after a `ready: false` line) when no level can be entered."""
        if not self.choose_level():
            print(json.dumps({"ready": False, "error": "; ".join(self.errors)}), flush=True)
            sys.exit(1)
        self.in_ns = self.isolation in ("full", "userns")
        if self.in_ns:
            self.enter_pid_namespace()
            self.workdir = "/tmp/work"
            os.makedirs(self.workdir, exist_ok=True)
        else:
            import tempfile

            self.workdir = tempfile.mkdtemp(prefix="sandbox-")
        if self.uid is not None:
            os.chown(self.workdir, self.uid, self.uid)
            os.chmod(self.workdir, 0o700)
        self.prctl(4, 0)  # PR_SET_DUMPABLE 0: no program can open /proc/<this>/fd or environ
        self.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans (daemonised leftovers) come back here
        os.chdir(self.workdir)

    def serve(self) -> None:
        hello = {
            "ready": True,
            "isolation": self.isolation,
            "uid": self.uid,
            "workdir": self.workdir,
            "skipped": self.errors,
        }
        print(json.dumps(hello), flush=True)
        for line in sys.stdin:
            task = json.loads(line)
            print(json.dumps({"batch": self.run_task(task["items"])}), flush=True)


def main(argv: list[str]) -> None:
    preload()
    worker = Worker(json.loads(argv[0]))
    worker.start()
    worker.serve()


if __name__ == "__main__":
    main(sys.argv[1:])
