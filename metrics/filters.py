"""Selection by a metric (SPEC §6): keep `keep_ratio` of the records, best first. The filters are
the metric fields that declare one (`Field.filter`), plus `random` and `none`."""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from core.errors import DataError, unknown_option
from core.records import Record
from metrics.base import filters

log = logging.getLogger(__name__)


def select_top_fraction(
    records: list[Record],
    scores: dict[str, dict],
    name: str,
    keep_ratio: float,
    seed: int = 0,
    drop_ifd_above_1: bool = False,
) -> tuple[list[Record], dict[str, Any]]:
    """The kept records (in ranking order) and counts. Ties break by id, so runs agree."""
    table = filters()
    if name not in table:
        raise unknown_option("filter", name, table)
    if not 0 < keep_ratio <= 1:
        raise DataError(f"filter.keep_ratio must be in (0, 1], got {keep_ratio}")
    counts: dict[str, Any] = {"filter": name, "keep_ratio": keep_ratio, "input": len(records)}
    pool = list(records)
    if drop_ifd_above_1:
        before = len(pool)
        pool = [r for r in pool if (scores.get(r["id"], {}).get("ifd") or 0.0) <= 1.0]
        counts["dropped_ifd_above_1"] = before - len(pool)
    if name == "none":
        kept = pool
    else:
        field, descending = table[name]
        if field is None:
            pool = sorted(pool, key=lambda r: r["id"])
            random.Random(seed).shuffle(pool)
        else:
            valid = [r for r in pool if _value(scores, r, field) is not None]
            counts["no_score"] = len(pool) - len(valid)
            sign = -1.0 if descending else 1.0
            pool = sorted(valid, key=lambda r: (sign * _value(scores, r, field), r["id"]))
        kept = pool[: max(1, math.ceil(keep_ratio * len(pool)))] if pool else []
    if not kept:
        raise DataError(
            f"filter {name}: no record left to select from {len(records)} "
            f"(missing scores: {counts.get('no_score', 0)}); run the score stage first, or "
            "use filter=none"
        )
    counts["kept"] = len(kept)
    return kept, counts


def _value(scores: dict[str, dict], record: Record, field: str) -> float | None:
    v = scores.get(record["id"], {}).get(field)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
