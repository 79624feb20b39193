"""The evolution stages: calibrate, evolve, cut, respond, verify (core.stage).

`evolve` runs the scenario for `rounds` rounds (a failed evolution ends its lineage unless the
scenario keeps failures); `calibrate` (with evolve, when `calibration.enabled`) sets its sampling
temperature first; `cut` (with evolve, for scenarios whose records have constraints: AutoIF) cuts
the last round to a number of constraints before anything answers it; `respond` answers every
usable record with one responder (greedy); `verify` (with respond) keeps what the scenario's
verification keeps. Every generation is cached step by step, so none of these has a stage key.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

from core.errors import DataError
from core.records import Record, write_jsonl_atomic, write_text_atomic
from core.schemas import CalibrationConfig, RespondConfig
from core.stage import STAGES, Resources, Stage, StageResult
from evolvers.calibration import calibrate
from evolvers.respond import respond_counts, responded_record

log = logging.getLogger(__name__)


def effective_rounds(scenario: Any, rounds: int) -> int:
    """`rounds`, capped by the scenario (`Scenario.max_rounds`: AutoIF is one pass)."""
    cap = getattr(scenario, "max_rounds", None)
    return min(int(rounds), cap) if cap else int(rounds)


@STAGES.register()
class Calibrate(Stage):
    name = "calibrate"
    order = 5
    part_of = "evolve"
    section = "calibration"
    Config = CalibrationConfig
    needs = ("seeds",)
    produces = ("evolve_params",)

    def active(self, inputs: dict[str, Any]) -> bool:
        return bool(self.cfg.enabled)

    def resources(self) -> Resources:
        models = ["model"] + (["calibration.target_model"] if self.cfg.target_model else [])
        return Resources(models=tuple(models))

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        found = calibrate(ctx, ctx.scenario, inputs["seeds"], ctx.cfg)
        ctx.add_metrics("round_1", "calibration", found)
        params = OmegaConf.merge(ctx.cfg.generation.evolve, {"temperature": found["temperature"]})
        return StageResult(artifacts={"evolve_params": params})


@STAGES.register()
class Evolve(Stage):
    name = "evolve"
    order = 10
    section = "scenario"
    scenario_settings = True
    needs = ("seeds", "evolve_params")
    produces = ("sets", "rounds", "constraints")

    def resources(self) -> Resources:
        return Resources(models=("model",))

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        cfg, scenario = ctx.cfg, ctx.scenario
        rounds = effective_rounds(scenario, cfg.rounds)
        if rounds < int(cfg.rounds):
            log.warning(
                "scenario %s runs %d round(s): rounds=%d capped", scenario.name, rounds, cfg.rounds
            )
        params = inputs.get("evolve_params") or cfg.generation.evolve
        parents, sets = inputs["seeds"], {}
        for r in range(1, rounds + 1):
            if not parents:
                log.warning("round %d: nothing left to evolve (every parent failed)", r)
                break
            generate = ctx.generator(
                f"evolve_{cfg.scenario.name}", cfg.model, params, f"round {r} evolve"
            )
            greedy = ctx.generator(
                f"evolve_{cfg.scenario.name}_greedy",
                ctx.role(*scenario.greedy_role()),
                cfg.generation.greedy,
                f"round {r} analysis",
            )
            evolved = scenario.evolve_round(parents, r, cfg.model.name, generate, greedy)
            for fname, text in scenario.artifacts().items():
                write_text_atomic(ctx.dir / fname, text)
            name = f"round_{r}"
            write_jsonl_atomic(ctx.dir / name / "evolved.jsonl", evolved)
            counts = scenario.counts(evolved)
            if self.cfg.keep_failed:  # failures with text go on (ScenarioConfig.keep_failed)
                counts["kept_failed"] = sum(
                    not e["meta"].get("parse_ok", True) and scenario.usable(e) for e in evolved
                )
            ctx.add_metrics(name, "evolve", counts)
            sets[name] = evolved
            parents = ctx.usable(evolved)  # failures end their lineage (unless kept)
        out: dict[str, Any] = {"sets": sets, "rounds": rounds}
        if sets and hasattr(scenario, "cut_constraints"):  # what another arm's cut reads
            out["constraints"] = len(scenario.constraints(ctx.usable(list(sets.values())[-1])))
        return StageResult(artifacts=out)


@STAGES.register()
class Cut(Stage):
    """`scenario.equal_size_constraints` (AutoIF, SPEC §3.6): the last round's records cut to a
    seeded sample of N constraints (smallest: the smallest arm's count), each with all its
    queries, before the respond stage, so the responses, the scores and the set-level metrics are
    the cut set's, as the paper computed them. `<set>/cut.jsonl`; metrics.json › cut."""

    name = "cut"
    order = 15
    part_of = "evolve"
    section = "scenario"
    needs = ("sets", "constraints")
    produces = ("sets",)

    scenario_settings = True

    def active(self, inputs: dict[str, Any]) -> bool:
        size = getattr(self.cfg, "equal_size_constraints", None)
        return size is not None and bool(inputs.get("sets")) and "constraints" in inputs

    def arm_needs(self) -> tuple[str, ...]:
        smallest = getattr(self.cfg, "equal_size_constraints", None) == "smallest"
        return ("constraints",) if smallest else ()

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        scenario, sets = ctx.scenario, inputs["sets"]
        name = list(sets)[-1]
        records = ctx.usable(sets[name])
        own = int(inputs["constraints"])
        counts: dict[str, Any] = {"constraints_before": own, "records_before": len(records)}
        size = self.cfg.equal_size_constraints
        if size == "smallest":
            sizes = ctx.arm_sizes("constraints", own, "scenario.equal_size_constraints")
            counts["arm_sizes"] = sizes
            size = min(sizes.values())
        size = int(size)
        if size > own:
            raise DataError(
                f"scenario.equal_size_constraints={size} but this job kept only {own} "
                "constraints; lower it (or use smallest in a sweep), or evolve more "
                "(scenario.n_samples)"
            )
        kept = scenario.cut_constraints(records, size)
        counts.update(equal_size_constraints=size, constraints=size, records=len(kept))
        write_jsonl_atomic(ctx.dir / name / "cut.jsonl", kept)
        ctx.add_metrics(name, "cut", counts)
        return StageResult(artifacts={"sets": {**sets, name: kept}})


@STAGES.register()
class Respond(Stage):
    """Answer every usable record with `scenario.respond_prompt` (generation.greedy)."""

    name = "respond"
    order = 20
    Config = RespondConfig
    needs = ("sets",)
    produces = ("sets",)

    def resources(self) -> Resources:
        return Resources(models=("respond.model",))

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        model_cfg = ctx.role(self.cfg.model, "respond.model")
        out_sets: dict[str, list[Record]] = {}
        for name, records in inputs["sets"].items():
            todo = ctx.usable(records)
            generate = ctx.generator(
                "respond", model_cfg, ctx.cfg.generation.greedy, f"{name} respond"
            )
            gens = generate([(r["id"], ctx.scenario.respond_prompt(r)) for r in todo])
            out = [responded_record(r, gens[r["id"]], model_cfg.name) for r in todo]
            write_jsonl_atomic(ctx.dir / name / "responded.jsonl", out)
            ctx.add_metrics(name, "respond", respond_counts(out))
            out_sets[name] = out
        return StageResult(artifacts={"sets": out_sets})


@STAGES.register()
class Verify(Stage):
    """`scenario.verify`: its kept records go to `<set>/verified.jsonl` and on to the later
    stages, its counts to metrics.json › verify, its files into the set's folder. Its `generate`
    samples the responder (generation.evolve's temperature and top_p, generation.greedy's length)
    for scenarios that want more responses."""

    name = "verify"
    order = 25
    part_of = "respond"
    section = "respond"
    Config = RespondConfig
    needs = ("sets",)
    produces = ("sets",)

    def resources(self) -> Resources:
        return Resources(models=("respond.model",))

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        model_cfg = ctx.role(self.cfg.model, "respond.model")
        params = OmegaConf.merge(
            ctx.cfg.generation.evolve, {"max_tokens": ctx.cfg.generation.greedy.max_tokens}
        )
        out_sets = dict(inputs["sets"])
        for name, records in inputs["sets"].items():
            sample = ctx.generator("respond_sampled", model_cfg, params, f"{name} samples")
            result = ctx.scenario.verify(name, records, sample)
            if result is None:
                continue
            for fname, rows in result.files.items():
                write_jsonl_atomic(ctx.dir / name / fname, rows)
            write_jsonl_atomic(ctx.dir / name / "verified.jsonl", result.kept)
            ctx.add_metrics(name, "verify", result.counts)
            out_sets[name] = result.kept
        return StageResult(artifacts={"sets": out_sets})
