"""What a metric or a stage declares about the numbers it writes: per-record `Field`s (columns of
`scores.jsonl`) and set- or job-level `Stat`s (summary.json keys), read by the filters, the summary,
the comparison, the verdict, W&B and the plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    """A per-record value in `scores.jsonl`."""

    name: str
    higher_is_better: bool | None = None  # None: descriptive, never "best"
    label: str = ""
    filter: str | None = None  # `filter=<filter>` selects records by this field ...
    descending: bool = True  # ... keeping the highest values first (False: the lowest)
    plot: str | None = None  # "hist" | "kde": its distribution in the report (last round)
    sample: bool = True  # a column of the W&B sample tables


@dataclass(frozen=True)
class Stat:
    """A set-level number: metrics.json › score › <metric> › <key> and summary.json
    `round_<r>/score/<metric>/<key>`."""

    key: str
    higher_is_better: bool | None = None
    headline: bool = False  # printed, in comparison.md, compared across jobs
    label: str = ""
    per_round: bool = False  # a line over rounds in the report
    scaling: bool = False  # a panel of the evolver-size figure
    labels: tuple[str, ...] = ()  # a label distribution (`<key>/percent/<label>`): bars
    # The per-record field (scores.jsonl) whose mean over the set this stat is, and the number a
    # record's value counts as (`value`; default: the value itself, None skipped): its bootstrap
    # CI in summary.json and the two-arm tests of the verdict (reporting.items).
    of: str | None = None
    value: Callable[[Any], float | None] | None = None
