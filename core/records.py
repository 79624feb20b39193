"""The record shape every stage reads and writes, and its JSON Lines IO.

A record is LLaMA-Factory "alpaca" compatible at the top level:
    {"id", "instruction", "input", "output", "meta": {...}}
Readers stream. A malformed line is a `DataError` naming `file:line`. Writers are atomic: a file is
either the old one or the complete new one, never half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from core.errors import DataError

Record = dict[str, Any]
log = logging.getLogger(__name__)

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
    for key in ("instruction", "input", "output"):
        value = obj.get(key)
        if key == "instruction" or value is not None:
            if not isinstance(value, str):
                got = type(value).__name__
                raise DataError(f"{where}: '{key}' must be a string (or null), got {got}")
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
    with path.open("rb") as f:
        first = b""
        while True:
            ch = f.read(1)
            if not ch or not ch.isspace():
                first = ch
                break
    if first == b"[":
        yield from _read_json_array(path)
        return
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            yield _normalise(obj, f"{path}:{lineno}", lineno - 1)


def _read_json_array(path: Path) -> Iterator[Record]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}:1: expected a JSON array of records")
    # Items come from the one C-speed parse; an item's line is found only for an error message.
    for i, obj in enumerate(data):
        try:
            yield _normalise(obj, "\0", i)
        except DataError as e:
            where = f"{path}:{_item_line(text, i)}"
            raise DataError(str(e).replace("\0", where, 1)) from None


def _item_line(text: str, index: int) -> int:
    """The line item `index` of a JSON array starts on: items decoded in turn, newlines counted
    only since the previous item (linear in the file's size)."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    counted, lineno = 0, 1
    for i in range(index + 1):
        while text[pos] in " \t\r\n,":
            pos += 1
        lineno += text.count("\n", counted, pos)
        counted = pos
        if i == index:
            break
        _, pos = decoder.raw_decode(text, pos)
    return lineno


def _read_text(path: Path) -> str:
    """The file as UTF-8; bytes that are not UTF-8 are a DataError naming the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None


def subsample(records: list[Record], size: int, seed: int) -> list[Record]:
    """Exactly `size` of `records` (at most all), chosen with `seed`, in their original order."""
    import random

    if size >= len(records):
        return list(records)
    chosen = set(random.Random(seed).sample(range(len(records)), size))
    return [r for i, r in enumerate(records) if i in chosen]


def dumps(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=False)


@contextlib.contextmanager
def _atomic(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """A file opened beside `path`; on a clean exit fsync'd and renamed over `path`, so `path` is
    either the old file or the complete new one. On any exception the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: str | Path, records: Iterable[Record]) -> int:
    """Write all records to a temp file beside `path`, fsync, then rename over it."""
    n = 0
    with _atomic(path) as f:
        for rec in records:
            f.write(dumps(rec) + "\n")
            n += 1
    return n


def write_bytes_atomic(path: str | Path, blob: bytes) -> None:
    with _atomic(path, "wb") as f:
        f.write(blob)


def write_text_atomic(path: str | Path, text: str) -> None:
    with _atomic(path) as f:
        f.write(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    with _atomic(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")


class AppendLog:
    """A JSONL file that grows by whole batches and survives SIGKILL.

    Each batch is one `write` of complete lines followed by fsync. On open, a trailing partial
    line (the process died inside a write) is cut off, so the file always holds whole records.
    A damaged line anywhere else (not UTF-8, NUL bytes, not JSON, or failing `valid`) is moved to
    `<file>.corrupt` with its line number and a warning naming both files; every other line is
    kept, so only what was lost is computed again.
    """

    def __init__(self, path: str | Path, valid: Callable[[Any], bool] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.valid = valid
        self.records: list[Record] = self._recover()

    def _recover(self) -> list[Record]:
        if not self.path.exists():
            return []
        records, kept, bad = [], [], []
        with self.path.open("rb") as f:
            data = f.read()
        lines = data.splitlines(keepends=True)
        for lineno, raw in enumerate(lines, start=1):
            if not raw.endswith(b"\n"):  # an interrupted last write: not an error
                break
            try:
                obj = json.loads(raw.decode("utf-8"))
                ok = self.valid is None or self.valid(obj)
            except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                ok = False
            if ok:
                records.append(obj)
                kept.append(raw)
            else:
                bad.append((lineno, raw))
        if bad:
            corrupt = self.path.with_name(self.path.name + ".corrupt")
            with corrupt.open("ab") as f:
                for lineno, raw in bad:
                    f.write(f"# {self.path.name}:{lineno}\n".encode() + raw)
            log.warning(
                "%s: %d damaged line(s) (%s) moved to %s; they are computed again",
                self.path,
                len(bad),
                ", ".join(str(n) for n, _ in bad[:10]),
                corrupt,
            )
        if bad or sum(map(len, kept)) != len(data):
            write_bytes_atomic(self.path, b"".join(kept))
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


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file the framework wrote (a run's outputs); a line that is
    not a JSON object is a `DataError` naming `file:line`."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield obj


def hash_records(records: Iterable[Record]) -> str:
    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
