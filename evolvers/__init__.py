"""Evolution scenarios; each builds prompts and parses replies, the pipeline generates."""

from __future__ import annotations

from typing import Any

from pipeline.errors import unknown_option

SCENARIOS = ("evol_instruct",)


def build_scenario(scenario_cfg: Any):
    name = scenario_cfg.name
    if name == "evol_instruct":
        from evolvers.evol_instruct import EvolInstruct

        return EvolInstruct(scenario_cfg)
    raise unknown_option("scenario", name, SCENARIOS)
