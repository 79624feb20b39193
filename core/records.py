"""The record shape every stage reads and writes, and its JSON Lines IO.

A record is LLaMA-Factory "alpaca" compatible at the top level:
    {"id", "instruction", "input", "output", "meta": {...}}
Readers stream. A malformed line is a `DataError` naming `file:line`. Writers are atomic: a file is
either the old one or the complete new one, never half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.errors import DataError

Record = dict[str, Any]

# mkstemp creates 0600 files; outputs get the usual mode for the user's umask instead.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK

SHAREGPT_USER = {"human", "user"}
SHAREGPT_ASSISTANT = {"gpt", "assistant", "model", "chatgpt", "bing", "bard"}


def make_record(
    id: str, instruction: str, input: str = "", output: str = "", **meta: Any
) -> Record:
    return {"id": id, "instruction": instruction, "input": input, "output": output, "meta": meta}


def query_text(record: Record) -> str:
    """Q of SPEC §Shared conventions: instruction, plus "\\n" + input when input is non-empty."""
    inp = record.get("input") or ""
    return record["instruction"] + ("\n" + inp if inp else "")


def _normalise(obj: Any, where: str, index: int) -> Record:
    """Accept alpaca rows and ShareGPT conversations; return one record."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    conv = obj.get("conversations", obj.get("messages"))
    if "instruction" not in obj and isinstance(conv, list):
        user = next((t for t in conv if _role(t) in SHAREGPT_USER), None)
        if user is None:
            raise DataError(f"{where}: ShareGPT conversation has no user turn")
        after = conv[conv.index(user) + 1 :]
        reply = next((t for t in after if _role(t) in SHAREGPT_ASSISTANT), None)
        rec = make_record(
            str(obj.get("id", index)),
            _text(user),
            "",
            _text(reply) if reply else "",
        )
        return rec
    if "instruction" not in obj:
        keys = ", ".join(sorted(obj)) or "none"
        raise DataError(
            f"{where}: record has no 'instruction' (or ShareGPT 'conversations'); keys: {keys}"
        )
    if not isinstance(obj["instruction"], str):
        raise DataError(f"{where}: 'instruction' must be a string")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    rec = make_record(
        str(obj.get("id", index)),
        obj["instruction"],
        obj.get("input") or "",
        obj.get("output") or "",
        **meta,
    )
    return rec


def _role(turn: Any) -> str:
    if not isinstance(turn, dict):
        return ""
    return str(turn.get("from", turn.get("role", ""))).lower()


def _text(turn: dict) -> str:
    return str(turn.get("value", turn.get("content", "")))


def read_records(path: str | Path) -> Iterator[Record]:
    """Stream records from JSONL (one object a line) or a JSON array (alpaca / ShareGPT)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("r", encoding="utf-8") as f:
        first = ""
        while True:
            ch = f.read(1)
            if not ch or not ch.isspace():
                first = ch
                break
    if first == "[":
        yield from _read_json_array(path)
        return
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            yield _normalise(obj, f"{path}:{lineno}", lineno - 1)


def _read_json_array(path: Path) -> Iterator[Record]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    # Line numbers for array items: find each item's start by decoding sequentially.
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    for i, _ in enumerate(data):
        while text[pos] in " \t\r\n,":
            pos += 1
        obj, end = decoder.raw_decode(text, pos)
        lineno = text.count("\n", 0, pos) + 1
        pos = end
        yield _normalise(obj, f"{path}:{lineno}", i)


def subsample(records: list[Record], size: int, seed: int) -> list[Record]:
    """Exactly `size` of `records` (at most all), chosen with `seed`, in their original order."""
    import random

    if size >= len(records):
        return list(records)
    chosen = set(random.Random(seed).sample(range(len(records)), size))
    return [r for i, r in enumerate(records) if i in chosen]


def dumps(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=False)


def write_jsonl_atomic(path: str | Path, records: Iterable[Record]) -> int:
    """Write all records to a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(dumps(rec) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AppendLog:
    """A JSONL file that grows by whole batches and survives SIGKILL.

    Each batch is one `write` of complete lines followed by fsync. On open, a trailing partial
    line (the process died inside a write) is cut off, so the file always holds whole records.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[Record] = self._recover()

    def _recover(self) -> list[Record]:
        if not self.path.exists():
            return []
        records, good_end = [], 0
        with self.path.open("rb") as f:
            data = f.read()
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_end += len(raw)
        if good_end != len(data):
            with self.path.open("r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        return records

    def append(self, batch: list[Record]) -> None:
        if not batch:
            return
        blob = "".join(dumps(r) + "\n" for r in batch).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.extend(batch)


def hash_records(records: Iterable[Record]) -> str:
    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
