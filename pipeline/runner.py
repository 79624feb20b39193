"""The stage runner: seeds -> evolve -> respond -> score -> filter -> train -> report, with caching
and resume.

Stages are small and pure (evolvers/, metrics/, ...); this module owns the run directory, the cache,
the engines and the counts, and hands each stage a `StageContext` (core.context), never itself.
DESIGN.md › Run directory gives the files it writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.cache import StepCache, file_lock, stable_hash
from core.config import typed_section, validate
from core.context import StageContext
from core.data import load_seeds
from core.dist import is_leader, launch_rank
from core.errors import ConfigError, DataError, NotCached, UserFacingError, unknown_option
from core.records import (
    Record,
    hash_records,
    subsample,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from core.schemas import EvalConfig
from core.signals import Interrupted, check_interrupt, unwinding
from engines.base import Chat, Generation, Sampling
from engines.pool import EnginePool, model_identity
from engines.precision import resolve_precision
from evolvers.base import Scenario, build_scenario
from evolvers.respond import respond_counts, responded_record
from metrics.base import needs_scores
from pipeline import ranks
from pipeline.arms import JobOverrides, arm_sizes, is_this_job, run_arm
from pipeline.scoring import Scorer, filter_set
from reporting.summary import build_summary, hardware_facts, print_summary
from reporting.tracking import Tracker

log = logging.getLogger(__name__)

STAGES = ("evolve", "respond", "score", "filter", "train", "evaluate", "report")
# Train settings that do not change the trained model, so not part of its cache key.
TRAIN_KEY_EXCLUDES = (
    "resume",
    "keep_checkpoints",
    "devices",
    "num_nodes",
    "save_every_n_steps",
    "name",
    "student",  # the key holds the student's identity instead
)

# Jobs of this process that failed with a user-facing error (run.py exits non-zero if any).
FAILED_JOBS: list[dict] = []


def sampling(cfg: Any, seed: int | None = None) -> Sampling:
    """Sampling settings from a `generation.*` section (checked against DecodingConfig)."""
    return Sampling(
        temperature=float(cfg.temperature),
        top_p=float(cfg.top_p),
        max_tokens=int(cfg.max_tokens),
        seed=seed,
    )


def item_seed(run_seed: int, item_id: str) -> int:
    """A per-item sampling seed that survives resume and reordering."""
    digest = hashlib.sha256(f"{run_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Run:
    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        tracker: Tracker | None = None,
        job: JobOverrides | None = None,
        cache_only: bool = False,
    ):
        # Read-only from here: no stage changes the config (what ran is what was composed).
        cfg = cfg.copy()
        OmegaConf.set_readonly(cfg, True)
        self.cfg = cfg
        self.dir = Path(run_dir)
        # This job's overrides and its sweep's values: how other arms are found (pipeline.arms).
        self.job = job or JobOverrides()
        self.scenario = build_scenario(cfg.scenario)
        # Evolution's decoding: generation.evolve, its temperature calibrated when asked.
        self.evolve_params = cfg.generation.evolve
        self.tracker = tracker or Tracker(OmegaConf.create({"logger": {"name": "none"}}), self.dir)
        self.cache = StepCache(Path(cfg.cache_dir), read_only=cache_only)
        self.scenario.step_cache = self.cache  # what sandbox results are cached in
        self.pool = EnginePool(cfg.engine, self.cache, cfg.models_dir)
        self.metrics: dict[str, dict] = {}  # set name -> {stage: counts}
        self.filter_counts: dict | None = None
        self.constraints: int | None = None  # AutoIF: constraints evolved, before their cut
        self.train_summary: dict | None = None
        self.train_dir: Path | None = None
        self.eval_summary: dict | None = None
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}  # stage -> wall-clock seconds
        self.stage: str | None = None  # the stage running now
        self.stopped_in: str | None = None  # the stage an exception (a signal) ended
        self.rounds = int(cfg.rounds)  # capped by the scenario (`Scenario.max_rounds`)
        self.eval_cfg = typed_section(EvalConfig, cfg.eval, "eval")
        # Resolved before any work: a bad dtype or precision fails here, not after the generations.
        self.hardware = hardware_facts(cfg)
        self.ctx = StageContext(
            cfg=cfg,
            dir=self.dir,
            cache=self.cache,
            generator=self.generator,
            generate=self.pool.generate,
            release_engine=self.pool.release,
            sink=self.add_metrics,
            engine_for=self.pool.engine_for,
        )

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        self.stage, t0 = stage, time.perf_counter()
        try:
            yield
        except BaseException:
            self.stopped_in = self.stopped_in or stage
            raise
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0
            self.stage = None

    def time_summary(self) -> dict[str, float]:
        """time/<stage> (model loads included), time/model_load (engines and forward-pass
        models started), time/total."""
        out = {f"time/{k}": round(v, 2) for k, v in self.timings.items()}
        loads = self.pool.stats.load_seconds + self.ctx.load_seconds
        out["time/model_load"] = round(loads, 2)
        out["time/total"] = round(time.perf_counter() - self.t0, 2)
        return out

    def generator(self, step: str, model_cfg: Any, params: Any, desc: str):
        """A `generate(items)` for scenarios: [(id, prompt)] -> {id: Generation}, cached.
        `generate(items, max_tokens=n)` replaces `params.max_tokens` for that call."""

        def generate(
            items: list[tuple[str, Chat | str]], max_tokens: int | None = None
        ) -> dict[str, Generation]:
            full = [
                (
                    i,
                    p,
                    sampling(
                        params, None if params.temperature == 0 else item_seed(self.cfg.seed, i)
                    ),
                )
                for i, p in items
            ]
            if max_tokens:
                full = [(i, p, dataclasses.replace(s, max_tokens=max_tokens)) for i, p, s in full]
            return self.pool.generate(step, model_cfg, full, desc=desc)

        return generate

    def write_set(self, name: str, filename: str, records: list[Record]) -> None:
        write_jsonl_atomic(self.dir / name / filename, records)

    def add_metrics(self, name: str, stage: str, counts: dict) -> None:
        self.metrics.setdefault(name, {})[stage] = counts
        write_json_atomic(self.dir / name / "metrics.json", self.metrics[name])
        log.info("%s %s: %s", name, stage, _one_line(counts))

    # -- stages -------------------------------------------------------------------------------
    def evolve(self, scenario: Scenario, seeds: list[Record]) -> dict[str, list[Record]]:
        parents, sets = seeds, {}
        for r in range(1, self.rounds + 1):
            if not parents:
                log.warning("round %d: nothing left to evolve (every parent failed)", r)
                break
            generate = self.generator(
                f"evolve_{self.cfg.scenario.name}",
                self.cfg.model,
                self.evolve_params,
                desc=f"round {r} evolve",
            )
            greedy = self.generator(
                f"evolve_{self.cfg.scenario.name}_greedy",
                self.ctx.role(*scenario.greedy_role()),
                self.cfg.generation.greedy,
                desc=f"round {r} analysis",
            )
            evolved = scenario.evolve_round(parents, r, self.cfg.model.name, generate, greedy)
            for fname, text in scenario.artifacts().items():
                write_text_atomic(self.dir / fname, text)
            name = f"round_{r}"
            self.write_set(name, "evolved.jsonl", evolved)
            counts = scenario.counts(evolved)
            if getattr(scenario.cfg, "keep_failed", False):
                counts["kept_failed"] = sum(
                    not e["meta"].get("parse_ok", True) and scenario.usable(e) for e in evolved
                )
            self.add_metrics(name, "evolve", counts)
            sets[name] = evolved
            # Failures end their lineage (unless scenario.keep_failed keeps them).
            parents = self._usable(evolved)
        return sets

    def respond(self, sets: dict[str, list[Record]], scenario: Scenario) -> None:
        """Answer every usable record with `scenario.respond_prompt`; `scenario.verify` (see
        `_verify`) then checks the responses, and later stages see only what it keeps."""
        model_cfg = self.ctx.role(self.cfg.respond.model, "respond.model")
        prompt = scenario.respond_prompt
        for name, records in sets.items():
            todo = self._usable(records)
            generate = self.generator(
                "respond", model_cfg, self.cfg.generation.greedy, desc=f"{name} respond"
            )
            gens = generate([(r["id"], prompt(r)) for r in todo])
            out = [responded_record(r, gens[r["id"]], model_cfg.name) for r in todo]
            self.write_set(name, "responded.jsonl", out)
            self.add_metrics(name, "respond", respond_counts(out))
            sets[name] = self._verify(scenario, name, out, model_cfg)

    def _verify(
        self, scenario: Scenario, name: str, records: list[Record], model_cfg: Any
    ) -> list[Record]:
        """`scenario.verify`: its kept records go to `<set>/verified.jsonl` and on to the later
        stages, its counts to metrics.json › verify, its files into the set's folder. Its
        `generate` samples the responder (generation.evolve's temperature and top_p,
        generation.greedy's length) for scenarios that want more responses."""
        params = OmegaConf.merge(
            self.cfg.generation.evolve, {"max_tokens": self.cfg.generation.greedy.max_tokens}
        )
        sample = self.generator("respond_sampled", model_cfg, params, desc=f"{name} samples")
        result = scenario.verify(name, records, sample)
        if result is None:
            return records
        for fname, rows in result.files.items():
            write_jsonl_atomic(self.dir / name / fname, rows)
        self.write_set(name, "verified.jsonl", result.kept)
        self.add_metrics(name, "verify", result.counts)
        return result.kept

    def _usable(self, records: list[Record]) -> list[Record]:
        return [r for r in records if self.scenario.usable(r)]

    def filter(self, sets: dict[str, list[Record]], scores: dict[str, dict]) -> list[Record]:
        if not sets:
            raise DataError("filter: no set to select from (every evolution failed)")
        f = self.cfg.filter
        name = f"round_{f.round}" if f.round is not None else list(sets)[-1]
        if name not in sets:
            raise unknown_option("filter.round set", name, list(sets))
        if not self._usable(sets[name]):  # nothing survived upstream (counted there)
            log.warning("filter: %s has no record to select from; nothing selected", name)
            (self.dir / "selected.jsonl").unlink(missing_ok=True)  # no file as if it succeeded
            self.filter_counts = {"filter": f.name, "set": name, "input": 0, "kept": 0}
            return []
        kept, counts = filter_set(self.ctx, name, self._usable(sets[name]), scores.get(name, {}))
        if f.equal_size is not None:
            kept = self._equal_size(kept, counts)
            write_jsonl_atomic(self.dir / "selected.jsonl", kept)
        self.filter_counts = counts
        log.info("filter: %s", _one_line(counts))
        return kept

    def _equal_size(self, kept: list[Record], counts: dict) -> list[Record]:
        """A seeded sample of exactly `filter.equal_size` records (or the smallest arm's count),
        in ranking order; the sizes go to counts (summary.json › filter/...)."""
        f = self.cfg.filter
        size = f.equal_size
        if size == "smallest":
            self.pool.release()  # the other arms load their own models
            sizes = arm_sizes(
                self.job,
                str(f.equal_across),
                len(kept),
                self._stages_to("filter"),
                self.dir,
                cache_only=self.cfg.arms.missing == "fail",
            )
            counts["arm_sizes"] = sizes
            size = min(sizes.values())
        size = int(size)
        if size > len(kept):
            raise DataError(
                f"filter.equal_size={size} but this job selects only {len(kept)} records; lower "
                "equal_size (or use equal_size=smallest in a sweep), or evolve more"
            )
        counts["before_equal_size"] = len(kept)
        counts["equal_size"] = size
        counts["kept"] = size
        return subsample(kept, size, int(self.cfg.seed))

    def _cut_constraints(
        self, scenario: Scenario, sets: dict[str, list[Record]]
    ) -> dict[str, list[Record]]:
        """`scenario.equal_size_constraints` (AutoIF, SPEC §3.6): the last round's records cut to
        a seeded sample of N constraints (smallest: the smallest arm's count), each with all its
        queries. It runs before the respond stage, so the responses, the scores and the set-level
        metrics (diversity) are the cut set's, as the paper computed them. The cut set goes to
        `<set>/cut.jsonl`, the counts to metrics.json › cut."""
        cut = getattr(scenario, "cut_constraints", None)  # scenarios whose records have one
        if cut is None or not sets:
            return sets
        name = list(sets)[-1]
        records = self._usable(sets[name])
        self.constraints = len(scenario.constraints(records))  # what another arm's cut reads
        size = scenario.cfg.equal_size_constraints
        if size is None:
            return sets
        counts: dict[str, Any] = {
            "constraints_before": self.constraints,
            "records_before": len(records),
        }
        if size == "smallest":
            self.pool.release()  # the other arms load their own models
            sizes = arm_sizes(
                self.job,
                str(self.cfg.filter.equal_across),
                self.constraints,
                self._stages_to("evolve"),
                self.dir,
                cache_only=self.cfg.arms.missing == "fail",
                cut="scenario.equal_size_constraints",
                size_of=lambda arm: arm.constraints or 0,
            )
            counts["arm_sizes"] = sizes
            size = min(sizes.values())
        size = int(size)
        if size > self.constraints:
            raise DataError(
                f"scenario.equal_size_constraints={size} but this job kept only "
                f"{self.constraints} constraints; lower it (or use smallest in a sweep), or "
                "evolve more (scenario.n_samples)"
            )
        kept = cut(records, size)
        counts.update(equal_size_constraints=size, constraints=size, records=len(kept))
        self.write_set(name, "cut.jsonl", kept)
        self.add_metrics(name, "cut", counts)
        return {**sets, name: kept}

    def train(self, records: list[Record]) -> dict:
        """Fine-tune the student on `records`; cached by everything the result depends on."""
        from training.run import ensure_export_stops, read_summary, train_sft

        if not records:  # e.g. no AutoIF verifier survived: nothing to fine-tune on
            log.warning("train: no record to train on; skipped (evaluate sees the student)")
            return {"train/skipped": "no records"}
        cfg = self.cfg.train
        student = self.ctx.role(cfg.student, "train.student")
        settings = {
            k: v
            for k, v in OmegaConf.to_container(cfg, resolve=True).items()
            if k not in TRAIN_KEY_EXCLUDES
        }
        # What ran, not what was asked: `auto` trains in bf16 on one machine and fp32 on another.
        settings["precision"] = resolve_precision(cfg.get("precision"))
        key = stable_hash(
            {
                "train": settings,
                "student": model_identity(student),
                "data": hash_records(records),
                "seed": int(self.cfg.seed),
                # The loss: token-level over each optimizer step (training.module.step_loss).
                "loss": "step-token-mean",
            }
        )[:20]
        out = Path(self.cfg.cache_dir).expanduser() / "train" / key
        # Another job training the same model: wait for it and reuse its export. Only rank 0
        # locks: the other ranks of this job train together with it (pipeline/ranks.py).
        lock = (
            file_lock(out.with_name(f".{key}.lock"), what=f"train ({key})")
            if is_leader()
            else contextlib.nullcontext()
        )
        with lock:
            summary = read_summary(out)
            if summary and (out / "hf" / "config.json").is_file():
                log.info("train: cache hit (%s)", out)
                if is_leader():  # an export from before exports stopped at the turn end
                    ensure_export_stops(out / "hf")
            elif self.cache.read_only:
                raise NotCached(f"train: no trained model in the cache ({out})")
            else:
                self.pool.release()  # free the generation engine before training
                summary = train_sft(
                    cfg,
                    student,
                    records,
                    out,
                    self.cfg.models_dir,
                    int(self.cfg.seed),
                    loggers=[lg] if (lg := self.tracker.lightning_logger()) else [],
                )
        self.train_dir = out
        link = self.dir / "train"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(out, target_is_directory=True)
        log.info("train: %s", _one_line(summary))
        return summary

    def evaluate(self) -> dict:
        """lm-eval on this job's fine-tuned export (or eval.model / the untrained student)."""
        from evaluation.run import eval_model_config, evaluate

        trained = self.train_dir / "hf" if self.train_dir else None
        model_cfg = eval_model_config(self.cfg, trained)
        log.info("evaluate: %s on %s", model_cfg.name, ", ".join(self.cfg.eval.tasks))
        numbers: dict = {"eval/model": str(model_cfg.name)}
        if self.eval_cfg.tasks:
            numbers |= evaluate(
                self.cfg.eval,
                model_cfg,
                self.pool,
                self.dir / "eval",
                self.cfg.cache_dir,
                int(self.cfg.seed),
            )
        if self.eval_cfg.pairwise.enabled:
            from evaluation.run import pairwise

            against = self._against_arm()
            if against is not False:
                numbers |= pairwise(self.cfg, model_cfg, self.pool, self.dir / "eval", against)
        log.info("evaluate: %s", _one_line(numbers))
        return numbers

    def _calibrate(self, seeds: list[Record]) -> None:
        """Set the evolution temperature (pipeline.calibration); the numbers go to
        round_1/metrics.json › calibration."""
        from pipeline.calibration import calibrate

        found = calibrate(self.ctx, self.scenario, seeds, self.cfg)
        self.evolve_params = OmegaConf.merge(
            self.cfg.generation.evolve, {"temperature": found["temperature"]}
        )
        self.add_metrics("round_1", "calibration", found)

    def _stages_to(self, last: str) -> list[str]:
        """This job's stages up to `last`: what another arm runs to give that stage's result
        (not `score` when the filter needs no scores: `filter=none` selects without them)."""
        stages = [s for s in self.cfg.stages if STAGES.index(s) <= STAGES.index(last)]
        if not needs_scores(self.cfg.filter.name):
            stages = [s for s in stages if s != "score"]
        return stages

    def _against_arm(self) -> Any:
        """`eval.pairwise.against_arm`: the other arm's trained model (its job's, from the
        cache, or trained here once); False for the arm itself (it is the reference); None when
        unset (`eval.pairwise.against` applies)."""
        changes = self.eval_cfg.pairwise.against_arm
        if not changes:
            return None
        overrides = [c.strip() for c in str(changes).split(" ") if c.strip()]
        if is_this_job(self.job, overrides):
            log.info("pairwise: this job is the reference arm (%s); no judge", changes)
            return False
        self.pool.release()
        arm = run_arm(
            self.job,
            overrides,
            self._stages_to("train"),
            self.dir,
            cache_only=self.cfg.arms.missing == "fail",
        )
        if arm.train_dir is None:
            raise DataError(f"eval.pairwise.against_arm={changes}: that arm trained no model")
        from evaluation.run import reference_model_config

        return reference_model_config(self.cfg, str(arm.train_dir / "hf"))

    def run(self) -> dict:
        stages = list(self.cfg.stages)
        for s in stages:
            if s not in STAGES:
                raise unknown_option("stage", s, STAGES)
        if not is_leader():
            return self.follow()
        ranks.announce(self.dir, "running")
        seeds = load_seeds(self.cfg.data, int(self.cfg.seed))
        write_jsonl_atomic(self.dir / "seeds.jsonl", seeds)
        log.info("seeds: %d records from %s", len(seeds), self.cfg.data.name)
        if "filter" in stages and "score" not in stages and needs_scores(self.cfg.filter.name):
            raise ConfigError(
                f"filter={self.cfg.filter.name} needs scores: add score to stages "
                "(cached scores cost nothing), or use filter=random / filter=none"
            )
        scenario = self.scenario
        if scenario.max_rounds and self.rounds > scenario.max_rounds:
            log.warning(
                "scenario %s runs %d round(s): rounds=%d capped",
                scenario.name,
                scenario.max_rounds,
                self.rounds,
            )
            self.rounds = scenario.max_rounds
        try:
            if "evolve" in stages:
                with self.timed("evolve"):
                    if self.cfg.calibration.enabled:
                        self._calibrate(seeds)
                    sets = self.evolve(scenario, seeds)
                    sets = self._cut_constraints(scenario, sets)
            else:
                sets = {"input": seeds}
            if "respond" in stages:
                with self.timed("respond"):
                    self.respond(sets, scenario)
            scores: dict[str, dict] = {}
            if "score" in stages:
                with self.timed("score"):
                    scores = Scorer(self.ctx, scenario).score_sets(
                        {name: self._usable(records) for name, records in sets.items()}
                    )
            for name, records in sets.items():
                self.tracker.log_set(
                    name, self.metrics.get(name, {}), records, scores.get(name, {})
                )
            selected = None
            if "filter" in stages:
                with self.timed("filter"):
                    selected = self.filter(sets, scores)
            if "train" in stages:
                if selected is None:
                    selected = self._usable(list(sets.values())[-1]) if sets else []
                ranks.publish_records(self.dir, selected)  # what the other ranks train on
                with self.timed("train"):
                    self.train_summary = self.train(selected)
            if "evaluate" in stages and (self.eval_cfg.tasks or self.eval_cfg.pairwise.enabled):
                with self.timed("evaluate"):
                    self.eval_summary = self.evaluate()
        finally:
            self.pool.release()
        summary = build_summary(
            self.cfg, self.rounds, self.metrics, self.pool, self.cache, len(seeds)
        )
        summary.update(self.hardware)
        if self.filter_counts:
            summary.update({f"filter/{k}": v for k, v in self.filter_counts.items()})
        if self.train_summary:
            summary.update(self.train_summary)
        if self.eval_summary:
            summary.update(self.eval_summary)
        summary.update(self.intervals(summary))
        summary.update(self.time_summary())
        write_json_atomic(self.dir / "summary.json", summary)
        self.export(summary)
        if "report" in stages:
            from reporting.compare import compare

            with self.timed("report"):
                compare([self.dir], self.dir, quiet=True)  # report.md + plots/ for this job
            summary.update(self.time_summary())
            write_json_atomic(self.dir / "summary.json", summary)
            print_summary(summary, self.dir)
        return summary

    def intervals(self, summary: dict) -> dict:
        """The selected set's data metrics and a 95% CI beside every number with per-item data
        (reporting.items). Computed from files after the work is done: a failure here is logged
        and recorded (`intervals_error`), never the end of a finished run."""
        from reporting.items import intervals, job_items, selected_means

        out: dict = {}
        try:
            items = job_items(self.dir)  # the per-item files, read once
            if self.filter_counts:  # the data metrics of what the filter kept
                out.update(selected_means(items))
            out.update(intervals(self.dir, {**summary, **out}, items=items))
        except Exception as e:
            log.exception("intervals: not computed")
            out["intervals_error"] = f"{type(e).__name__}: {e}"
        return out

    def export(self, summary: dict) -> None:
        """The run's sets as a Hugging Face dataset folder, pushed when `export.push` names a
        repo (pipeline.export); a failed push is logged and recorded, the run stays a success."""
        exp = self.cfg.export
        if not exp.dataset:
            return
        from pipeline.export import export_dataset, push

        try:
            folder = export_dataset(self.dir, summary)
        except Exception as e:  # the sets are safe in their JSONL files; the run stays a success
            log.exception("export: the dataset folder was not written")
            summary["export/error"] = f"{type(e).__name__}: {e}"
            write_json_atomic(self.dir / "summary.json", summary)
            return
        if folder is None:
            return
        summary["export/dataset"] = folder.name
        if exp.push:
            try:
                summary["export/pushed"] = push(folder, str(exp.push), bool(exp.private))
            except UserFacingError as e:
                log.error("export: %s", e)
                summary["export/push_error"] = str(e)
        write_json_atomic(self.dir / "summary.json", summary)

    def follow(self) -> dict:
        """A rank other than 0 (pipeline.ranks): wait for rank 0's records, train with it, stop."""
        rank = launch_rank()
        log.info("rank %d: waiting for rank 0 to publish the training records", rank)
        state = ranks.wait_for_leader(self.dir)
        if state["state"] == "failed":
            raise UserFacingError(f"rank {rank}: rank 0 failed ({state.get('error')}); stopping")
        if state["state"] == "train":
            self.train_summary = self.train(ranks.train_records(self.dir, state))
        return {"status": "ok", "rank": rank}


def run_job(
    cfg: DictConfig,
    run_dir: Path,
    group: str | None = None,
    name: str | None = None,
    job: JobOverrides | None = None,
) -> dict | None:
    """Run one job; a user-facing error is logged as one line and recorded, never a traceback.
    The tracker (W&B) is finished whatever happens, so a failing sweep job leaves no open run."""
    summary, tracker, run = None, None, None
    try:
        _check_config(cfg)
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
        FAILED_JOBS.append({"dir": str(run_dir), "error": str(e)})
        summary = {"status": "failed", "error": str(e)}
        _record_end(run_dir, summary)
        return None
    except Exception as e:
        # A bug or a library's failure: the traceback goes to the log, the job is recorded as
        # failed and the sweep goes on, so its other jobs and the comparison still run; run.py
        # exits 1 (it reads every job's summary.json, whatever the launcher).
        log.exception("job failed: %s", e)
        error = f"{type(e).__name__}: {e}"
        FAILED_JOBS.append({"dir": str(run_dir), "error": error})
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


def _check_config(cfg: DictConfig) -> None:
    """Everything that can be checked before a model loads: missing values, every section against
    its schema (scenario and metrics included), every dtype and precision the job resolves."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        hint = " (e.g. data.path=seeds.jsonl)" if "data.path" in missing else ""
        raise ConfigError(f"missing value for {', '.join(sorted(missing))}{hint}")
    validate(cfg)
    from metrics.base import enabled_metrics

    build_scenario(cfg.scenario)  # its settings against its Config
    enabled_metrics(cfg.metrics)  # each metric's settings against its Config
    from metrics.base import filters

    if cfg.filter.name not in filters():
        raise unknown_option("filter", cfg.filter.name, filters())
    _check_role_dtypes(cfg)
    hardware_facts(cfg)


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


def _one_line(counts: dict) -> str:
    parts = []
    for k, v in counts.items():
        if isinstance(v, float):
            v = round(v, 2)
        if not isinstance(v, dict):
            parts.append(f"{k}={v}")
    return ", ".join(parts)
