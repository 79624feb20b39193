"""LLM judges (SPEC §5): a 0-100 complexity score and a five-level difficulty label, greedy.
Unparseable replies are counted failures (null scores), never crashes."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.records import Record
from core.templates import fill, load_template
from engines.base import Chat
from metrics.base import METRICS, Field, Metric, MetricConfig, Stat, mean

TEMPLATE_DIR = Path(__file__).parent / "templates"

LABELS = ("very easy", "easy", "medium", "hard", "very hard")
_LABEL_RE = re.compile(r"very\s+easy|very\s+hard|easy|medium|hard", re.IGNORECASE)
_MARKER_RE = re.compile(r"difficulty\s*:", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)(?!\d|\.\d)")


def parse_complexity(text: str, finish_reason: str = "stop") -> float | None:
    """The first number in [0, 100]."""
    for m in _NUMBER_RE.finditer(text):
        v = float(m.group(1))
        if 0 <= v <= 100:
            return v
    return None


def parse_difficulty(text: str, finish_reason: str = "stop") -> str | None:
    """The level the judge gave. The template asks for the level alone (the paper's structure),
    so a reply that opens with a label is that label; a reply that reasons first is read at its
    last "Difficulty:" marker, else at its last label mentioned, case-insensitive ("very hard" is
    not read as "hard"). A reply cut off by the token cap that neither opens with a label nor
    has a marker is a failure: its last label is only part of the reasoning."""
    marker = _MARKER_RE.split(text)
    if len(marker) > 1 and (found := _LABEL_RE.findall(marker[-1])):
        return " ".join(found[0].lower().split())
    if opening := _LABEL_RE.match(text.strip().lstrip("*'\"`#:- \n")):
        return " ".join(opening.group(0).lower().split())
    if finish_reason == "length":
        return None
    found = _LABEL_RE.findall(text)
    return " ".join(found[-1].lower().split()) if found else None


def judge_prompt(record: Record, template: str) -> Chat:
    """The record's instruction in a judge template (one user message). The instruction only, not
    its input: the paper's code judges `item["instruction"]` (SPEC §5 says Q; see docs/paper.md)."""
    return [{"role": "user", "content": fill(template, query=record["instruction"])}]


def load_judge_templates(templates: dict[str, str | None]) -> dict[str, str]:
    return {
        kind: load_template(TEMPLATE_DIR, f"judge/{kind}.txt", templates.get(kind))
        for kind in ("complexity", "difficulty")
    }


def difficulty_level(label: str | None) -> int | None:
    """1 (very easy) ... 5 (very hard); None for a label that could not be read."""
    return LABELS.index(label) + 1 if label in LABELS else None


def label_counts(labels: list[str | None]) -> dict[str, Any]:
    c = Counter(labels)
    parsed = sum(v for k, v in c.items() if k is not None)
    return {
        "counts": {lab: c.get(lab, 0) for lab in LABELS},
        "percent": {lab: (100.0 * c.get(lab, 0) / parsed if parsed else None) for lab in LABELS},
        "failed": c.get(None, 0),
    }


@dataclass
class JudgeConfig(MetricConfig):
    model: Any = None  # null: the run's model; a conf/model name; a model mapping
    complexity: bool = True  # 0-100 score
    difficulty: bool = True  # very easy ... very hard
    templates: dict[str, str | None] = field(
        default_factory=lambda: {"complexity": None, "difficulty": None}
    )
    # Tokens each judge may generate: null = generation.greedy.max_tokens (the paper's 2048: a
    # judge that answers as asked stops after a few tokens); a number caps it (the demo's).
    max_tokens: dict[str, int | None] = field(
        default_factory=lambda: {"complexity": None, "difficulty": None}
    )


@METRICS.register()
class JudgeMetric(Metric):
    """Complexity (0-100) and difficulty (five labels) from an LLM judge, greedy; the cache key is
    the judge model and the exact prompts and decoding."""

    name = "judge"
    role_field = "model"
    Config = JudgeConfig
    order = 10
    fields = (
        Field("complexity", higher_is_better=True, label="complexity (0-100)"),
        Field("difficulty"),
    )
    stats = (
        Stat(
            "complexity_mean",
            higher_is_better=True,
            headline=True,
            label="complexity (0-100)",
            per_round=True,
            scaling=True,
            of="complexity",
        ),
        Stat("complexity_failed", higher_is_better=False),
        Stat("difficulty", label="difficulty", labels=LABELS),
        # The labels as levels 1 (very easy) to 5 (very hard): a mean with a CI, testable.
        Stat(
            "difficulty_level_mean",
            higher_is_better=True,
            label="difficulty level (1-5)",
            of="difficulty",
            value=difficulty_level,
        ),
        Stat("difficulty/failed", higher_is_better=False),
    )

    def engine_model(self) -> Any:
        return self.ctx.role(self.cfg.model, "metrics.judge.model")

    def score(self, set_name: str, records: list[Record]) -> dict[str, dict[str, Any]]:
        cfg, run_cfg = self.cfg, self.ctx.cfg
        model_cfg = self.engine_model()
        templates = load_judge_templates(cfg.templates)
        rows: dict[str, dict[str, Any]] = {r["id"]: {} for r in records}
        for kind, parse in (("complexity", parse_complexity), ("difficulty", parse_difficulty)):
            if not getattr(cfg, kind):
                continue
            gen = self.ctx.generator(
                f"judge_{kind}", model_cfg, run_cfg.generation.greedy, f"{set_name} {kind}"
            )
            # A judge answers a number or a short label; a cap (the demo's) bounds a model that
            # rambles instead.
            cap = int(run_cfg.generation.greedy.max_tokens)
            if cfg.max_tokens.get(kind) is not None:
                cap = min(int(cfg.max_tokens[kind]), cap)
            gens = gen(
                [(r["id"], judge_prompt(r, templates[kind])) for r in records], max_tokens=cap
            )
            for r in records:
                g = gens[r["id"]]
                rows[r["id"]][kind] = parse(g.text, g.finish_reason)
        return rows

    def summarize(self, set_name, records, rows) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.ctx.role(self.cfg.model, "metrics.judge.model").name}
        if self.cfg.complexity:
            values = [row.get("complexity") for row in rows.values()]
            out["complexity_mean"] = mean(values)
            out["complexity_failed"] = sum(v is None for v in values)
        if self.cfg.difficulty:
            labels = [row.get("difficulty") for row in rows.values()]
            out["difficulty"] = label_counts(labels)
            out["difficulty_level_mean"] = mean([difficulty_level(x) for x in labels])
        return out
