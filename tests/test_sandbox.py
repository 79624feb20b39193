"""The sandbox against hostile functions: each is contained, recorded as a failure, and the
sandbox keeps working."""

import os
import socket
import threading
import time

import pytest

from sandbox import Sandbox

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and the user switch need root")
GOOD = "def evaluate(response):\n    return response.islower()\n"


@pytest.fixture(scope="module")
def sb():
    box = Sandbox(timeout=2, memory_mb=512)
    yield box
    box.close()


def _still_works(sb):
    r = sb.run(GOOD, "evaluate", [["abc"], ["ABC"]])
    assert r.ok and [x["value"] for x in r.results] == [True, False]


def test_cases_and_per_case_errors(sb):
    r = sb.run(GOOD, "evaluate", [["abc"], ["Abc"], [3]])
    assert r.ok and r.results[0] == {"ok": True, "value": True}
    assert r.results[2]["ok"] is False and "AttributeError" in r.results[2]["error"]
    assert not sb.run("def f(:\n", "f", [[]]).ok  # syntax error
    assert "no function named" in sb.run("x = 1", "evaluate", [["a"]]).error


@pytest.mark.parametrize(
    "code,needle",
    [
        ("while True:\n    pass", "timeout"),
        ("x = bytearray(10 * 1024**3)", "MemoryError"),
        ("raise ValueError('boom')", "ValueError: boom"),
        ("import socket\nsocket.create_connection(('127.0.0.1', 9))", "network access is disabled"),
    ],
)
def test_hostile_code_is_a_recorded_failure(sb, code, needle):
    r = sb.run(code, None)
    assert not r.ok and needle in r.error
    _still_works(sb)


def test_fork_bomb_is_contained(sb):
    r = sb.run("import os\nwhile True:\n    os.fork()", None)
    assert not r.ok
    _still_works(sb)
    if sb.isolation == "full":  # nothing of the sandbox user survives the task
        uid = sb.run("import os\ndef f(): return os.getuid()", "f", [[]]).results[0]["value"]
        left = [p for p in os.listdir("/proc") if p.isdigit() and _uid(p) == uid]
        assert len(left) <= 1, left  # the worker itself


def _uid(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return None


@ROOT_ONLY
def test_no_network_even_below_the_socket_module(sb):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    got = []
    t = threading.Thread(target=lambda: got.append(_accept(server)))
    t.start()
    code = f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))"
    r = sb.run(code, None)
    t.join()
    server.close()
    assert not r.ok and got == [None]


def _accept(server):
    try:
        return server.accept()
    except OSError:
        return None


@ROOT_ONLY
def test_files_outside_the_sandbox_are_out_of_reach(sb, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    outside = tmp_path / "written.txt"
    attempts = [
        f"import os\nos.remove({str(victim)!r})",
        f"open({str(outside)!r}, 'w').write('x')",
        f"import os\nos.system('touch {outside}; rm -f {victim}')",
        "import shutil\nshutil.rmtree('/etc', ignore_errors=False)",
    ]
    for code in attempts:
        sb.run(code, None)
    assert victim.read_text() == "keep me" and not outside.exists()
    # /tmp inside the sandbox is its own tmpfs: what it writes there never appears here.
    marker = "sandbox-marker-file"
    assert sb.run(f"open('/tmp/{marker}', 'w').write('x')", None).ok
    assert not os.path.exists(f"/tmp/{marker}")
    _still_works(sb)


def test_clean_environment_and_output(sb, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    fresh = Sandbox(timeout=2)
    try:
        r = fresh.run("import os\ndef f(): return dict(os.environ)", "f", [[]])
        assert r.ok and "SECRET_TOKEN" not in r.results[0]["value"]
        assert "hunter2" not in str(r.results[0]["value"])
        r = fresh.run("def f():\n    print('x' * 10**7)\n    return 'done'", "f", [[]])
        assert r.ok and r.results[0]["value"] == "done"  # megabytes of output go nowhere
        r = fresh.run("def f(x): return {'yes': x} if x else {1, 2}", "f", [[1], [0]])
        assert r.results[0] == {"ok": True, "value": {"yes": 1}}  # non-bools come back as data
        assert r.results[1]["ok"] is False  # not serialisable: a per-case failure
    finally:
        fresh.close()


# ------------------------------------------------------------------ every privilege mode
# The worker as it starts on: a root with every capability (full), a root without
# CAP_SYS_ADMIN as in Docker (user namespaces), a root without namespaces at all (uid), an
# unprivileged user (user namespaces), and one without user namespaces (process).
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--"]
NO_SYS_ADMIN = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--"]
MODES = {
    "root": ([], None, "full"),
    "root-no-cap-sys-admin": (NO_SYS_ADMIN, None, "userns"),
    "root-no-namespaces": ([], ("uid", "process"), "uid"),
    "user": (NOBODY, None, "userns"),
    "user-no-namespaces": (NOBODY, ("process",), "process"),
}
TIMEOUT, GRACE = 0.5, 1.5


@pytest.fixture(scope="module", params=list(MODES))
def mode_sb(request):
    if os.geteuid() != 0:
        pytest.skip("the modes are entered from root (setpriv)")
    wrapper, levels, expected = MODES[request.param]
    box = Sandbox(timeout=TIMEOUT, memory_mb=512, levels=levels, wrapper=wrapper, grace_s=GRACE)
    box.run("x = 1")  # start it
    assert box.isolation == expected, (request.param, box.isolation)
    yield box
    box.close()


def _budget(sb, n_items=1, n_cases=0):
    return GRACE + n_items * (TIMEOUT * (1 + n_cases) + 1.0)


@pytest.mark.parametrize(
    "code",
    [
        # into the worker's process group, then hang: the group kill misses it
        "import os, time\nos.setpgid(0, os.getpgid(os.getppid()))\ntime.sleep(600)",
        # freeze the process that waits for it
        "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nimport time\ntime.sleep(600)",
        # a daemon in its own session that outlives its parent
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\nos._exit(0)",
    ],
)
def test_no_task_hangs_the_caller_past_its_deadline(mode_sb, code):
    t0 = time.monotonic()
    r = mode_sb.run(code, None)
    took = time.monotonic() - t0
    assert not r.ok or r.error is None  # the daemon case may end cleanly
    assert took <= _budget(mode_sb) + 3, took
    _still_works(mode_sb)
    assert _sleepers() == []  # nothing it started is left


def _sleepers():
    """Processes still sleeping for the hostile tasks' 600 s."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"time.sleep(600)" in cmd or b"sleep\x00600" in cmd:
            out.append(pid)
    return out


FORGE = """
import json, os
lie = json.dumps({"batch": [{"ok": True, "results": [{"ok": True, "value": True}]}] * 3})
for fd in range(0, 64):
    try:
        os.write(fd, (lie + "\\n").encode())
    except OSError:
        pass
for target in ("/proc/%d/fd/1" % os.getppid(), "/proc/1/fd/1"):
    try:
        with open(target, "w") as f:
            f.write(lie + "\\n")
    except OSError:
        pass
def evaluate(x):
    return True
"""
HONEST_NO = "def evaluate(x):\n    return False\n"


def test_a_task_cannot_forge_its_neighbours_verdicts_or_desync_the_channel(mode_sb):
    res = mode_sb.run_batch([(HONEST_NO, "evaluate", [[1]]), (FORGE, "evaluate", [[1]])] * 2)
    assert [res[0].results, res[2].results] == [[{"ok": True, "value": False}]] * 2
    for forger in (res[1], res[3]):  # its own pipe, written twice: its own failure at most
        assert len(forger.results) <= 1, forger
    _still_works(mode_sb)  # the next answer is the next task's, not a forged line


def test_malformed_and_huge_results_are_failures(mode_sb):
    r = mode_sb.run('import os\nos.write(3, b\'{"ok": 1, "results": 5}\')\nos._exit(0)', None)
    assert not r.ok and "malformed" in r.error
    r = mode_sb.run("def f():\n    return [{}] * (8 * 1024 * 1024)", "f", [[]])
    assert not r.ok and "larger than" in r.error
    _still_works(mode_sb)


def test_the_callers_environment_and_files_are_out_of_reach(mode_sb, tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_TEST_SECRET", "hunter2")
    me = os.getpid()
    read = (
        "def f(pid):\n"
        "    try:\n"
        "        return open('/proc/%d/environ' % pid, 'rb').read().decode(errors='replace')\n"
        "    except OSError as e:\n"
        "        return 'refused'\n"
    )
    r = mode_sb.run(read, "f", [[me], [os.getppid()]])
    assert r.ok and all("hunter2" not in x.get("value", "") for x in r.results), r.results
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o777)  # even a world-writable folder
    r = mode_sb.run(f"import os\nos.remove({str(victim)!r})", None)
    if mode_sb.isolation != "process":  # process mode: the caller's own user (documented)
        assert victim.read_text() == "keep me"


def test_no_network_and_no_files_left_outside(mode_sb):
    code = "import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', 9))"
    r = mode_sb.run(code, None)
    assert not r.ok and ("Permission" in r.error or "Network" in r.error), r.error
    marker = f"sandbox-left-{os.getpid()}"
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        mode_sb.run(f"open('{d}/{marker}', 'w').write('x')", None)
    if mode_sb.isolation != "process":
        assert not any(os.path.exists(f"{d}/{marker}") for d in ("/tmp", "/var/tmp", "/dev/shm"))
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.exists(f"{d}/{marker}"):
            os.remove(f"{d}/{marker}")


def test_timeouts_are_per_test_case(mode_sb):
    """A slow but correct verifier over many texts: each case has its own timeout."""
    code = "import time\ndef evaluate(x):\n    time.sleep(0.2)\n    return True\n"
    r = mode_sb.run(code, "evaluate", [[k] for k in range(5)])  # 1 s in all, 0.2 s a case
    assert r.ok and all(x["ok"] for x in r.results)
    code = "def evaluate(x):\n    while x:\n        pass\n    return True\n"
    r = mode_sb.run(code, "evaluate", [[1], [0]])
    assert r.results[0]["ok"] is False and "timeout" in r.results[0]["error"]
    assert r.results[1] == {"ok": True, "value": True}


def test_sandbox_results_are_cached_and_replayed(tmp_path):
    """A resumed AutoIF run replays the verdicts it already has (a timeout included) instead of
    running the programs again, so it keeps the same verifiers; the isolation level it ran at is
    recorded."""
    from core.cache import StepCache
    from evolvers.autoif import SandboxConfig
    from evolvers.verifiers import run_programs
    from sandbox import SandboxService

    items = [("import random\ndef evaluate(x):\n    return random.random()", "evaluate", [[1]])]
    counts, replayed = {}, {}
    with SandboxService(cache=StepCache(tmp_path)) as service:
        first = run_programs(items, SandboxConfig(timeout=2), "t", service, counts)
    again = StepCache(tmp_path)
    with SandboxService(cache=again) as service:
        second = run_programs(items, SandboxConfig(timeout=2), "t", service, replayed)
    assert first[0].results == second[0].results and again.reports[-1].computed == 0
    assert counts["sandbox_isolation"] in Sandbox.LEVELS
    assert counts["sandbox_memory_limit"] in ("cgroup", "per process")
    assert replayed == {}  # nothing ran: no level to record


def test_a_shared_process_batch_computes_the_same_and_isolates_a_bad_program():
    """share_process=True (the fast path): the same results; a program that sinks the shared
    process (a hang) is rerun alone, so the others still get their own results."""
    items = [(GOOD, "evaluate", [["abc"], ["ABC"]]), ("while True:\n    pass", None, [])]
    with Sandbox(timeout=1, share_process=True, grace_s=2) as shared:
        got = shared.run_batch(items * 2)
    assert [r.results for r in got[::2]] == [
        [{"ok": True, "value": True}, {"ok": True, "value": False}]
    ] * 2
    assert all(not r.ok and "timeout" in r.error for r in got[1::2])


# A program whose processes each stay under the per-process address-space limit but together
# hold four times 150 MB of resident memory (each keeps it a second, so they hold it at once).
MANY_PROCESSES = """
import os, time
def evaluate(n):
    kids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                b = bytearray(150 << 20)
                for i in range(0, len(b), 4096):
                    b[i] = 1
                time.sleep(1)
                os._exit(0)
            except MemoryError:
                os._exit(3)
        kids.append(pid)
    held = 0
    for pid in kids:
        _, status = os.waitpid(pid, 0)
        held += os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return held
"""


def _cgroups_here() -> bool:
    from sandbox.cgroups import memory_cgroup, remove_cgroup

    where = memory_cgroup(1 << 30)
    if where:
        remove_cgroup(where)
    return where is not None


@pytest.mark.parametrize("mode", list(MODES))
def test_a_programs_processes_share_one_memory_cap(mode, monkeypatch):
    """memory_mb caps each process's address space, and (where a memory cgroup can be made)
    all of a program's processes together: four children of 150 MB under a 256 MB cap."""
    import sandbox.cgroups

    if os.geteuid() != 0 or not _cgroups_here():
        pytest.skip("no memory cgroup can be made here (needs root and a memory controller)")
    wrapper, levels, _ = MODES[mode]
    with Sandbox(timeout=20, memory_mb=256, levels=levels, wrapper=wrapper) as box:
        r = box.run(MANY_PROCESSES, "evaluate", [[1], [4]])
        assert box.memory_limit == "cgroup"
        assert r.ok and r.results[0]["value"] == 1  # one child fits
        assert r.results[1]["value"] <= 2  # not four: the cgroup holds them all
        cgroup = box._cgroup
    assert cgroup and not os.path.exists(cgroup)  # removed with the worker
    # Without the cgroup (as where none can be made) only the per-process limit holds.
    monkeypatch.setattr(sandbox.cgroups, "memory_cgroup", lambda limit: None)
    with Sandbox(timeout=20, memory_mb=256, levels=levels, wrapper=wrapper) as box:
        r = box.run(MANY_PROCESSES, "evaluate", [[4]])
        assert box.memory_limit == "per process" and r.results[0]["value"] == 4


@pytest.fixture(scope="module")
def apart():
    """Where a pool runs its workers at once: a level that keeps programs apart (namespaces or a
    uid of their own). At the `process` level the pool runs one worker, which its own test
    covers."""
    with Sandbox(levels=("full", "userns", "uid", "process")) as probe:
        probe.start()
        if probe.isolation == "process":
            pytest.skip("no level here keeps concurrent programs apart (the pool runs one worker)")


def test_a_pool_runs_its_workers_side_by_side_and_keeps_the_batch_order(monkeypatch, apart):
    """SandboxPool: the shares of one batch run in separate workers at the same time (both
    reach the barrier; one after the other, the first would wait on it alone and fail), and the
    results come back in the batch's order, failures included, as one sandbox gives them."""
    from sandbox import SandboxPool

    items = [(GOOD + f"# {k}\n", "evaluate", [["abc"], ["ABC"]]) for k in range(6)]
    items[2] = ("def evaluate(x):\n    raise ValueError('two')\n", "evaluate", [["a"]])
    items[4] = ("while True:\n    pass", None, [])
    items += [(f"def evaluate(x):\n    return x * {k}\n", "evaluate", [[k]]) for k in range(6)]
    with Sandbox(timeout=1) as one:
        expected = one.run_batch(items)

    meet = threading.Barrier(2, timeout=60)
    met, real = set(), Sandbox.run_batch

    def first_share_waits(self, share, timeout=None):
        if id(self) not in met:
            met.add(id(self))
            meet.wait()  # BrokenBarrierError unless the other worker is busy too
        return real(self, share, timeout)

    monkeypatch.setattr(Sandbox, "run_batch", first_share_waits)
    with SandboxPool(workers=2, timeout=1) as pool:
        got = pool.run_batch(items)
        assert len(met) == 2 and pool.isolation in Sandbox.LEVELS
    assert [(r.ok, r.results, r.error) for r in got] == [
        (r.ok, r.results, r.error) for r in expected
    ]
    assert got[4].error.startswith("timeout") and got[2].results[0]["ok"] is False
    assert [r.results[0]["value"] for r in got[6:]] == [k * k for k in range(6)]


def test_a_pool_reports_a_worker_that_cannot_start():
    from sandbox import SandboxPool

    with SandboxPool(workers=2, wrapper=["/bin/false"]) as pool:  # exits before the worker
        with pytest.raises(RuntimeError, match="sandbox worker failed to start"):
            pool.run_batch([(GOOD, "evaluate", [["a"]])] * 4)
    with pytest.raises(ValueError, match="unknown sandbox level 'strict'; valid: full, userns"):
        SandboxPool(workers=2, levels=("strict",))


@pytest.mark.parametrize(
    "cores,free_gib,cgroup,expected",
    [
        (12, 64, (None, None), 12),  # the cores
        (40, 512, (None, None), 16),  # at most 16
        (12, 4, (None, None), 3),  # what free memory holds at 1 GiB + 96 MiB each
        (12, 0.5, (None, None), 1),  # at least one
        (1, 64, (None, None), 1),
        (12, 64, (2.5, None), 2),  # a container's CPU quota
        (12, 64, (None, 5 << 30), 4),  # the memory left in its cgroup
        (12, 3, (8.0, 5 << 30), 2),  # the least of all
    ],
)
def test_pool_size_follows_the_cores_and_the_memory_there_is(
    monkeypatch, cores, free_gib, cgroup, expected
):
    """0 workers: one per CPU this process may use (affinity and cgroup quota), at most 16, and
    no more than the memory there is (host and cgroup) holds with each worker's programs at
    their cap (1 GiB + the worker's 96 MiB)."""
    import sandbox.cgroups
    from sandbox import SandboxPool, default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(sandbox.cgroups, "available_bytes", lambda: int(free_gib * (1 << 30)))
    monkeypatch.setattr(sandbox.cgroups, "cgroup_limits", lambda: cgroup)
    assert default_workers(1024) == expected
    assert SandboxPool(memory_mb=1024).workers == expected


def _tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_limits_are_read_from_v2_and_v1_trees_up_to_the_root(tmp_path):
    from sandbox.cgroups import cgroup_limits

    # v2: the job's own cgroup sets no CPU quota, its parent does (a SLURM job in a slice).
    v2 = tmp_path / "v2"
    _tree(
        v2,
        {
            "job/cpu.max": "200000 100000\n",
            "job/step/cpu.max": "max 100000\n",
            "job/step/memory.max": str(8 << 30),
            "job/step/memory.current": str(4 << 30),  # 1 GiB of it reclaimable page cache
            "job/step/memory.stat": f"anon {3 << 30}\ninactive_file {1 << 30}\n",
            "job/memory.max": "max",
            "job/memory.current": str(3 << 30),
            "self": "0::/job/step\n",
        },
    )
    assert cgroup_limits(str(v2), str(v2 / "self")) == (2.0, 5 << 30)
    # v1: quota -1 is no limit; a limit of ~2^63 is none either.
    v1 = tmp_path / "v1"
    _tree(
        v1,
        {
            "cpu,cpuacct/pod/cpu.cfs_quota_us": "150000",
            "cpu,cpuacct/pod/cpu.cfs_period_us": "100000",
            "cpu,cpuacct/pod/c1/cpu.cfs_quota_us": "-1",
            "cpu,cpuacct/pod/c1/cpu.cfs_period_us": "100000",
            "memory/pod/c1/memory.limit_in_bytes": str(4 << 30),
            "memory/pod/c1/memory.usage_in_bytes": str(1 << 30),
            "memory/memory.limit_in_bytes": "9223372036854771712",
            "memory/memory.usage_in_bytes": str(7 << 30),
            "self": "4:memory:/pod/c1\n3:cpu,cpuacct:/pod/c1\n0::/\n",
        },
    )
    assert cgroup_limits(str(v1), str(v1 / "self")) == (1.5, 3 << 30)
    # A cgroup path outside the tree (a sibling whose name starts alike) is not walked.
    _tree(tmp_path / "v2-other", {"cpu.max": "100000 100000"})
    _tree(v2, {"self": "0::/../v2-other\n"})
    assert cgroup_limits(str(v2), str(v2 / "self")) == (None, None)
    # Nothing limited, or nothing readable.
    _tree(tmp_path / "none", {"self": "0::/\n"})
    assert cgroup_limits(str(tmp_path / "none"), str(tmp_path / "none" / "self")) == (None, None)
    assert cgroup_limits(str(tmp_path), str(tmp_path / "missing")) == (None, None)


def test_a_pool_runs_one_worker_where_programs_share_the_callers_uid(monkeypatch):
    """At the `process` level the programs of two workers would run at once as the caller's
    uid without namespaces, able to signal each other: the pool uses one worker there, and
    both where the level keeps them apart."""
    from sandbox import SandboxPool

    used = set()
    real = Sandbox.run_batch

    def spy(self, share, timeout=None):
        used.add(id(self))
        return real(self, share, timeout)

    monkeypatch.setattr(Sandbox, "run_batch", spy)
    items = [(GOOD + f"# {k}\n", "evaluate", [["abc"]]) for k in range(8)]
    with SandboxPool(workers=2, timeout=2, levels=("process",)) as pool:
        got = pool.run_batch(items)
        assert pool.isolation == "process" and len(used) == 1
    assert all(r.ok and r.results[0]["value"] is True for r in got)
    used.clear()
    with SandboxPool(workers=2, timeout=2) as pool:
        got = pool.run_batch(items)
        assert len(used) == (1 if pool.isolation == "process" else 2)
    assert all(r.ok and r.results[0]["value"] is True for r in got)


def test_an_interrupted_pool_kills_its_workers_and_starts_no_further_share(monkeypatch, apart):
    """Ctrl-C or SIGTERM (an exception in the waiting caller) while the workers run: the
    workers are killed at once, no share starts after, no worker is started again, and the
    exception goes on."""
    import signal

    from sandbox import SandboxPool

    class Stop(Exception):
        pass

    calls, real = [], Sandbox.run_batch

    def spy(self, share, timeout=None):
        calls.append(len(share))
        return real(self, share, timeout)

    def interrupt(*_):
        raise Stop()

    monkeypatch.setattr(Sandbox, "run_batch", spy)
    before = signal.signal(signal.SIGALRM, interrupt)
    slow = "import time\ndef evaluate(x):\n    time.sleep(x)\n    return True\n"
    pool = SandboxPool(workers=2, share_size=1, timeout=60)
    try:
        pool.boxes[0].start()
        pool.boxes[1].start()
        workers = [box._proc.pid for box in pool.boxes]
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        with pytest.raises(Stop):
            pool.run_batch([(slow, "evaluate", [[30]])] * 8)
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert calls == [1, 1]  # the two shares in flight, none after
        assert all(box._proc is None for box in pool.boxes)  # killed, and not started again
        assert all(_state(pid) is None for pid in workers)
        # Cleaned up and usable again: no "stopped" results afterwards.
        (again,) = pool.run_batch([(GOOD, "evaluate", [["abc"]])])
        assert again.results[0]["value"] is True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
        pool.close()


def test_an_aborted_sandbox_starts_no_worker_until_closed():
    """abort() (from the pool's interrupt path) before or during a request: the request ends
    as stopped, no worker is started for it, and close() makes the sandbox usable again."""
    box = Sandbox(timeout=2)
    try:
        box.abort()  # before the worker exists, as when it looks while the worker starts
        r = box.run(GOOD, "evaluate", [["abc"]])
        assert not r.ok and r.error == "the sandbox was stopped" and box._proc is None
        box.close()
        assert box.run(GOOD, "evaluate", [["abc"]]).results[0]["value"] is True
    finally:
        box.close()


def test_an_interrupt_inside_a_request_kills_the_worker(monkeypatch):
    """Ctrl-C while a sandbox waits for its worker's answer: the worker is killed, so that
    answer can never be read as the next request's."""
    box = Sandbox(timeout=2)
    try:
        box.start()
        pid = box._proc.pid

        def interrupted(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(Sandbox, "_readline", interrupted)
        with pytest.raises(KeyboardInterrupt):
            box.run(GOOD, "evaluate", [["abc"]])
        assert box._proc is None and _state(pid) is None
        monkeypatch.undo()
        assert box.run(GOOD, "evaluate", [["abc"]]).results[0]["value"] is True
    finally:
        box.close()


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_sandbox_settings_are_checked_at_start_up():
    from core.errors import ConfigError
    from pipeline.runner import _check_config
    from tests.conftest import compose_cfg

    with pytest.raises(ConfigError, match=r"scenario.sandbox.workers: must be >= 0"):
        _check_config(compose_cfg(["scenario=autoif", "scenario.sandbox.workers=-1"]))
    _check_config(compose_cfg(["scenario=autoif", "scenario.sandbox.workers=3"]))


# ------------------------------------------------------------------ the package and its worker
PROJECT = ("core", "engines", "evolvers", "metrics", "training", "evaluation", "reporting")


def _imported(path):
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_sandbox_is_layer_0_and_its_worker_the_standard_library_only():
    """sandbox/ imports nothing of the project; the worker (started with -I -S) imports the
    standard library only, not even the package it belongs to."""
    import sys
    from pathlib import Path

    import sandbox

    folder = Path(sandbox.__file__).parent
    for path in folder.glob("*.py"):
        assert not _imported(path) & {*PROJECT, "pipeline", "run"}, path
    worker = _imported(folder / "worker.py")
    assert worker <= set(sys.stdlib_module_names), worker - set(sys.stdlib_module_names)


def test_the_worker_is_a_module_that_ruff_passes():
    """The worker is a real file: importing it runs nothing, its source is what a Sandbox
    starts, and the linter reads it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import sandbox.worker as worker
    from sandbox import worker_source

    assert worker_source() == Path(worker.__file__).read_text()
    assert 'if __name__ == "__main__":\n    main(sys.argv[1:])' in worker_source()
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).is_file():
        pytest.skip("ruff is not installed")
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run([ruff, *args, worker.__file__], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_worker_helpers():
    import sandbox.worker as w

    assert w.item_budget({"inputs": [[1], [2]]}, 0.5) == 2.5  # a timeout per case, + the top
    assert w.item_budget({"code": "x"}, 2) == 3.0
    assert w.valid({"ok": True, "results": [{"ok": False, "error": "e"}]})
    for bad in (None, [], {"ok": 1}, {"ok": True, "results": {}}, {"ok": True, "results": [3]}):
        assert not w.valid(bad), bad
    assert not w.valid({"ok": False, "error": 3})
    assert w.failed([1, 2], "x") == [{"ok": False, "error": "x"}] * 2
    # A process name may hold spaces and parentheses: the parent PID is after the last ")".
    assert w.parent_pid(b"42 (a) (b c) S 7 42 42 0") == 7
    assert w.describe(w.CaseTimeout(), 0.5) == "timeout after 0.5s"
    assert w.describe(ValueError("x" * 300), 1) == "ValueError: " + "x" * 200
    uid = w.free_uid()
    assert uid >= 4100000000 and all(_uid(p) != uid for p in os.listdir("/proc") if p.isdigit())
    rows, prog = w.seccomp_program()
    assert len(rows.raw) == 8 * len(w.SECCOMP) + 1  # 8 bytes a row, and the buffer's NUL
    with pytest.raises(PermissionError, match="network access is disabled"):
        w.refuse()


# ------------------------------------------------------------------ the service
def test_the_service_reuses_its_workers_until_closed():
    """One pool per settings, started once and reused by every call (the same worker serves
    both); what ran is recorded per call and in all; close() stops the workers and ends it."""
    from sandbox import SandboxService, SandboxSettings, Usage

    settings = SandboxSettings(timeout=2, workers=1, batch_size=1)
    service = SandboxService()
    try:
        first, second = Usage(), Usage()
        (a,) = service.run_batch([(GOOD, "evaluate", [["abc"]])], settings, "t", first)
        (pool,) = service._pools.values()
        worker = pool.boxes[0]._proc
        (b,) = service.run_batch([(GOOD, "evaluate", [["ABC"]])], settings, "t", second)
        one = service.run(GOOD, "evaluate", [["abc"]], settings)
        assert list(service._pools.values()) == [pool] and pool.boxes[0]._proc is worker
        assert worker.poll() is None  # still serving
        assert [a.results[0]["value"], b.results[0]["value"], one.results[0]["value"]] == [
            True,
            False,
            True,
        ]
        assert first.isolation in Sandbox.LEVELS and first.ran == 1 and second.ran == 1
        assert first.counts() == {
            "sandbox_isolation": first.isolation,
            "sandbox_memory_limit": first.memory_limit,
        }
        assert service.usage.ran == 3 and service.isolation == first.isolation
    finally:
        service.close()
    assert worker.poll() is not None  # the worker is gone
    with pytest.raises(RuntimeError, match="closed"):
        service.run(GOOD, "evaluate", [["abc"]])


def test_the_service_caches_under_the_keys_autoif_always_used(tmp_path):
    """With a cache: results come from it on a rerun (nothing runs, so no level is recorded),
    a program twice in a batch runs once, and the cache folder is the one the code before the
    service wrote (step `sandbox`, the limits, each program's stable_hash): old caches hit."""
    from core.cache import StepCache, stable_hash
    from sandbox import SandboxService, SandboxSettings, Usage, program_key

    item = ("import random\ndef evaluate(x):\n    return random.random()", "evaluate", [[1]])
    assert program_key(item) == stable_hash(list(item))[:24]
    settings = SandboxSettings(timeout=2, memory_mb=512, workers=1)
    payload = {"timeout": 2.0, "memory_mb": 512}
    key = stable_hash({"step": "sandbox", "payload": payload, "ids": [program_key(item)]})[:20]
    cache, usage = StepCache(tmp_path), Usage()
    with SandboxService(cache=cache) as service:
        first = service.run_batch([item, item], settings, "t", usage)
    assert usage.ran == 1 and first[0].results == first[1].results
    assert cache.reports[-1].key == key and (tmp_path / "steps" / "sandbox" / key).is_dir()
    again, replayed = StepCache(tmp_path), Usage()
    with SandboxService(cache=again) as service:
        (second,) = service.run_batch(
            [item], SandboxSettings(timeout=2, memory_mb=512), "t", replayed
        )
    assert second.results == first[0].results and again.reports[-1].computed == 0
    assert replayed.ran == 0 and replayed.cached == 1 and replayed.isolation is None
    shared = SandboxSettings(timeout=2, memory_mb=512, share_process=True)
    assert shared.cache_key() == {**payload, "share_process": True}


def test_service_settings_come_from_a_config_section():
    from evolvers.autoif import SandboxConfig
    from sandbox import SandboxSettings

    s = SandboxSettings.of(SandboxConfig(timeout=3, workers=2, batch_size=8))
    assert (s.timeout, s.memory_mb, s.workers, s.batch_size, s.share_process) == (
        3.0,
        1024,
        2,
        8,
        False,
    )
    assert SandboxSettings.of(object()) == SandboxSettings()
    with pytest.raises(ValueError, match="must be >= 0"):
        SandboxSettings(workers=-1)
