"""The leader and the followers of a multi-process job (one process per GPU for training).

Rank 0, the leader, runs the job: it generates, scores and filters, publishes the records to
train on, trains with the others, then evaluates and reports alone. Every other rank, a
follower, waits for those records, joins training and stops: it starts no engine, writes no
summary.json and evaluates nothing. The leader's state is one small file in the run directory,
`.ranks/leader.json`, written atomically and stamped with the launch (core.dist.launch_token), so a
follower never acts on an earlier launch's file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from core.dist import launch_token
from core.errors import DataError
from core.records import Record, hash_records, read_records, write_json_atomic, write_jsonl_atomic
from core.signals import check_interrupt

log = logging.getLogger(__name__)

STATE = Path(".ranks") / "leader.json"
RECORDS = Path(".ranks") / "train_records.jsonl"
FINAL = ("train", "done", "failed")


def announce(run_dir: Path, state: str, **extra: Any) -> None:
    """The leader's state: running | train (records published) | done | failed."""
    write_json_atomic(Path(run_dir) / STATE, {"token": launch_token(), "state": state, **extra})


def publish_records(run_dir: Path, records: list[Record]) -> None:
    """The records every rank trains on, then the `train` state that releases the followers."""
    write_jsonl_atomic(Path(run_dir) / RECORDS, records)
    announce(run_dir, "train", records=str(RECORDS), sha256=hash_records(records))


def read_state(run_dir: Path) -> dict | None:
    import json

    try:
        state = json.loads((Path(run_dir) / STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("token") == launch_token() else None


def wait_for_leader(run_dir: Path, poll_s: float = 1.0) -> dict:
    """Block until the leader publishes the training records, finishes or fails."""
    t0, said = time.monotonic(), 0.0
    while True:
        state = read_state(run_dir)
        if state and state.get("state") in FINAL:
            return state
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
