"""Evol-Instruct (SPEC §1): rewrite each instruction with one method per item and round.

The method for item i (its seed's index) in round r (0-based) is M[(i + r) mod K], so an SLM run and
an LLM run evolve the same seeds with the same methods.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.errors import unknown_option
from core.records import Record, make_record
from core.templates import fill, load_template, load_yaml
from engines.base import Chat, Generation
from evolvers.base import SCENARIOS, TEMPLATE_DIR, Generate, Scenario, ScenarioConfig

BREADTH = "breadth"

# Echoed cue lines such as "#Rewritten Prompt#:", "**Rewritten prompt:**", "Created Prompt:".
_MARKER = re.compile(
    r"^\s*[#*_\s]*(?:the\s+)?(?:rewritten|created|new|given|final)\s+prompt[#*_\s]*:?[#*_\s]*",
    re.IGNORECASE,
)
_QUOTES = ('"', "'", "“", "”", "`")


@dataclass
class EvolInstructConfig(ScenarioConfig):
    methods: list[str] = field(
        default_factory=lambda: ["add_constraints", "deepen", "concretize", "reasoning"]
    )
    use_breadth: bool = False
    # null: the bundled template; a path: your own (same slots)
    templates: dict[str, str | None] = field(
        default_factory=lambda: {"depth": None, "breadth": None, "respond": None}
    )


def method_names(cfg: EvolInstructConfig) -> list[str]:
    methods = list(cfg.methods)
    if cfg.use_breadth:
        methods.append(BREADTH)
    return methods


def method_for(seed_index: int, round_idx: int, methods: list[str]) -> str:
    """`round_idx` is 0-based here (round 1 of the run is r = 0)."""
    return methods[(seed_index + round_idx) % len(methods)]


@SCENARIOS.register()
class EvolInstruct(Scenario):
    """Builds evolution prompts and parses evolutions; the pipeline does the generating."""

    name = "evol_instruct"
    Config = EvolInstructConfig

    def __init__(self, cfg: EvolInstructConfig):
        super().__init__(cfg)
        templates = cfg.templates
        self.methods = method_names(cfg)
        self.method_text = load_yaml(
            TEMPLATE_DIR, "evol_instruct/methods.yaml", templates.get("methods")
        )
        for m in self.methods:
            if m != BREADTH and m not in self.method_text:
                raise unknown_option("Evol-Instruct method", m, [*self.method_text, BREADTH])
        self.depth = load_template(TEMPLATE_DIR, "evol_instruct/depth.txt", templates.get("depth"))
        self.breadth = load_template(
            TEMPLATE_DIR, "evol_instruct/breadth.txt", templates.get("breadth")
        )

    def prompt(self, parent: Record, method: str) -> Chat:
        if method == BREADTH:
            text = fill(self.breadth, instruction=parent["instruction"])
        else:
            text = fill(
                self.depth, method=self.method_text[method], instruction=parent["instruction"]
            )
        return [{"role": "user", "content": text}]

    def evolution_prompt(self, record: Record) -> Chat:
        """The prompt that produced an evolved record (for confidence and reward probes)."""
        meta = record["meta"]
        return self.prompt({"instruction": meta["parent_instruction"]}, meta["method"])

    def plan(self, parents: list[Record], round_num: int) -> list[tuple[Record, str, Chat]]:
        """(parent, method, prompt) for every parent; `round_num` is 1-based."""
        out = []
        for p in parents:
            method = method_for(p["meta"]["seed_index"], round_num - 1, self.methods)
            out.append((p, method, self.prompt(p, method)))
        return out

    def evolve_round(
        self,
        parents: list[Record],
        round_num: int,
        model_name: str,
        generate: Generate,
        greedy: Generate,
    ) -> list[Record]:
        """One round: every parent evolved once; failures kept as `parse_ok: false` records."""
        plan = self.plan(parents, round_num)
        ids = [child_id(p, round_num) for p, _, _ in plan]
        gens = generate([(i, prompt) for i, (_, _, prompt) in zip(ids, plan)])
        return [
            evolved_record(p, method, round_num, model_name, gens[i], i)
            for i, (p, method, _) in zip(ids, plan)
        ]


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


def evolved_record(
    parent: Record, method: str, round_num: int, model: str, gen: Generation, rid: str
) -> Record:
    instruction = clean_evolution(gen.text)
    return child_record(parent, instruction, method, round_num, model, gen, rid)


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
    """An evolved record with its lineage; empty or unchanged instructions are failures."""
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
