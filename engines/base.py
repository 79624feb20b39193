"""The engine interface: text generation behind one call, whatever serves the model."""

from __future__ import annotations

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
    seed: int | None = None

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
    by_stage: dict[str, int] = field(default_factory=dict)
