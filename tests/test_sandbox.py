"""The sandbox against hostile functions: each is contained, recorded as a failure, and the
sandbox keeps working."""

import os
import socket
import threading

import pytest

from core.sandbox import Sandbox

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
