"""Responses (SPEC §2): a greedy answer to each instruction, by the evolver or a fixed responder."""

from __future__ import annotations

from typing import Any

from core.records import Record
from core.templates import response_prompt
from engines.base import Chat, Generation


class Responder:
    """The response prompt (core.templates.response_prompt), with a scenario's template."""

    def __init__(self, template_override: str | None = None):
        self.template_override = template_override
        response_prompt({"instruction": "", "input": ""}, template_override)  # fails early

    def prompt(self, record: Record) -> Chat:
        return response_prompt(record, self.template_override)


def responded_record(record: Record, gen: Generation, responder: str) -> Record:
    out = {**record, "output": gen.text.strip(), "meta": dict(record["meta"])}
    out["meta"].update(
        responder=responder,
        response_finish_reason=gen.finish_reason,
        response_tokens=gen.num_tokens,
    )
    if gen.finish_reason == "error":  # the request failed for good; a rerun asks again
        out["meta"].update(response_failure="engine_error", engine_error=gen.error)
    elif not out["output"]:
        out["meta"]["response_failure"] = "empty"
    return out


def respond_counts(records: list[Record]) -> dict[str, Any]:
    ok = [r for r in records if r["output"]]
    words = [len(r["output"].split()) for r in ok]
    return {
        "attempted": len(records),
        "responded": len(ok),
        "empty": len(records) - len(ok),
        "engine_errors": sum(r["meta"].get("response_failure") == "engine_error" for r in records),
        "truncated": sum(r["meta"].get("response_finish_reason") == "length" for r in records),
        "response_words_mean": sum(words) / len(words) if words else None,
        "response_tokens_mean": (
            sum(r["meta"].get("response_tokens", 0) for r in records) / len(records)
            if records
            else None
        ),
    }
