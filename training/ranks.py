"""The leader and the followers of a multi-process job (one process per GPU for training).

Rank 0, the leader, runs the job: it generates, scores and filters, publishes the records to
train on, trains with the others, then evaluates and reports alone. Every other rank, a
follower, waits for those records, joins training and stops: it starts no engine, writes no
summary.json and evaluates nothing. The leader's state is one small file in the run directory,
`.ranks/leader.json`, written atomically and stamped with the launch (core.dist.launch_token), so a
follower never acts on an earlier launch's file. While the job runs, the leader also beats:
`.ranks/heartbeat.json` is rewritten every HEARTBEAT_S seconds by a daemon thread, so a follower
whose leader died (its thread dies with it) stops after `train.follower_timeout_min` instead of
holding its GPU until the wall-clock limit."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from core.dist import launch_token
from core.errors import DataError, UserFacingError
from core.records import Record, hash_records, read_records, write_json_atomic, write_jsonl_atomic
from core.signals import check_interrupt

log = logging.getLogger(__name__)

STATE = Path(".ranks") / "leader.json"
HEARTBEAT = Path(".ranks") / "heartbeat.json"
RECORDS = Path(".ranks") / "train_records.jsonl"
FINAL = ("train", "done", "failed")
HEARTBEAT_S = 30.0

_beats: dict[str, threading.Event] = {}  # run folder -> the event that stops its heartbeat


def announce(run_dir: Path, state: str, **extra: Any) -> None:
    """The leader's state: running | train (records published) | done | failed. `running`
    starts the heartbeat, `done` and `failed` stop it."""
    write_json_atomic(Path(run_dir) / STATE, {"token": launch_token(), "state": state, **extra})
    if state == "running":
        start_heartbeat(run_dir)
    elif state in ("done", "failed"):
        stop_heartbeat(run_dir)


def beat(run_dir: Path) -> None:
    write_json_atomic(Path(run_dir) / HEARTBEAT, {"token": launch_token(), "time": time.time()})


def start_heartbeat(run_dir: Path, every_s: float | None = None) -> None:
    key = str(Path(run_dir).resolve())
    if key in _beats:
        return
    stop = _beats[key] = threading.Event()
    period = HEARTBEAT_S if every_s is None else every_s

    def loop() -> None:
        while not stop.is_set():
            try:
                beat(run_dir)
            except OSError as e:  # a full or flaky disk: the next beat tries again
                log.warning("heartbeat: %s", e)
            stop.wait(period)

    beat(run_dir)
    threading.Thread(target=loop, name="leader-heartbeat", daemon=True).start()


def stop_heartbeat(run_dir: Path) -> None:
    stop = _beats.pop(str(Path(run_dir).resolve()), None)
    if stop is not None:
        stop.set()


def last_beat(run_dir: Path) -> float | None:
    """When this launch's leader last beat (its clock), None before its first beat."""
    try:
        data = json.loads((Path(run_dir) / HEARTBEAT).read_text())
    except (OSError, ValueError):
        return None
    return float(data["time"]) if data.get("token") == launch_token() else None


def publish_records(run_dir: Path, records: list[Record]) -> None:
    """The records every rank trains on, then the `train` state that releases the followers."""
    write_jsonl_atomic(Path(run_dir) / RECORDS, records)
    announce(run_dir, "train", records=str(RECORDS), sha256=hash_records(records))


def read_state(run_dir: Path) -> dict | None:
    try:
        state = json.loads((Path(run_dir) / STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("token") == launch_token() else None


def wait_for_leader(run_dir: Path, timeout_min: float = 30.0, poll_s: float = 1.0) -> dict:
    """Block until the leader publishes the training records, finishes or fails. A leader that
    has not beaten for `timeout_min` minutes (or never did, that long after this rank started)
    is taken for dead: a UserFacingError, so this rank frees its GPU."""
    t0, said, start = time.monotonic(), 0.0, time.time()
    while True:
        state = read_state(run_dir)
        if state and state.get("state") in FINAL:
            return state
        silent = time.time() - (last_beat(run_dir) or start)
        if silent > timeout_min * 60:
            raise UserFacingError(
                f"rank 0 has not been heard from for {silent / 60:.1f} min "
                f"({Path(run_dir) / HEARTBEAT}; train.follower_timeout_min={timeout_min:g}): "
                "it died or hangs; stopping this rank"
            )
        waited = time.monotonic() - t0
        if waited - said >= 60:
            said = waited
            log.info("waiting for rank 0 (%s) for %.0f s", (state or {}).get("state"), waited)
        check_interrupt()
        time.sleep(poll_s)


def train_records(run_dir: Path, state: dict) -> list[Record]:
    records = list(read_records(Path(run_dir) / state["records"]))
    if hash_records(records) != state["sha256"]:
        raise DataError(f"{Path(run_dir) / state['records']}: changed after rank 0 published it")
    return records
