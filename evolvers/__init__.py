"""Evolution scenarios; each builds prompts and parses replies, the pipeline generates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import unknown_option

SCENARIOS = ("evol_instruct", "autoif", "auto_evol_instruct")
TEMPLATE_DIR = Path(__file__).parent / "templates"


def build_scenario(scenario_cfg: Any):
    name = scenario_cfg.name
    if name == "evol_instruct":
        from evolvers.evol_instruct import EvolInstruct

        return EvolInstruct(scenario_cfg)
    if name == "auto_evol_instruct":
        from evolvers.auto_evol_instruct import AutoEvolInstruct

        return AutoEvolInstruct(scenario_cfg)
    if name == "autoif":
        from evolvers.autoif import AutoIF

        return AutoIF(scenario_cfg)
    raise unknown_option("scenario", name, SCENARIOS)
