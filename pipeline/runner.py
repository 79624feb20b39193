"""The runner: a job is its selected stages (core.stage) run in order over named artifacts.

It validates the config once, builds the job's services (pipeline.services) and the stages (each
with its typed settings), then loops: a stage that is active runs on the artifacts so far and adds
its own. summary.json is written when the work is done (or when it fails); the `final` stages (the
report) run after it and update it. Every stage caches its own work, so a rerun resumes. Another
arm's artifact is the same loop run through the stages that produce it (pipeline.arms).
DESIGN.md › Run directory gives the files a job writes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.config import typed_section, validate
from core.dist import is_leader
from core.errors import ConfigError, UserFacingError, unknown_option
from core.extensions import load_extensions
from core.records import write_json_atomic, write_text_atomic
from core.signals import Interrupted, check_interrupt, unwinding
from core.stage import STAGES, Stage, plan_for, stage_names, stage_order
from engines.memory import gpu_memory_report
from pipeline.arms import Arms, JobOverrides
from pipeline.services import build_context
from pipeline.weights import resolve_weights
from reporting.summary import hardware_facts
from reporting.tracking import Tracker
from training import ranks
from training.stages import follow

log = logging.getLogger(__name__)


def check_stage_names(names: list[str]) -> None:
    for s in names:
        if s not in STAGES:
            raise unknown_option("stage", s, [c.name for c in stage_order()])


def build_stages(cfg: DictConfig, scenario: Any = None) -> list[Stage]:
    """The job's selected stages in order, each with its typed settings: what a Run loops over,
    and what a launcher sizes the job by (no services are built for them)."""
    load_extensions(cfg)
    names = list(cfg.stages)
    check_stage_names(names)
    if scenario is None:
        from evolvers.base import build_scenario

        scenario = build_scenario(cfg.scenario)
    out: list[Stage] = []
    for cls in stage_order():
        if not cls.selected(names):
            continue
        if cls.scenario_settings:
            out.append(cls(scenario.cfg, cfg))
            continue
        key = cls.config_key()
        settings = typed_section(cls.Config, cfg.get(key), key) if cls.Config else None
        out.append(cls(settings, cfg))
    return out


class Run:
    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        tracker: Tracker | None = None,
        job: JobOverrides | None = None,
        cache_only: bool = False,
    ):
        cfg = cfg.copy()
        OmegaConf.set_readonly(cfg, True)  # what ran is what was composed
        self.cfg, self.dir = cfg, Path(run_dir)
        load_extensions(cfg)  # idempotent: a stage a plugin registers is known below
        names = list(cfg.stages)
        check_stage_names(names)
        self.ctx = build_context(cfg, self.dir, tracker, cache_only)
        self.ctx.arms = Arms(
            job or JobOverrides(),
            self.dir,
            loop=lambda c, d, j, only: Run(c, d, job=j, cache_only=only),
            equal_across=str(cfg.filter.equal_across),
            cache_only=cache_only or cfg.arms.missing == "fail",
            before=self.ctx.release_engine,
        )
        self.stages = build_stages(cfg, self.ctx.scenario)
        for stage in self.stages:
            stage.check(names)
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}  # stage -> seconds (a stage's parts count as it)
        self.stage: str | None = None  # the stage running now
        self.stopped_in: str | None = None  # the stage an exception (a signal) ended

    def plan(self, artifact: str | None = None) -> list[Stage]:
        """The stages to run: all selected ones, or only those that `artifact` depends on."""
        return plan_for(self.stages, artifact)

    def stage_names(self, artifact: str) -> list[str]:
        """The `stages=[...]` names that run the stages `artifact` depends on."""
        return stage_names(self.plan(artifact))

    @contextlib.contextmanager
    def timed(self, stage: Stage) -> Iterator[None]:
        name = stage.part_of or stage.name
        self.stage, t0 = name, time.perf_counter()
        try:
            yield
        except BaseException:
            self.stopped_in = self.stopped_in or name
            raise
        finally:
            if not stage.always:
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            self.stage = None

    def loop(self, stages: list[Stage]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(artifacts, summary entries) of running `stages` in order."""
        artifacts: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        try:
            for stage in stages:
                inputs = {**artifacts, "summary": summary}
                if not stage.active(inputs):
                    continue
                free = [d["free"] for d in gpu_memory_report().values()]
                if free:  # what the previous stage left: vLLM will not start short of its share
                    name = stage.part_of or stage.name
                    summary[f"gpu/free_gib_at/{name}"] = round(min(free) / 2**30, 2)
                with self.timed(stage):
                    result = stage.run(self.ctx, inputs)
                artifacts.update(result.artifacts)
                summary.update(result.summary)
        finally:
            self.ctx.release_engine()
        return artifacts, summary

    def artifact(self, name: str) -> Any:
        """One artifact of this job, from the stages that produce it (another arm's)."""
        try:
            return self.loop(self.plan(name))[0].get(name)
        finally:
            self.ctx.sandbox.close()

    def time_summary(self) -> dict[str, float]:
        """time/<stage> (model loads included), time/model_load, time/total."""
        out = {f"time/{k}": round(v, 2) for k, v in self.timings.items()}
        loads = self.ctx.engines.stats.load_seconds + self.ctx.load_seconds
        out["time/model_load"] = round(loads, 2)
        out["time/total"] = round(time.perf_counter() - self.t0, 2)
        return out

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.ctx.sandbox.close()

    def _run(self) -> dict:
        if not is_leader():
            return follow(self.ctx)
        ranks.announce(self.dir, "running")
        write_text_atomic(self.dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        work = [s for s in self.stages if not s.final]
        produce = self.cfg.arms.get("produce")
        if produce:  # a first pass: only what other arms of the sweep read from this one
            work = plan_for(work, produce)
        if not self.ctx.cache.read_only:  # another arm read from the cache loads nothing
            t0 = time.perf_counter()
            resolve_weights(self.cfg, work)
            self.ctx.load_seconds += time.perf_counter() - t0
        _, summary = self.loop(work)
        summary.update(self.time_summary())
        write_json_atomic(self.dir / "summary.json", summary)
        final = [s for s in self.stages if s.final and not produce]
        if final:
            _, more = self.loop(final)
            summary.update(more)
            summary.update(self.time_summary())
            write_json_atomic(self.dir / "summary.json", summary)
            for stage in final:
                stage.after(summary, self.ctx)
        return summary


def run_job(
    cfg: DictConfig,
    run_dir: Path,
    group: str | None = None,
    name: str | None = None,
    job: JobOverrides | None = None,
) -> dict | None:
    """Run one job; a user-facing error is logged as one line and recorded in summary.json
    (`status: failed`, what run.py's exit status reads), never a traceback. The tracker (W&B) is
    finished whatever happens, so a failing sweep job leaves no open run."""
    summary, tracker, run = None, None, None
    try:
        check_config(cfg)
        tracker = Tracker(cfg, Path(run_dir), group=group, name=name)
        run = Run(cfg, run_dir, tracker, job=job)
        summary = run.run()
        check_interrupt()  # a signal whose exception was lost on the way must not end as success
        if is_leader():
            ranks.announce(run_dir, "done")
        return summary
    except Interrupted as e:
        unwinding()
        # Every finished chunk is already in the cache (whole lines, fsync'd): a rerun of the same
        # command resumes from there.
        stage = (run.stopped_in or run.stage) if run else None
        log.error("%s during %s: stopped; rerun the same command to resume", e, stage or "setup")
        summary = {"status": "interrupted", "signal": e.name, "stage": stage}
        if run:
            summary.update(run.time_summary())
        _record_end(run_dir, summary)
        raise
    except UserFacingError as e:
        log.error("%s", e)
        summary = {"status": "failed", "error": str(e)}
        _record_end(run_dir, summary)
        return None
    except Exception as e:
        # A bug or a library's failure: the traceback goes to the log, the job is recorded as
        # failed and the sweep goes on, so its other jobs and the comparison still run; run.py
        # exits 1 (it reads every job's summary.json, whatever the launcher).
        log.exception("job failed: %s", e)
        error = f"{type(e).__name__}: {e}"
        summary = {"status": "failed", "error": error, "stage": run.stage if run else None}
        _record_end(run_dir, summary)
        return None
    finally:
        if tracker is not None:
            tracker.finish(summary, failed=summary is None or summary.get("status") != "ok")


def _record_end(run_dir: Path, summary: dict) -> None:
    """A job that did not finish: its summary.json (rank 0's alone) and, for the other ranks,
    the leader's state."""
    if not is_leader():
        return
    write_json_atomic(Path(run_dir) / "summary.json", summary)
    ranks.announce(run_dir, "failed", error=summary.get("error") or summary.get("status"))


def check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before a model loads: missing values, every section against
    its schema (scenario, metrics and stages included), every dtype and precision the job
    resolves."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        hint = " (e.g. data.path=seeds.jsonl)" if "data.path" in missing else ""
        raise ConfigError(f"missing value for {', '.join(sorted(missing))}{hint}")
    load_extensions(cfg)  # plugins, out-of-tree metrics and scenarios: registered first
    validate(cfg)
    from evolvers.base import build_scenario
    from metrics.base import enabled_metrics, filters

    build_scenario(cfg.scenario)  # its settings against its Config

    enabled_metrics(cfg.metrics)  # each metric's settings against its Config
    if cfg.filter.name not in filters():
        raise unknown_option("filter", cfg.filter.name, filters())
    _check_role_dtypes(cfg)
    hardware_facts(cfg)


_check_config = check_config  # the earlier name


def _check_role_dtypes(cfg: DictConfig) -> None:
    """Every role model's dtype resolves (`auto` or a known format), named by its key."""
    from core.config import role_model
    from core.schemas import ROLES
    from engines.precision import resolve_dtype
    from metrics.base import enabled_metrics

    keys = [*ROLES]
    keys += [
        f"metrics.{m.name}.{m.role_field}" for m, _ in enabled_metrics(cfg.metrics) if m.role_field
    ]
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if key == "eval.pairwise.against" and isinstance(value, str) and Path(value).is_dir():
            continue  # a checkpoint folder: the student's settings
        if value is not None:
            resolve_dtype(role_model(cfg, value, key).get("dtype"), what=f"{key}.dtype")
