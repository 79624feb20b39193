"""LLM judges (SPEC §5): a 0-100 complexity score and a five-level difficulty label, greedy.
Unparseable replies are counted failures (null scores), never crashes."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from engines.base import Chat
from pipeline.records import Record, query_text
from pipeline.templates import fill, load_template

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
    """The label after the last "Difficulty:" the template asks to end with, else the last label
    mentioned, case-insensitive ("very hard" is not read as "hard"). A reply cut off by the token
    cap before its "Difficulty:" line is a failure: its last label is only part of the reasoning."""
    marker = _MARKER_RE.split(text)
    if len(marker) > 1 and (found := _LABEL_RE.findall(marker[-1])):
        return " ".join(found[0].lower().split())
    if finish_reason == "length":
        return None
    found = _LABEL_RE.findall(text)
    return " ".join(found[-1].lower().split()) if found else None


def judge_prompt(record: Record, template: str) -> Chat:
    """The record's query in a judge template (one user message, SPEC's shared convention)."""
    return [{"role": "user", "content": fill(template, query=query_text(record))}]


def load_judge_templates(cfg: Any) -> dict[str, str]:
    t = cfg.get("templates") or {}
    return {
        "complexity": load_template(TEMPLATE_DIR, "judge/complexity.txt", t.get("complexity")),
        "difficulty": load_template(TEMPLATE_DIR, "judge/difficulty.txt", t.get("difficulty")),
    }


def label_counts(labels: list[str | None]) -> dict[str, Any]:
    c = Counter(labels)
    parsed = sum(v for k, v in c.items() if k is not None)
    return {
        "counts": {lab: c.get(lab, 0) for lab in LABELS},
        "percent": {lab: (100.0 * c.get(lab, 0) / parsed if parsed else None) for lab in LABELS},
        "failed": c.get(None, 0),
    }
