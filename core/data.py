"""Seed instructions from the configured source: a bundled file, any local file, or the HF hub."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path

from core.errors import DataError
from core.records import Record, make_record, read_records
from core.schemas import DataConfig, typed_section

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "data"
FIELDS = ("instruction", "input", "output")


def bundled_path(name: str) -> str:
    return str(BUNDLED_DIR / name)


def load_seeds(data_cfg: Any, seed: int) -> list[Record]:
    """Records with unique ids; `meta.source_id` and `meta.seed_index` name each seed's lineage."""
    data_cfg = typed_section(DataConfig, data_cfg, "data")
    if data_cfg.path:
        path = Path(to_absolute_path(str(data_cfg.path)))
        records = list(read_records(path))
    elif data_cfg.hub_id:
        records = _from_hub(data_cfg)
    else:
        raise DataError(f"data {data_cfg.name}: set data.path=FILE (alpaca or ShareGPT)")
    if not records:
        raise DataError(f"data {data_cfg.name}: no records in {data_cfg.path}")
    if data_cfg.shuffle:
        random.Random(seed).shuffle(records)
    if data_cfg.limit:
        records = records[: int(data_cfg.limit)]
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        log.warning("data: ids are not unique; renumbering as s0, s1, ...")
        ids = [f"s{i}" for i in range(len(records))]
    out = []
    for i, (rid, r) in enumerate(zip(ids, records)):
        meta = {**r.get("meta", {}), "source_id": rid, "seed_index": i, "round": 0}
        out.append(make_record(rid, r["instruction"], r["input"], r["output"], **meta))
    return out


def _from_hub(data_cfg: Any) -> list[Record]:
    try:
        import datasets

        ds = datasets.load_dataset(data_cfg.hub_id, data_cfg.hub_config, split=data_cfg.split)
    except Exception as e:
        raise DataError(
            f"data {data_cfg.name}: cannot load {data_cfg.hub_id} from the HF hub "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); download it and run with "
            "data=file data.path=/local/copy.jsonl"
        ) from None
    fields = data_cfg.fields
    records = []
    limit = data_cfg.limit
    for i, row in enumerate(ds):
        if limit and not data_cfg.shuffle and i >= limit:
            break
        vals = [str(row.get(fields[k]) or "") if fields.get(k) else "" for k in FIELDS]
        records.append(make_record(f"s{i}", *vals))
    return records
