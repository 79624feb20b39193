"""kill -9 at random points: a real `python run.py` (evolve, respond and filter over a loopback
OpenAI-compatible server, so restarts are quick) is killed N times, each time resumed with the
same command, and ends with outputs identical to an uninterrupted run's and no damaged file."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.fakes import fake_openai_server

KILLS = 4
REQUESTS: list[float] = []  # when the server answered, for kills timed against the work
OUTPUTS = [
    "seeds.jsonl",
    "round_1/evolved.jsonl",
    "round_2/evolved.jsonl",
    "round_1/responded.jsonl",
    "round_2/responded.jsonl",
    "selected.jsonl",
]


def _server():
    # slow enough for a kill to land inside a step
    return fake_openai_server(delay_s=0.2, on_request=lambda: REQUESTS.append(time.monotonic()))


def _run(args, kill_after=None):
    """Run run.py to the end, or kill -9 its process group `kill_after` seconds after its first
    request reached the server (start-up is not what is being tested)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if kill_after is None:
        _, err = proc.communicate(timeout=300)
        return proc.returncode, err.decode(errors="replace")
    seen = len(REQUESTS)
    deadline = time.monotonic() + 120
    while len(REQUESTS) == seen and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(kill_after)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode, ""


def _damaged(folder):
    """Every JSON and JSONL file under `folder` parses whole; no quarantined lines."""
    bad = []
    for p in folder.rglob("*"):
        if p.name.endswith(".corrupt"):
            bad.append(str(p))
        elif p.suffix == ".json" and p.is_file():
            try:
                json.loads(p.read_text())
            except ValueError:
                bad.append(str(p))
        elif p.suffix == ".jsonl" and p.is_file():
            for line in p.read_text().splitlines():
                try:
                    json.loads(line)
                except ValueError:
                    bad.append(str(p))
                    break
    return bad


@pytest.mark.slow
def test_killed_at_random_points_then_resumed_equals_an_uninterrupted_run(tmp_path):
    httpd = _server()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:

        def args(name):
            return [
                "engine=openai",
                f"engine.base_url={url}",
                "engine.chunk_size=4",
                "engine.max_concurrency=2",
                "data.limit=16",
                "rounds=2",
                "stages=[evolve,respond,filter]",
                "filter=random",
                "logger=none",
                f"cache_dir={tmp_path / name / 'cache'}",
                f"hydra.run.dir={tmp_path / name / 'run'}",
            ]

        rc, err = _run(args("reference"))
        assert rc == 0, err[-3000:]
        rng = random.Random(0)
        for k in range(KILLS):  # inside a chunk, between chunks, in a rename, ...
            rc, _ = _run(args("killed"), kill_after=rng.uniform(0.0, 1.5))
            assert rc == -signal.SIGKILL, f"kill {k}: the run ended before it was killed"
        rc, err = _run(args("killed"))
        assert rc == 0, err[-3000:]
    finally:
        httpd.shutdown()
    for name in OUTPUTS:
        ref = (tmp_path / "reference" / "run" / name).read_text()
        got = (tmp_path / "killed" / "run" / name).read_text()
        assert got == ref, name
    assert _damaged(tmp_path / "killed") == []
    summary = json.loads((tmp_path / "killed" / "run" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["cache/items_from_cache"] > 0
