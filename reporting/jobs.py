"""Jobs as their folders tell them: finding and loading them for a report, the registries each
one ran with, and whether they finished (what run.py's exit status reads).

- `find_jobs` / `load_job`: a job is a folder with a summary.json; its overrides come from
  `.hydra/overrides.yaml`.
- `job_registries`: before a job is read, what its own process had registered is rebuilt from its
  saved config (`<job>/config.yaml`, the composed config the runner writes at start, else
  `<job>/.hydra/config.yaml`): its `plugins`, its metrics' and scenario's `impl` are imported
  (core.extensions) and its benchmarks are the built-ins plus its `eval.benchmark_dirs`
  (evaluation.benchmarks.registry_for). So a comparison made in any process (`python -m
  pipeline.compare`, the end of a multirun under joblib or SLURM) shows their headlines, CIs and
  verdict rows.
- The outcome of an invocation: a job failed when its summary.json is missing or says anything
  but `ok` (the runner writes `status: failed|interrupted` and `error` for every job that does
  not finish); a sweep's comparison records its own outcome in `<sweep>/sweep.json`
  (SWEEP_FILE: not a summary.json, which would make the sweep folder a job). run.py learns its
  run or sweep folder from the record CompareCallback writes (`record_invocation`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from core.dist import is_leader
from core.errors import ConfigError
from core.extensions import load_extensions
from core.records import write_json_atomic
from evaluation.benchmarks import BenchmarkRegistry, registry_for

log = logging.getLogger(__name__)

PATH_KEYS = ("cache_dir", "models_dir", "data.path", "hydra.")
SWEEP_FILE = "sweep.json"
# The Hydra override through which run.py names the file CompareCallback records its folder in.
RECORD_KEY = "hydra.callbacks.compare.record"


# -- finding and loading jobs ---------------------------------------------------------------------
def find_jobs(paths: list[str | Path]) -> list[Path]:
    jobs: list[Path] = []
    for p in map(Path, paths):
        if (p / "summary.json").is_file():
            jobs.append(p)
        else:
            jobs += sorted((d.parent for d in p.glob("*/summary.json")), key=_job_order)
    return jobs


def _job_order(p: Path) -> tuple:
    return (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)


def load_job(path: Path) -> dict:
    """{"dir", "summary", "overrides", "benchmark_dirs", "benchmarks"}: the job's numbers, its
    command-line overrides (machine paths left out), its benchmark folders and registry
    (`job_registries`)."""
    path = Path(path)
    dirs, benchmarks = _registries(path)
    summary = json.loads((path / "summary.json").read_text())
    overrides: dict[str, str] = {}
    ov = path / ".hydra" / "overrides.yaml"
    if ov.is_file():
        for item in yaml.safe_load(ov.read_text()) or []:
            key, _, value = str(item).partition("=")
            if not key.startswith(PATH_KEYS):
                overrides[key.lstrip("+~")] = value
    return {
        "dir": str(path),
        "summary": summary,
        "overrides": overrides,
        "benchmark_dirs": dirs,
        "benchmarks": benchmarks,
    }


# -- the registries a job ran with -----------------------------------------------------------------
def saved_config(job_dir: str | Path) -> DictConfig | None:
    """The job's composed config: `<job>/config.yaml` (written by the runner at start), else
    Hydra's `<job>/.hydra/config.yaml`; None when it has neither (a hand-made folder)."""
    for rel in ("config.yaml", ".hydra/config.yaml"):
        path = Path(job_dir) / rel
        if path.is_file():
            try:
                cfg = OmegaConf.load(path)
            except Exception as e:  # a damaged file: the report goes on with the built-ins
                log.warning("%s: not readable (%s); its extensions are not loaded", path, e)
                return None
            return cfg if isinstance(cfg, DictConfig) else None
    return None


def _launch_cwd(job_dir: Path) -> Path | None:
    """The folder the job was started from (relative paths in its config are relative to it)."""
    path = job_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        cwd = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.cwd", default=None)
    except Exception:
        return None
    return Path(str(cwd)) if cwd else None


def benchmark_dirs(cfg: DictConfig | None, job_dir: Path) -> list[str]:
    """`eval.benchmark_dirs` of a saved config, relative ones resolved against the folder the
    job started in, folders that no longer exist left out (with a warning)."""
    if cfg is None:
        return []
    try:
        dirs = OmegaConf.select(cfg, "eval.benchmark_dirs", default=None)
        dirs = OmegaConf.to_container(dirs, resolve=True) if OmegaConf.is_config(dirs) else dirs
    except Exception as e:  # an interpolation that only resolved inside the job
        log.warning("%s: eval.benchmark_dirs not readable here (%s); skipped", job_dir, e)
        return []
    if isinstance(dirs, str):
        dirs = [dirs]
    out: list[str] = []
    cwd = None
    for d in dirs or []:
        path = Path(str(d)).expanduser()
        if not path.is_absolute():
            cwd = cwd or _launch_cwd(job_dir)
            if cwd is not None and (cwd / path).is_dir():
                path = cwd / path
        if not path.is_dir():
            log.warning(
                "%s: eval.benchmark_dirs entry %s is not a folder here; skipped", job_dir, d
            )
            continue
        out.append(str(path))
    return out


def job_registries(job_dir: str | Path) -> BenchmarkRegistry:
    """Rebuild what the job registered (see the module docstring) and return its benchmark
    registry. A module of the job that cannot be imported here is a warning: its numbers are then
    shown without their direction, headline or verdict row, and the report goes on."""
    return _registries(Path(job_dir))[1]


def _registries(job_dir: Path) -> tuple[list[str], BenchmarkRegistry]:
    cfg = saved_config(job_dir)
    if cfg is not None:
        try:
            load_extensions(cfg)
        except ConfigError as e:
            log.warning("%s: %s; that module's numbers are reported as plain numbers", job_dir, e)
    dirs = benchmark_dirs(cfg, job_dir)
    return dirs, _benchmarks(dirs, str(job_dir))


def _benchmarks(dirs: list[str], what: str) -> BenchmarkRegistry:
    try:
        return registry_for(dirs)
    except ConfigError as e:
        log.warning("%s: benchmark folders: %s; only the built-in benchmarks are known", what, e)
        return registry_for([])


def comparison_registry(jobs: list[dict]) -> BenchmarkRegistry:
    """The benchmarks of every job of a comparison (the built-ins plus each job's folders, in
    order): what decides a column's headline and direction."""
    dirs: list[str] = []
    for job in jobs:
        if "benchmark_dirs" not in job:
            job["benchmark_dirs"] = _registries(Path(job["dir"]))[0]
        dirs += [d for d in job["benchmark_dirs"] if d not in dirs]
    return _benchmarks(dirs, "the compared jobs")


# -- whether jobs finished ------------------------------------------------------------------------
def job_failure(job_dir: str | Path) -> dict | None:
    """{"dir", "error"} when the job's summary.json is missing or says anything but ok."""
    try:
        summary = json.loads((Path(job_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {"dir": str(job_dir), "error": "no readable summary.json (the job died)"}
    if not isinstance(summary, dict):
        return {"dir": str(job_dir), "error": "summary.json is not a JSON object"}
    if summary.get("status") != "ok":
        error = summary.get("error") or summary.get("status") or "no status"
        return {"dir": str(job_dir), "error": str(error)}
    return None


def sweep_failures(sweep_dir: str | Path, since: float = 0.0) -> list[dict]:
    """The jobs under `sweep_dir` started at or after `since` (their `.hydra/` folder) whose
    summary.json is missing or says anything but ok: what the jobs themselves recorded, so it
    holds whichever process or machine ran them (joblib workers, SLURM tasks)."""
    failed = []
    for hydra_dir in sorted(Path(sweep_dir).glob("*/.hydra"), key=lambda d: _job_order(d.parent)):
        if hydra_dir.stat().st_mtime < since:
            continue
        if (failure := job_failure(hydra_dir.parent)) is not None:
            failed.append(failure)
    return failed


def write_sweep_outcome(sweep_dir: str | Path, status: str, error: str | None = None) -> None:
    """`<sweep>/sweep.json › comparison`: pending (the sweep runs), ok, skipped (no job to
    compare) or failed (with the error)."""
    comparison: dict[str, Any] = {"status": status}
    if error is not None:
        comparison["error"] = error
    write_json_atomic(Path(sweep_dir) / SWEEP_FILE, {"comparison": comparison})


def sweep_outcome(sweep_dir: str | Path) -> dict:
    try:
        out = json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def record_invocation(record: str | Path, mode: str, folder: str | Path, **extra: Any) -> None:
    """What run.py reads back after Hydra returns: the mode (`run` | `multirun`) and the folder
    of this invocation (with a sweep's start time, so earlier jobs in its folder do not count)."""
    write_json_atomic(Path(record), {"mode": mode, "dir": str(folder), **extra})


def invocation_failures(record: str | Path) -> list[dict]:
    """The jobs of this invocation that did not finish ({"dir", "error"} each), read from their
    summary.json files, and a sweep's failed comparison; none when nothing ran (`--cfg`, `--help`
    write no record)."""
    try:
        rec = json.loads(Path(record).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(rec, dict) or "dir" not in rec:
        return []
    folder = Path(rec["dir"])
    if rec.get("mode") == "multirun":
        failed = sweep_failures(folder, float(rec.get("since") or 0.0))
        comparison = sweep_outcome(folder).get("comparison") or {}
        if comparison.get("status") == "failed":
            failed.append({"dir": str(folder), "error": f"compare: {comparison.get('error')}"})
        return failed
    if not rec.get("leader", True):
        # A follower rank writes no summary.json (training.ranks): its own end is the job's return.
        if rec.get("returned"):
            return []
        return [{"dir": str(folder), "error": "this rank's job failed (see its log)"}]
    failure = job_failure(folder)
    return [failure] if failure else []


def run_record(job_return: Any) -> dict[str, Any]:
    """The fields of a single run's record: its output folder, whether this process is the
    leader rank, and whether the job returned its summary (run_job returns None on failure)."""
    hydra_cfg = getattr(job_return, "hydra_cfg", None)
    folder = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir") if hydra_cfg else None
    status = getattr(getattr(job_return, "status", None), "name", "")
    returned = status == "COMPLETED" and isinstance(
        getattr(job_return, "_return_value", None), dict
    )
    return {
        "dir": str(folder or job_return.working_dir),
        "leader": is_leader(),
        "returned": returned,
    }
