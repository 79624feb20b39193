"""Pairwise judge (SPEC §5): two models' answers to the same instructions, judged twice with the
positions swapped. Model 1 wins an item only if it wins both passes, loses only if it loses both;
anything else is a tie, and a pass whose verdict cannot be read makes the item `unparseable`
(reported on its own, never counted as a tie). `orders="one"` judges each pair once, model 1's
answer shown first, as the paper's code does (Evol_Instruct/judge.py; position bias is then not
cancelled)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.templates import fill, load_template
from engines.base import Chat, Generation

TEMPLATE_DIR = Path(__file__).parent / "templates"
_VERDICT = re.compile(r"verdict\s*[:：]\s*\**\s*(answer\s+)?(a|b|tie)\b", re.IGNORECASE)
OUTCOMES = ("win", "tie", "lose", "unparseable")
ORDERS = ("both", "one")


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "tie" from the last verdict line; None when there is none."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    v = found[-1][1].lower()
    return "tie" if v == "tie" else v.upper()


def combine(first: str | None, swapped: str | None, orders: str = "both") -> str:
    """`first`: model 1's answer shown as A; `swapped`: model 1's answer shown as B (unused with
    orders="one": the first verdict decides)."""
    if orders == "one":
        return {"A": "win", "B": "lose", "tie": "tie"}.get(first or "", "unparseable")
    if first is None or swapped is None:
        return "unparseable"
    if first == "A" and swapped == "B":
        return "win"
    if first == "B" and swapped == "A":
        return "lose"
    return "tie"


def judge_prompt(template: str, instruction: str, answer_a: str, answer_b: str) -> Chat:
    text = fill(template, instruction=instruction, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "user", "content": text}]


def judge_pairs(
    items: list[dict[str, Any]],
    generate: Callable[[list[tuple[str, Chat]]], dict[str, Generation]],
    template_override: str | None = None,
    orders: str = "both",
) -> tuple[list[dict], dict[str, Any]]:
    """`items`: {"id", "instruction", "answer_1", "answer_2"}. Returns per-item outcomes and counts
    (`win`/`tie`/`lose` are model 1's, `unparseable` apart, rates over the parseable items)."""
    if orders not in ORDERS:
        from core.errors import unknown_option

        raise unknown_option("eval.pairwise.orders", orders, ORDERS)
    template = load_template(TEMPLATE_DIR, "pairwise.txt", template_override)
    prompts = []
    for it in items:
        prompts.append(
            (
                f"{it['id']}-ab",
                judge_prompt(template, it["instruction"], it["answer_1"], it["answer_2"]),
            )
        )
        if orders == "both":
            prompts.append(
                (
                    f"{it['id']}-ba",
                    judge_prompt(template, it["instruction"], it["answer_2"], it["answer_1"]),
                )
            )
    gens = generate(prompts)
    rows = []
    for it in items:
        first = parse_verdict(gens[f"{it['id']}-ab"].text)
        swapped = parse_verdict(gens[f"{it['id']}-ba"].text) if orders == "both" else None
        rows.append(
            {
                "id": it["id"],
                "first": first,
                "swapped": swapped,
                "outcome": combine(first, swapped, orders),
            }
        )
    c = Counter(r["outcome"] for r in rows)
    parsed = sum(c[k] for k in ("win", "tie", "lose"))
    counts: dict[str, Any] = {k: c.get(k, 0) for k in OUTCOMES}
    counts.update(
        {f"{k}_rate": (c.get(k, 0) / parsed if parsed else None) for k in ("win", "tie", "lose")}
    )
    return rows, counts
