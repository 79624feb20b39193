"""A deterministic stand-in engine for fast tests of the pipeline's bookkeeping (the same paths
are also tested against the real bundled model in the slow tests)."""

from __future__ import annotations

import engines.pool as engine_pool
from engines.base import Chat, Generation, Sampling, per_prompt


def use_engine(monkeypatch, engine):
    """Every engine the pipeline loads during the test is `engine`; `engine.loads` counts how
    often the pipeline loaded one."""
    engine.loads = 0

    def build(*args, **kwargs):
        engine.loads += 1
        return engine

    monkeypatch.setattr(engine_pool, "build_engine", build)
    return engine


class FakeIFDScorer:
    """Stands in for metrics.ifd.IFDScorer (a transformers model): constant losses, counted
    loads."""

    loads = 0

    def __init__(self, *args, **kwargs):
        FakeIFDScorer.loads += 1

    def score(self, records):
        return [
            {"loss_a_given_q": 1.0, "loss_q": 2.0, "loss_a": 2.0, "ifd": 0.5, "ic_ifd": 0.25}
            | {"q_tokens": 3, "a_tokens": 3, "truncated": False, "boundary_fallback": False}
            for _ in records
        ]

    def close(self) -> None:
        pass


class FakeEngine:
    """Rewrites by appending a phrase; answers with a fixed sentence.

    `fail_when` maps a substring of the prompt to a reply, to provoke parse failures.
    """

    name = "fake"

    def __init__(self, fail_when: dict[str, str] | None = None):
        self.fail_when = fail_when or {}
        self.prompts_seen: list[str] = []
        self.params_seen: list[Sampling] = []  # one per prompt, in the same order

    def generate(self, prompts: list[Chat | str], params: Sampling | list[Sampling]):
        plist = per_prompt(params, len(prompts))
        out = []
        for prompt, p in zip(prompts, plist):
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            self.prompts_seen.append(text)
            self.params_seen.append(p)
            reply = self._reply(text)
            k = min(p.top1_logprobs, 3)
            out.append(Generation(reply, len(reply.split()), "stop", [-0.1] * k or None))
        return out

    def _reply(self, text: str) -> str:
        for needle, reply in self.fail_when.items():
            if needle in text:
                return reply
        if "Given prompt:" in text:
            given = text.split("Given prompt:\n", 1)[1].split("\n\n", 1)[0]
            return f"#Rewritten Prompt#: {given} Explain each step in detail."
        return "A complete and accurate answer."

    def close(self) -> None:
        pass
