"""The engine interface: text generation behind one call, whatever serves the model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Chat = list[dict[str, str]]  # [{"role": "user", "content": "..."}]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 2048
    # >0: return the top-1 log-probability at each of the first `top1_logprobs` generated positions.
    top1_logprobs: int = 0
    # >0 (with top1_logprobs): also the `top_logprobs` largest log-probabilities at those positions
    # (raw, before temperature): what temperature calibration reads (evolvers.calibration).
    top_logprobs: int = 0
    seed: int | None = None
    # Stop sequences: generation ends before the first of them (it is not part of the text).
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Generation:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" | "length" | engine-specific
    top1_logprobs: list[float] | None = None
    prompt_tokens: int = 0
    top_logprobs: list[list[float]] | None = None  # per position, largest first
    vocab_size: int = 0  # the model's vocabulary (set with top_logprobs; 0: not known)
    error: str | None = None  # finish_reason "error": why the request failed (not cached)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop sequence, and whether one was found."""
    cuts = [i for s in stop if s and (i := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def sampling_key(p: Sampling) -> dict:
    """The fields that decide a generation, for cache keys (unset newer fields are left out, so
    keys stay as before)."""
    d = dataclasses.asdict(p)
    if not d["top_logprobs"]:
        del d["top_logprobs"]
    if not d["stop"]:
        del d["stop"]
    else:
        d["stop"] = list(d["stop"])
    return d


def per_prompt(params: Sampling | list[Sampling], n: int) -> list[Sampling]:
    """One Sampling per prompt (a list lets each prompt carry its own seed)."""
    if isinstance(params, Sampling):
        return [params] * n
    if len(params) != n:
        raise ValueError(f"{len(params)} sampling params for {n} prompts")
    return list(params)


@runtime_checkable
class Engine(Protocol):
    name: str

    def generate(
        self, prompts: list[Chat | str], params: Sampling | list[Sampling]
    ) -> list[Generation]: ...

    def close(self) -> None: ...


@dataclass
class EngineStats:
    """What an engine has been asked to do; the pipeline reports it (a cache hit shows zero)."""

    calls: int = 0
    prompts: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0  # starting engines (weights read, vLLM workers up)
    by_stage: dict[str, int] = field(default_factory=dict)
    failed: int = 0  # requests that failed for good (finish_reason "error"), not cached
