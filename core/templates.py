"""Prompt templates are data files beside the package that uses them (evolvers/templates/,
metrics/templates/), loaded by name and overridable by a path in the config. Leaf module."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from core.errors import ConfigError


@lru_cache(maxsize=64)
def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").rstrip() + "\n"


def load_template(base: Path, name: str, override: str | None = None) -> str:
    """`name` is relative to `base` (e.g. "evol_instruct/depth.txt"); `override` is a path."""
    path = Path(override).expanduser() if override else Path(base) / name
    if not path.is_file():
        raise ConfigError(f"prompt template {path} not found (template {name!r})")
    return _read(str(path))


def load_yaml(base: Path, name: str, override: str | None = None) -> dict:
    return yaml.safe_load(load_template(base, name, override)) or {}


RESPOND_TEMPLATE = Path(__file__).parent / "data" / "respond.txt"


def response_prompt(record: dict, template_override: str | None = None) -> list[dict]:
    """The response prompt (SPEC §2, the paper's Figure 16): a preamble asking for a comprehensive
    and accurate response, `Instruction:`, an `Input:` line only when there is one, `Response:`.
    Used by the respond stage and by the pairwise judge's answers (the paper's win rates)."""
    template = load_template(RESPOND_TEMPLATE.parent, RESPOND_TEMPLATE.name, template_override)
    inp = record.get("input") or ""
    text = fill(
        template, instruction=record["instruction"], input_line=f"Input: {inp}\n" if inp else ""
    )
    return [{"role": "user", "content": text}]


def fill(template: str, **slots: str) -> str:
    """Fill {slot}s; values may hold braces of their own (code, JSON) without harm."""
    try:
        return template.format(**slots)
    except (KeyError, IndexError) as e:
        raise ConfigError(f"prompt template has a slot {e} this step does not provide") from None
