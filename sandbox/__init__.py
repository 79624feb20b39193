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
worker. `SandboxService` holds the pools a run uses (one per distinct `SandboxSettings`),
caches results in the cache it is given, records what ran (`Usage`), and is closed by its
owner: AutoIF and the code benchmarks run their programs through it.

What no in-process harness can prevent: a program decides its own result (a HumanEval solution
that calls os._exit(0) before the tests ends without an exception). It cannot write another
program's result or the worker's.

The package is layer 0: it imports nothing of the project (the standard library only; tqdm for
a progress bar where it is installed).

    sandbox/worker.py     the worker program (started as `python -I -S -c <its source> <cfg>`)
    sandbox/isolation.py  `Sandbox`: the caller's side of one worker; `TaskResult`
    sandbox/pool.py       `SandboxPool`, `default_workers`
    sandbox/cgroups.py    the cgroup limits a pool sizes itself by, a memory cgroup per worker
    sandbox/service.py    `SandboxService`, `SandboxSettings`, `Usage`
"""

from sandbox.cgroups import cgroup_limits, memory_cgroup, remove_cgroup
from sandbox.isolation import GRACE_S, LEVELS, WORKER_MB, Sandbox, TaskResult, worker_source
from sandbox.pool import MAX_WORKERS, SandboxPool, default_workers
from sandbox.service import SandboxService, SandboxSettings, Usage, program_key

__all__ = [
    "GRACE_S",
    "LEVELS",
    "MAX_WORKERS",
    "WORKER_MB",
    "Sandbox",
    "SandboxPool",
    "SandboxService",
    "SandboxSettings",
    "TaskResult",
    "Usage",
    "cgroup_limits",
    "default_workers",
    "memory_cgroup",
    "program_key",
    "remove_cgroup",
    "worker_source",
]
