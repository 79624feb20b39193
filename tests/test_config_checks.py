"""Config checked once at start-up and then used as checked (no setting silently replaced, none
reported that did not run), out-of-tree stages' own sections, and metrics that summarize from
their arguments alone (no state kept between `score` and `summarize`)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.config import role_model, validate
from core.errors import ConfigError
from core.schemas import SCHEDULERS, STRATEGIES
from core.stage import STAGES, Stage
from tests.conftest import compose_cfg


@dataclass
class TallyConfig:
    minimum: int = 1

    def __post_init__(self) -> None:
        if self.minimum < 0:
            raise ConfigError("minimum: must be >= 0")


class Tally(Stage):
    name = "tally"
    Config = TallyConfig


class Untyped(Stage):
    name = "untyped"
    section = "untyped_settings"


@pytest.fixture
def stages():
    STAGES.add(Tally.name, Tally)
    STAGES.add(Untyped.name, Untyped)
    yield
    STAGES.remove(Tally.name)
    STAGES.remove(Untyped.name)


# -- a stage's own section -------------------------------------------------------------------------
def test_a_registered_stage_names_a_top_level_section(stages):
    validate(compose_cfg(["+tally.minimum=3"]))
    validate(compose_cfg(["+untyped_settings.anything=1"]))  # a section without a schema
    with pytest.raises(ConfigError, match=r"tally\.minimum: must be >= 0"):
        validate(compose_cfg(["+tally.minimum=-1"]))
    with pytest.raises(ConfigError, match=r"unknown key tally\.minimun; valid: minimum"):
        validate(compose_cfg(["+tally.minimun=3"]))


def test_an_unknown_top_level_key_lists_the_stage_sections_too(stages):
    with pytest.raises(ConfigError) as exc:
        validate(compose_cfg(["+tallly.minimum=3"]))
    msg = str(exc.value)
    assert "unknown top-level config key 'tallly'" in msg
    assert "rounds" in msg and "plugins" in msg and "tally" in msg and "untyped_settings" in msg


def test_without_its_stage_the_section_is_unknown():
    with pytest.raises(ConfigError, match="unknown top-level config key 'tally'"):
        validate(compose_cfg(["+tally.minimum=3"]))


# -- train: checked at start-up, not when training starts ----------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.strategy=fsdp9", "train.strategy: 'fsdp9' is not one of auto, ddp"),
        ("train.scheduler=cosin", "train.scheduler: 'cosin' is not one of cosine, linear"),
    ],
)
def test_train_settings_fail_at_start_up(override, message):
    with pytest.raises(ConfigError) as exc:
        validate(compose_cfg([override]))
    assert message in str(exc.value)


def test_every_known_value_passes_and_each_scheduler_is_built():
    import torch

    from training.module import make_scheduler
    from training.run import STRATEGIES as TRAIN_STRATEGIES

    assert TRAIN_STRATEGIES == STRATEGIES
    for s in STRATEGIES:
        validate(compose_cfg([f"train.strategy={s}"]))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = {}
    for name in SCHEDULERS:
        validate(compose_cfg([f"train.scheduler={name}"]))
        sched = make_scheduler(name, opt, 0, 10)
        for _ in range(5):
            opt.step()
            sched.step()
        lrs[name] = sched.get_last_lr()[0]
    assert lrs["cosine"] == pytest.approx(0.5) and lrs["linear"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="unknown train.scheduler 'cosin'; valid: cosine"):
        make_scheduler("cosin", opt, 0, 10)


# -- hardware/ifd_dtype: what ran ------------------------------------------------------------------
def test_ifd_on_the_engine_reports_the_engines_format():
    from engines.precision import Hardware
    from reporting.summary import hardware_facts

    xeon = Hardware(cpu_model="Xeon", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
    own = hardware_facts(compose_cfg(["metrics.ifd.dtype=float32"]), xeon)
    assert own["hardware/ifd_dtype"] == "float32"
    engine = ["metrics.ifd.backend=engine", "metrics.ifd.dtype=float32"]
    s = hardware_facts(compose_cfg(engine), xeon)  # metrics.ifd.dtype is not what ran
    assert s["hardware/ifd_dtype"] == "bfloat16" == s["hardware/engine_dtype"]
    s = hardware_facts(compose_cfg([*engine, "engine.dtype=float16"]), xeon)
    assert s["hardware/ifd_dtype"] == "float16"
    s = hardware_facts(compose_cfg([*engine, "metrics.ifd.model=qwen2.5_7b"]), xeon)
    assert s["hardware/ifd_dtype"] == "bfloat16"  # the scorer model's own (auto) format
    with pytest.raises(ConfigError, match=r"metrics\.ifd\.model\.dtype"):
        hardware_facts(
            compose_cfg(
                [*engine, "+model@metrics.ifd.model=qwen2.5_7b", "metrics.ifd.model.dtype=fp9"]
            ),
            xeon,
        )


# -- metrics summarize from their arguments ---------------------------------------------------
class _Ctx:
    """What a metric's summarize may use of the stage context: the config's role models."""

    def __init__(self, cfg):
        self.cfg = cfg

    def role(self, value, key):
        return role_model(self.cfg, value, key)


def _records(n=3):
    return [
        {"id": f"r{i}", "instruction": f"Say {'word ' * (i + 1)}", "input": "", "output": "ok"}
        for i in range(n)
    ]


def test_ifd_summarizes_from_its_rows_and_records():
    from metrics.base import enabled_metrics
    from metrics.ifd import IFDMetric

    cfg = compose_cfg(["metrics.ifd.missing_output=skip"])
    (mcfg,) = [c for m, c in enabled_metrics(cfg.metrics) if m is IFDMetric]
    records = [*_records(), {"id": "x", "instruction": "Q", "input": "", "output": ""}]
    rows = {
        f"r{i}": {"ifd": 0.5 + i, "ic_ifd": 0.1, "loss_q": 2.0, "q_tokens": 4, "truncated": False}
        | {"instruction_tokens": 3}
        for i in range(3)
    }
    fresh = IFDMetric(mcfg, _Ctx(cfg))  # never scored: nothing stashed to read
    out = fresh.summarize("round_1", records, rows)
    assert out["model"] == cfg.model.name and out["skipped_no_output"] == 1
    assert out["ifd_mean"] == pytest.approx(1.5) and out["ifd_above_1"] == 2
    cfg = compose_cfg(["metrics.ifd.model=qwen2.5_7b"])
    (mcfg,) = [c for m, c in enabled_metrics(cfg.metrics) if m is IFDMetric]
    assert IFDMetric(mcfg, _Ctx(cfg)).summarize("s", _records(), rows)["model"] == "qwen2.5_7b"


def test_the_judge_summarizes_from_its_rows():
    from metrics.base import enabled_metrics
    from metrics.judge import JudgeMetric

    cfg = compose_cfg(["metrics.judge.model=qwen2.5_7b"])
    (mcfg,) = [c for m, c in enabled_metrics(cfg.metrics) if m is JudgeMetric]
    rows = {"a": {"complexity": 40.0, "difficulty": "hard"}, "b": {"complexity": None}}
    out = JudgeMetric(mcfg, _Ctx(cfg)).summarize("round_1", _records(2), rows)
    assert out["model"] == "qwen2.5_7b" and out["complexity_mean"] == 40.0
    assert out["complexity_failed"] == 1 and out["difficulty"]["counts"]["hard"] == 1


def test_the_reward_metric_summarizes_from_its_rows_and_records():
    from metrics.reward import RewardConfig, RewardMetric

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return type("Enc", (), {"input_ids": text.split()})()

    metric = RewardMetric(RewardConfig(enabled=True, model="org/rm"), _Ctx(compose_cfg()))
    metric._tok = Tok()  # the reward model's tokenizer, loaded once per stage
    rows = {"r0": {"reward": 1.0}, "r2": {"reward": 3.0}}
    out = metric.summarize("round_1", _records(), rows)
    assert out["model"] == "org/rm" and out["mean"] == 2.0 and out["scored"] == 2
