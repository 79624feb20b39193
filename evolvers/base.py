"""The scenario contract: what the runner asks of an evolution method, and the registry of them.

A scenario builds prompts and parses replies; the runner generates (cached, resumable), writes
every file and counts. To add one: a module with a `Scenario` subclass registered by
`@SCENARIOS.register()`, and `conf/scenario/<name>.yaml` with `name: <name>` (plus
`impl: package.module` when the module is not one of the built-ins), holding the fields of its
`Config` dataclass.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from core.config import typed_section
from core.records import Record, make_record
from core.registry import Registry
from engines.base import Chat, Generation

TEMPLATE_DIR = Path(__file__).parent / "templates"

# Echoed cue lines such as "#Rewritten Prompt#:", "**Rewritten prompt:**", "Created Prompt:".
_MARKER = re.compile(
    r"^\s*[#*_\s]*(?:the\s+)?(?:rewritten|created|new|given|final)\s+prompt[#*_\s]*:?[#*_\s]*",
    re.IGNORECASE,
)
_QUOTES = ('"', "'", "“", "”", "`")

# generate([(id, prompt)], max_tokens=None) -> {id: Generation}: cached, one engine call per chunk.
Generate = Callable[..., dict[str, Generation]]


@dataclass
class ScenarioConfig:
    """Every scenario's settings extend this: `name` picks the scenario, `impl` imports it.
    `keep_failed`: failed evolutions (SPEC §1's elimination: unchanged, a cue echoed, no final
    section, ...) go on to the later stages and the next round with their text, as the paper's
    reference code does; an empty one is still dropped. Counted as evolve › kept_failed."""

    name: str = "???"
    impl: str | None = None
    keep_failed: bool = False


@dataclass
class Verification:
    """What `Scenario.verify` returns: the records later stages see, the counts for
    metrics.json › verify, and files for the set's folder ({filename: rows})."""

    kept: list[Record]
    counts: dict[str, Any]
    files: dict[str, list[dict]] = field(default_factory=dict)


class Scenario:
    """Base class of every evolution scenario. Required: `name`, `Config`, `evolve_round`.
    The other hooks have defaults that mean "this scenario does not do that"."""

    name: ClassVar[str]
    Config: ClassVar[type[ScenarioConfig]] = ScenarioConfig
    # At most this many rounds (AutoIF is one pass); None: as many as `rounds` asks.
    max_rounds: ClassVar[int | None] = None

    # True: the scenario runs programs in the sandbox, and `build_scenario` passes the run's
    # sandbox service to its constructor as `sandbox=` (`sandbox.SandboxService`, or None: the
    # scenario makes its own where it needs one, and closes it). The service's owner closes it.
    uses_sandbox: ClassVar[bool] = False

    def __init__(self, cfg: Any):
        self.cfg = cfg  # an instance of `Config`

    def evolve_round(
        self,
        parents: list[Record],
        round_num: int,
        model_name: str,
        generate: Generate,
        greedy: Generate,
    ) -> list[Record]:
        """Round `round_num` (1-based): one record per evolution attempt, failures kept with
        `meta.parse_ok: false`. `generate` samples (generation.evolve); `greedy` decodes
        greedily (generation.greedy), for analysis calls a scenario may make."""
        raise NotImplementedError

    def greedy_role(self) -> tuple[Any, str]:
        """(role value, config key) of the model behind `greedy` in `evolve_round`: null is the
        evolver; a scenario whose analysis calls belong to one fixed model names its key."""
        return None, "model"

    def counts(self, records: list[Record]) -> dict[str, Any]:
        """The round's numbers for metrics.json › evolve (attempted, parsed, failed, ...)."""
        return evolve_counts(records)

    def artifacts(self) -> dict[str, str]:
        """Files for the run folder after a round ({filename: text}): prompts, logs."""
        return {}

    def respond_prompt(self, record: Record) -> Chat:
        """The prompt that asks for a record's response: by default the shared Responder's
        (`templates.respond` in the scenario's config overrides its template)."""
        if not hasattr(self, "_responder"):
            from evolvers.respond import Responder

            templates = getattr(self.cfg, "templates", None) or {}
            self._responder = Responder(templates.get("respond"))
        return self._responder.prompt(record)

    def first_prompts(self, seeds: list[Record]) -> list[tuple[str, Chat]] | None:
        """(id, prompt) of round 1's evolution prompts for `seeds`, without generating: what
        temperature calibration probes (pipeline.calibration). None: not supported."""
        return None

    def usable(self, record: Record) -> bool:
        """Whether a record goes on to the next round and the later stages: a successful
        evolution, or (`keep_failed`) a failed one that still has text."""
        if record["meta"].get("parse_ok", True):
            return True
        return bool(getattr(self.cfg, "keep_failed", False) and record["instruction"].strip())

    def evolution_prompt(self, record: Record) -> Chat | None:
        """The prompt that produced a record (top-1 confidence and reward probe it); None when
        the record was not evolved by a prompt."""
        return None

    def verify(self, name: str, records: list[Record], generate: Generate) -> Verification | None:
        """Check responses after the respond stage; None: nothing to check. `generate` samples
        the responder for scenarios that want more responses."""
        return None


SCENARIOS: Registry[type[Scenario]] = Registry(
    "scenario",
    builtins=("evolvers.evol_instruct", "evolvers.auto_evol_instruct", "evolvers.autoif"),
)


def build_scenario(scenario_cfg: Any, sandbox: Any = None) -> Scenario:
    """The scenario `scenario.name`, with its settings checked against its `Config`. `sandbox`
    (a `sandbox.SandboxService`, owned and closed by the caller) reaches the scenarios that
    run programs (`uses_sandbox`); the others ignore it."""
    cls = SCENARIOS.get(str(scenario_cfg.name), scenario_cfg.get("impl"))
    cfg = typed_section(cls.Config, scenario_cfg, "scenario")
    return cls(cfg, sandbox=sandbox) if cls.uses_sandbox else cls(cfg)


# -- helpers every scenario uses: lineage, cleaning, counts --------------------------------------
def child_id(parent: Record, round_num: int) -> str:
    return f"{parent['meta']['source_id']}-r{round_num}"


def clean_evolution(text: str) -> str:
    """Strip echoed cue markers and surrounding quotes; keep the instruction's own lines."""
    s = text.strip()
    while True:
        m = _MARKER.match(s)
        if not m:
            break
        s = s[m.end() :].strip()
    return strip_quotes(s)


def strip_quotes(s: str) -> str:
    """`s` without the quotes (or backticks) wrapped around the whole of it."""
    while len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
        s = s[1:-1].strip()
    return s


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def child_record(
    parent: Record,
    instruction: str,
    method: str,
    round_num: int,
    model: str,
    gen: Generation,
    rid: str,
    failure: str | None = None,
    **extra,
) -> Record:
    """An evolved record with its lineage; empty or unchanged instructions are failures, and a
    request that failed for good (engines.openai_engine) is an `engine_error`."""
    if gen.finish_reason == "error":
        failure, instruction = "engine_error", ""
        extra = {**extra, "engine_error": gen.error}
    if failure is None and not instruction:
        failure = "empty"
    elif failure is None and _norm(instruction) == _norm(parent["instruction"]):
        failure = "unchanged"
    meta = {
        "source_id": parent["meta"]["source_id"],
        "seed_index": parent["meta"]["seed_index"],
        "parent_id": parent["id"],
        "parent_instruction": parent["instruction"],
        "round": round_num,
        "method": method,
        "model": model,
        "raw": gen.text,
        "parse_ok": failure is None,
        "finish_reason": gen.finish_reason,
        "gen_tokens": gen.num_tokens,
        **extra,
    }
    if failure:
        meta["failure"] = failure
    return make_record(rid, instruction, parent.get("input", ""), "", **meta)


def evolve_counts(records: list[Record]) -> dict[str, Any]:
    ok = [r for r in records if r["meta"]["parse_ok"]]
    failures = Counter(r["meta"].get("failure") for r in records if not r["meta"]["parse_ok"])
    words = [len(r["instruction"].split()) for r in ok]
    return {
        "attempted": len(records),
        "parsed": len(ok),
        "failed": len(records) - len(ok),
        "failures": dict(failures),
        "truncated": sum(r["meta"].get("finish_reason") == "length" for r in records),
        "methods": dict(Counter(r["meta"]["method"] for r in records)),
        "instruction_words_mean": sum(words) / len(words) if words else None,
        "instruction_chars_mean": sum(len(r["instruction"]) for r in ok) / len(ok) if ok else None,
        "gen_tokens_mean": (
            sum(r["meta"]["gen_tokens"] for r in records) / len(records) if records else None
        ),
    }
