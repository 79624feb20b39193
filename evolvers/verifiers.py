"""Model-written verifiers (SPEC §3.2-3.3, 3.5): parse replies into a `func` and test cases,
run functions on texts in the sandbox, and decide which functions and cases survive.

Nothing model-written runs in this process: `compile()` only parses, execution happens in
the sandbox (`sandbox.SandboxService`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from core.records import Record
from sandbox import SandboxService, SandboxSettings, TaskResult, Usage

# Reply failures, in the order a reply is checked (SPEC §3.3).
NO_JSON, BAD_JSON, MISSING_FUNC, NO_EVALUATE, COMPILE_ERROR = (
    "no json",
    "bad json",
    "missing func",
    "no evaluate",
    "compile error",
)
_FENCED_JSON = re.compile(r"```[ \t]*json[ \t]*\n(.*?)```", re.IGNORECASE | re.DOTALL)
_EVALUATE = re.compile(r"^\s*def\s+evaluate\s*\(", re.MULTILINE)
# Code lines that download or reach the network are dropped (upstream AutoIF does the same).
_NETWORK = re.compile(
    r"\b(?:requests|urllib\d?|urlopen|httpx|aiohttp|socket|wget|curl|download\w*)\b"
    r"|\bhttp\.|\b(?:import|from)\s+http\b",
    re.IGNORECASE,
)


# -- parsing ------------------------------------------------------------------------------------
@dataclass
class VerifierReply:
    """One parsed reply: `func` is None when `failure` is set; cases are (input, expected)."""

    func: str | None = None
    cases: list[tuple[str, bool]] = field(default_factory=list)
    failure: str | None = None
    bad_cases: int = 0
    network_lines: int = 0


def find_json_object(text: str) -> tuple[dict | None, str | None]:
    """The verifier object of a reply: the first fenced ```json block that decodes to an object,
    else the first object decoded from a "{" (one with "func" preferred). An object found after
    a "{" that did not decode is a fragment of a broken one (a truncated reply's cases), not an
    answer. Returns (object, None) or (None, failure)."""
    for block in _FENCED_JSON.findall(text):
        try:
            obj = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj, None
    decoder = json.JSONDecoder()
    done, broken, first = 0, False, None
    for m in re.finditer(r"\{", text):
        if m.start() < done:
            continue  # inside an object already decoded
        try:
            obj, done = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            broken = True
            continue
        if isinstance(obj, dict) and "func" in obj:
            return obj, None
        if isinstance(obj, dict) and first is None and not broken:
            first = obj
    if first is not None:
        return first, None
    return None, (BAD_JSON if "{" in text else NO_JSON)


def as_bool(value: Any, strings: bool = True) -> bool | None:
    """JSON booleans, and with `strings` "true"/"false" strings (any case) as booleans; anything
    else None. Upstream AutoIF compares a case's output to the function's bool as it is, so a
    string never agrees and its case is lost (`strings=False`)."""
    if isinstance(value, bool):
        return value
    if strings and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def drop_network_lines(code: str) -> tuple[str, int]:
    kept = [line for line in code.splitlines() if not _NETWORK.search(line)]
    return "\n".join(kept) + "\n", len(code.splitlines()) - len(kept)


def compile_error(code: str) -> str | None:
    """compile() only parses and compiles; nothing runs in this process."""
    try:
        compile(code, "<verifier>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return f"{type(e).__name__}: {str(e)[:160]}"
    return None


def parse_verifier(text: str, string_booleans: bool = True) -> VerifierReply:
    """Parse one verifier reply (SPEC §3.3). Cases are read even when the function fails; a case
    whose output is not a boolean (`string_booleans=False`: a "true"/"false" string either) is a
    bad case."""
    obj, failure = find_json_object(text)
    if obj is None:
        return VerifierReply(failure=failure)
    out = VerifierReply()
    raw_cases = obj.get("cases")
    for case in raw_cases if isinstance(raw_cases, list) else []:
        expected = as_bool(case.get("output"), string_booleans) if isinstance(case, dict) else None
        inp = case.get("input") if isinstance(case, dict) else None
        if isinstance(inp, str) and expected is not None:
            out.cases.append((inp, expected))
        else:
            out.bad_cases += 1
    if raw_cases is not None and not isinstance(raw_cases, list):
        out.bad_cases += 1
    func = obj.get("func")
    if not isinstance(func, str) or not func.strip():
        out.failure = MISSING_FUNC
        return out
    code, out.network_lines = drop_network_lines(func)
    if not _EVALUATE.search(code):
        out.failure = NO_EVALUATE
    elif compile_error(code):
        out.failure = COMPILE_ERROR
    else:
        out.func = code
    return out


def func_key(code: str) -> str:
    """The dedupe key of a function: its non-blank lines without trailing spaces."""
    return "\n".join(line.rstrip() for line in code.strip().splitlines() if line.strip())


# -- running in the sandbox ---------------------------------------------------------------------
def agreement(result: TaskResult, expected: list[bool]) -> list[bool]:
    """Per case: the function ran, returned a bool, and that bool is the expected output."""
    out = []
    for k, want in enumerate(expected):
        r = result.results[k] if result.ok and k < len(result.results) else None
        value = r.get("value") if r and r.get("ok") else None
        out.append(isinstance(value, bool) and value == want)
    return out


def select_verifiers(
    agree: list[list[bool]], min_accuracy: float
) -> tuple[list[int], list[int], list[float | None]]:
    """(kept function indices, kept case indices, accuracy of each function on kept cases).
    `agree[f][c]`: function f agrees with case c."""
    n_cases = len(agree[0]) if agree else 0
    kept_cases = [c for c in range(n_cases) if any(a[c] for a in agree)]
    acc: list[float | None] = [
        sum(a[c] for c in kept_cases) / len(kept_cases) if kept_cases else None for a in agree
    ]
    kept_funcs = [f for f, x in enumerate(acc) if x is not None and x >= min_accuracy]
    return kept_funcs, kept_cases, acc


def run_programs(
    items: list[tuple[str, str, list[list[Any]]]],
    sandbox_cfg: Any,
    desc: str,
    sandbox: SandboxService | None = None,
    counts: dict | None = None,
) -> list[TaskResult]:
    """Run (code, "evaluate", inputs) programs in the sandbox: `batch_size` per request to a
    worker, `workers` workers side by side (`scenario.sandbox`). `sandbox` is the run's
    service (its cache, when it has one, replays the verdicts of a resumed run, a timeout
    included); None: an uncached one for this call only, closed before it returns. `counts`
    gets the isolation level and memory limit the programs ran at (nothing when every result
    came from the cache)."""
    if not items:
        return []
    usage = Usage()
    settings = SandboxSettings.of(sandbox_cfg)
    if sandbox is None:
        with SandboxService() as own:
            results = own.run_batch(items, settings, desc, usage)
    else:
        results = sandbox.run_batch(items, settings, desc, usage)
    if counts is not None:
        counts.update(usage.counts())
    return results


def run_verifiers(
    records: list[Record],
    texts: dict[str, list[str]],
    sandbox_cfg: Any,
    sandbox: SandboxService | None = None,
    counts: dict | None = None,
) -> dict[str, list[dict[str, bool]]]:
    """accepted[record id][k][function id]: that function returned True on the record's k-th
    text. One sandbox program per function, over every text of every record it checks."""
    groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for r in records:
        for f in r["meta"]["verifiers"]:
            members = groups.setdefault((f["id"], f["func"]), [])
            members += [(r["id"], k) for k in range(len(texts[r["id"]]))]
    items = [
        (func, "evaluate", [[texts[rid][k]] for rid, k in members])
        for (_, func), members in groups.items()
    ]
    results = run_programs(items, sandbox_cfg, "autoif verify", sandbox, counts)
    accepted: dict[str, list[dict[str, bool]]] = {
        r["id"]: [{} for _ in texts[r["id"]]] for r in records
    }
    for ((fid, _), members), res in zip(groups.items(), results):
        for (rid, k), ok in zip(members, agreement(res, [True] * len(members))):
            accepted[rid][k][fid] = ok
    return accepted
