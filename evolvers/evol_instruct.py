"""Evol-Instruct (SPEC §1): rewrite each instruction with one method per item and round.

The method for item i (its seed's index) in round r (0-based) is M[(i + r) mod K], so an SLM run and
an LLM run evolve the same seeds with the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import unknown_option
from core.records import Record
from core.templates import fill, load_template, load_yaml
from engines.base import Chat, Generation
from evolvers.base import (
    SCENARIOS,
    TEMPLATE_DIR,
    Generate,
    Scenario,
    ScenarioConfig,
    child_id,
    child_record,
    clean_evolution,
)

BREADTH = "breadth"


@dataclass
class EvolInstructConfig(ScenarioConfig):
    methods: list[str] = field(
        default_factory=lambda: ["add_constraints", "deepen", "concretize", "reasoning"]
    )
    use_breadth: bool = False
    # null: the bundled template; a path: your own (same slots)
    templates: dict[str, str | None] = field(
        default_factory=lambda: {"depth": None, "breadth": None, "respond": None}
    )


def method_names(cfg: EvolInstructConfig) -> list[str]:
    methods = list(cfg.methods)
    if cfg.use_breadth:
        methods.append(BREADTH)
    return methods


def method_for(seed_index: int, round_idx: int, methods: list[str]) -> str:
    """`round_idx` is 0-based here (round 1 of the run is r = 0)."""
    return methods[(seed_index + round_idx) % len(methods)]


@SCENARIOS.register()
class EvolInstruct(Scenario):
    """Builds evolution prompts and parses evolutions; the pipeline does the generating."""

    name = "evol_instruct"
    Config = EvolInstructConfig

    def __init__(self, cfg: EvolInstructConfig):
        super().__init__(cfg)
        templates = cfg.templates
        self.methods = method_names(cfg)
        self.method_text = load_yaml(
            TEMPLATE_DIR, "evol_instruct/methods.yaml", templates.get("methods")
        )
        for m in self.methods:
            if m != BREADTH and m not in self.method_text:
                raise unknown_option("Evol-Instruct method", m, [*self.method_text, BREADTH])
        self.depth = load_template(TEMPLATE_DIR, "evol_instruct/depth.txt", templates.get("depth"))
        self.breadth = load_template(
            TEMPLATE_DIR, "evol_instruct/breadth.txt", templates.get("breadth")
        )

    def prompt(self, parent: Record, method: str) -> Chat:
        if method == BREADTH:
            text = fill(self.breadth, instruction=parent["instruction"])
        else:
            text = fill(
                self.depth, method=self.method_text[method], instruction=parent["instruction"]
            )
        return [{"role": "user", "content": text}]

    def evolution_prompt(self, record: Record) -> Chat:
        """The prompt that produced an evolved record (for confidence and reward probes)."""
        meta = record["meta"]
        return self.prompt({"instruction": meta["parent_instruction"]}, meta["method"])

    def first_prompts(self, seeds: list[Record]) -> list[tuple[str, Chat]]:
        return [(child_id(p, 1), prompt) for p, _, prompt in self.plan(seeds, 1)]

    def plan(self, parents: list[Record], round_num: int) -> list[tuple[Record, str, Chat]]:
        """(parent, method, prompt) for every parent; `round_num` is 1-based."""
        out = []
        for p in parents:
            method = method_for(p["meta"]["seed_index"], round_num - 1, self.methods)
            out.append((p, method, self.prompt(p, method)))
        return out

    def evolve_round(
        self,
        parents: list[Record],
        round_num: int,
        model_name: str,
        generate: Generate,
        greedy: Generate,
    ) -> list[Record]:
        """One round: every parent evolved once; failures kept as `parse_ok: false` records."""
        plan = self.plan(parents, round_num)
        ids = [child_id(p, round_num) for p, _, _ in plan]
        gens = generate([(i, prompt) for i, (_, _, prompt) in zip(ids, plan)])
        return [
            evolved_record(p, method, round_num, model_name, gens[i], i)
            for i, (p, method, _) in zip(ids, plan)
        ]


def evolved_record(
    parent: Record, method: str, round_num: int, model: str, gen: Generation, rid: str
) -> Record:
    instruction = clean_evolution(gen.text)
    return child_record(parent, instruction, method, round_num, model, gen, rid)
