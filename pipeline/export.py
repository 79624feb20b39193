"""A run's instruction sets as a shareable dataset: `<run>/dataset/`.

    dataset/
      README.md                       the dataset card: evolver, scenario, rounds, filter, sizes,
                                      the metrics' means (with 95% CIs), the config hash
      data/<split>-00000-of-00001.parquet   one file per split, what the Hub serves
      dataset_dict.json, <split>/     the same splits as `datasets.load_from_disk` reads them
      dataset_info.json               LLaMA-Factory's entries (alpaca format, over the Parquet)

Splits: `selected` (what was fine-tuned on, selected.jsonl) and `round_<r>` (each round's set after
respond/verify), each record's instruction/input/output, its lineage, and its scalar scores.

`python -m pipeline.export RUN_DIR [--push org/name]` writes it for a finished run and pushes the
card and the Parquet files to the Hub when a token is present (HF_TOKEN, or `huggingface-cli
login`); without one it says so and changes nothing remote. Runs do the same at their end
(`export.dataset`, `export.push`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from core.cache import stable_hash
from core.errors import ConfigError, DataError, UserFacingError
from core.records import read_jsonl, write_json_atomic, write_text_atomic
from metrics.base import mean_stats

log = logging.getLogger(__name__)

FOLDER = "dataset"
# Config keys that are where a run wrote, not what it did: left out of the config hash.
PATH_KEYS = ("cache_dir", "models_dir", "hydra")
COLUMNS = ("id", "instruction", "input", "output")
# A set's files, most processed first: the set as later stages saw it.
SET_FILES = ("verified.jsonl", "responded.jsonl", "evolved.jsonl")


def run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def config_hash(config: dict[str, Any]) -> str:
    return stable_hash({k: v for k, v in config.items() if k not in PATH_KEYS})[:16]


def splits(run_dir: Path) -> dict[str, Path]:
    """split name -> the file it is read from, in order: selected, then the rounds."""
    run_dir = Path(run_dir)
    out: dict[str, Path] = {}
    if (run_dir / "selected.jsonl").is_file():
        out["selected"] = run_dir / "selected.jsonl"
    rounds = sorted(
        (p for p in run_dir.glob("round_*") if p.name.split("_")[-1].isdigit()),
        key=lambda p: int(p.name.split("_")[-1]),
    )
    for d in rounds:
        found = next((d / f for f in SET_FILES if (d / f).is_file()), None)
        if found is not None:
            out[d.name] = found
    return out


def _scores(run_dir: Path) -> dict[str, dict[str, Any]]:
    """record id -> its scalar scores, from every set's scores.jsonl."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(run_dir).glob("*/scores.jsonl")):
        for row in read_jsonl(path):
            scalars = {
                f"score_{k}": v
                for k, v in row.items()
                if k != "id" and (v is None or isinstance(v, bool | int | float | str))
            }
            out.setdefault(str(row["id"]), {}).update(scalars)
    return out


def rows_of(path: Path, scores: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for rec in read_jsonl(path):
        meta = rec.get("meta") or {}
        row = {k: str(rec.get(k) or "") for k in COLUMNS}
        row.update(
            {
                "round": meta.get("round"),
                "method": meta.get("method"),
                "source_id": meta.get("source_id"),
                "evolver": meta.get("evolver") or meta.get("model"),
                "responder": meta.get("responder"),
                "meta": json.dumps(meta, ensure_ascii=False, default=str),
            }
        )
        row.update(scores.get(row["id"], {}))
        rows.append(row)
    return rows


def _uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with every column (None where a record lacks it), each column of one type (a
    column mixing numbers and text becomes text), as Arrow needs."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    for c in cols:
        kinds = {type(r.get(c)) for r in rows} - {type(None)}
        if len(kinds) > 1 and not kinds <= {int, float}:
            for r in rows:
                if r.get(c) is not None:
                    r[c] = str(r[c])
        elif kinds == {int, float}:
            for r in rows:
                if r.get(c) is not None:
                    r[c] = float(r[c])
    return [{c: r.get(c) for c in cols} for r in rows]


def export_dataset(run_dir: str | Path, summary: dict | None = None) -> Path | None:
    """Write `<run_dir>/dataset/` (see the module doc); None when the run made no set."""
    import datasets
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    run_dir = Path(run_dir)
    found = splits(run_dir)
    if not found:
        return None
    bars = not are_progress_bars_disabled()
    disable_progress_bars()  # one log line says what was written
    try:
        return _export(run_dir, found, summary, datasets)
    finally:
        if bars:
            enable_progress_bars()


def _export(run_dir: Path, found: dict[str, Path], summary: dict | None, datasets: Any):
    if summary is None and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    summary = summary or {}
    config = run_config(run_dir)
    scores = _scores(run_dir)
    out = run_dir / FOLDER
    tmp = run_dir / f".{FOLDER}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    per_split = {split: rows_of(path, scores) for split, path in found.items()}
    per_split = {split: rows for split, rows in per_split.items() if rows}
    if not per_split:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    # One schema for every split (the Hub's loader casts all splits to the first one's): the
    # columns and their types over all rows; a column with no value anywhere is text.
    every = _uniform([r for rows in per_split.values() for r in rows])
    features = datasets.Dataset.from_list(every).features
    for col, feature in features.items():
        if getattr(feature, "dtype", None) == "null":
            features[col] = datasets.Value("string")
    dsets: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    start = 0
    for split, rows in per_split.items():
        part = every[start : start + len(rows)]
        start += len(rows)
        ds = datasets.Dataset.from_list(part, features=features)
        ds.to_parquet(str(tmp / "data" / f"{split}-00000-of-00001.parquet"))
        dsets[split] = ds
        sizes[split] = len(rows)
    datasets.DatasetDict(dsets).save_to_disk(str(tmp))
    name = _entry_prefix(config, summary)
    write_json_atomic(tmp / "dataset_info.json", llama_factory_info(name, list(dsets)))
    write_text_atomic(tmp / "README.md", dataset_card(config, summary, sizes, name))
    # The old folder is replaced only once the new one is complete.
    old = run_dir / f".{FOLDER}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old.exists():
            old.rename(out)  # the previous folder stays in place
        raise
    shutil.rmtree(old, ignore_errors=True)
    log.info("dataset: %s (%s)", out, ", ".join(f"{k} {v}" for k, v in sizes.items()))
    return out


def _entry_prefix(config: dict, summary: dict) -> str:
    model = summary.get("model") or (config.get("model") or {}).get("name") or "evolved"
    scenario = summary.get("scenario") or (config.get("scenario") or {}).get("name") or "set"
    return f"{model}_{scenario}".replace("/", "_").replace(".", "_")


def llama_factory_info(prefix: str, names: list[str]) -> dict[str, Any]:
    """LLaMA-Factory's `dataset_info.json`: one alpaca-format entry per split, over its Parquet
    file (use with `--dataset_dir <run>/dataset --dataset <prefix>_selected`)."""
    return {
        f"{prefix}_{split}": {
            "file_name": f"data/{split}-00000-of-00001.parquet",
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
        for split in names
    }


def dataset_card(config: dict, summary: dict, sizes: dict[str, int], prefix: str) -> str:
    model = summary.get("model") or (config.get("model") or {}).get("name")
    scenario = summary.get("scenario") or (config.get("scenario") or {}).get("name")
    filt = config.get("filter") or {}
    meta = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": s, "path": f"data/{s}-00000-of-00001.parquet"} for s in sizes
                ],
            }
        ],
        "task_categories": ["text-generation"],
        "language": ["en"],
        "tags": ["instruction-tuning", "synthetic", str(scenario or "evolved").replace("_", "-")],
        "size_categories": [_size_category(max(sizes.values()))],
    }
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {prefix}",
        "",
        f"Instructions evolved by **{model}** with **{scenario}** for "
        f"{summary.get('rounds', config.get('rounds'))} round(s), then answered and scored; "
        f"`selected` is what the filter **{filt.get('name')}** kept "
        f"(keep_ratio {filt.get('keep_ratio')}) and the student was fine-tuned on.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| evolver | {model} |",
        f"| scenario | {scenario} |",
        f"| rounds | {summary.get('rounds', config.get('rounds'))} |",
        f"| filter | {filt.get('name')} (keep_ratio {filt.get('keep_ratio')}) |",
        f"| responder | {(config.get('respond') or {}).get('model') or model} |",
        f"| seed | {config.get('seed')} |",
        f"| config hash | `{config_hash(config)}` |",
        "",
        "## Splits",
        "",
        "| split | records |",
        "|---|---|",
        *(f"| {s} | {n} |" for s, n in sizes.items()),
        "",
    ]
    means = _metric_means(summary)
    if means:
        lines += [
            "## Metrics (mean over records, 95% bootstrap CI)",
            "",
            "| set | metric | mean | 95% CI |",
            "|---|---|---|---|",
            *means,
            "",
        ]
    lines += [
        "## Columns",
        "",
        "`instruction`, `input`, `output` (alpaca format); `round`, `method`, `source_id` (the "
        "seed it descends from), `evolver`, `responder`; `score_*`: the per-record scores "
        "(complexity, difficulty, IFD, IC-IFD, top-1 confidence, diversity, reward, where "
        "computed); `meta`: the record's full lineage as JSON.",
        "",
        "## Use",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("<org>/<name>")  # or datasets.load_from_disk("<run>/dataset")',
        "```",
        "",
        "LLaMA-Factory: `--dataset_dir <run>/dataset --dataset "
        f"{prefix}_selected` (entries in `dataset_info.json`).",
        "",
    ]
    return "\n".join(lines)


def _metric_means(summary: dict) -> list[str]:
    out = []
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) < 4 or parts[1] != "score" or not isinstance(value, int | float):
            continue
        if not any(parts[2] == m and "/".join(parts[3:]) == s.key for m, s in mean_stats()):
            continue
        lo, hi = summary.get(f"{key}_ci_low"), summary.get(f"{key}_ci_high")
        ci = f"[{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else ""
        out.append(f"| {parts[0]} | {parts[2]} {'/'.join(parts[3:])} | {value:.4g} | {ci} |")
    return out


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M" if n < 1_000_000 else "n>1M"


def push(folder: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload the card and the Parquet files of `folder` to the Hub dataset `repo_id`."""
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise DataError(f"{folder}: no dataset folder (run `python -m pipeline.export RUN_DIR`)")
    token = token or get_token()
    if not token:
        raise ConfigError(
            f"no Hugging Face token, so {repo_id} was not pushed: set HF_TOKEN or run "
            f"`huggingface-cli login`, then `python -m pipeline.export {folder.parent} --push "
            f"{repo_id}`; the dataset is in {folder}"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="dataset",
            allow_patterns=["README.md", "data/*.parquet"],
            commit_message="Upload the evolved instruction sets",
        )
    except Exception as e:  # network, permissions: the local folder stays as it is
        raise ConfigError(f"push to {repo_id} failed ({type(e).__name__}: {e})") from None
    return f"https://huggingface.co/datasets/{repo_id}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.export",
        description="A run's sets as a Hugging Face dataset folder (<run>/dataset/), optionally "
        "pushed to the Hub.",
    )
    ap.add_argument("run_dir", help="a run directory (with selected.jsonl or round_*/)")
    ap.add_argument("--push", metavar="ORG/NAME", help="push to this Hub dataset repo")
    ap.add_argument("--public", action="store_true", help="create the Hub repo public")
    args = ap.parse_args(argv)
    try:
        folder = export_dataset(args.run_dir)
        if folder is None:
            raise DataError(f"{args.run_dir}: no selected.jsonl and no round_*/ set to export")
        print(f"dataset: {folder}")
        if args.push:
            print(f"pushed: {push(folder, args.push, private=not args.public)}")
    except UserFacingError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
