"""Temperature calibration (evolvers.calibration): the top-1 probability at a temperature from
top-K log-probabilities, the solver, a run with a scripted engine, and the bundled model."""

import math

import pytest
import torch

import engines.pool as engine_pool
from core.config import validate
from core.errors import ConfigError
from engines.base import per_prompt
from evolvers.calibration import mean_top1, solve_temperature, top1_at
from pipeline.runner import Run
from tests.conftest import MODELS_DIR, compose_cfg
from tests.fakes import FakeEngine


def _exact(logits: torch.Tensor, t: float) -> float:
    return float(torch.softmax(logits / t, -1).max())


def _tops(logits: torch.Tensor, k: int | None = None) -> list[float]:
    return sorted(torch.log_softmax(logits, -1).tolist(), reverse=True)[:k]


def test_top1_at_is_exact_with_the_whole_vocabulary():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=g, dtype=torch.float64) * 3
    for t in (0.1, 0.5, 0.7, 1.0, 2.0):
        assert top1_at(_tops(logits), t, 50) == pytest.approx(_exact(logits, t), rel=1e-9)


@pytest.mark.parametrize(
    "name,logits",
    [
        ("zipf", -1.1 * torch.log(torch.arange(1, 50001, dtype=torch.float64))),
        ("geometric", -0.3 * torch.arange(0, 50000, dtype=torch.float64)),
    ],
)
def test_the_tail_beyond_top_k_is_extrapolated_closely(name, logits):
    # 20 of 50000 tokens returned; the tail's mass is known, its shape extrapolated.
    tops = _tops(logits, 20)
    assert top1_at(tops, 1.0, 50000) == pytest.approx(_exact(logits, 1.0), rel=1e-9)
    for t in (0.3, 0.5, 0.7, 1.5):
        assert abs(top1_at(tops, t, 50000) - _exact(logits, t)) < 0.005, t
    # Without the vocabulary size the tail is tokens at the 20th probability: still exact at T=1.
    assert top1_at(tops, 1.0, 0) == pytest.approx(_exact(logits, 1.0), rel=1e-9)


def _probes(seed: int, n: int = 5) -> list:
    g = torch.Generator().manual_seed(seed)
    return [([_tops(torch.randn(40, generator=g) * 4)] * 3, 40) for _ in range(n)]


def test_solver_recovers_a_known_temperature_and_reports_bounds():
    probes = _probes(1)
    target = mean_top1(probes, 0.9)
    t, at_bound = solve_temperature(probes, target, 0.05, 3.0)
    assert t == pytest.approx(0.9, abs=1e-6) and not at_bound
    assert solve_temperature(probes, 0.999999, 0.05, 3.0) == (0.05, True)
    assert solve_temperature(probes, 1e-6, 0.05, 3.0) == (3.0, True)
    values = [mean_top1(probes, 0.1 * k) for k in range(1, 30)]
    assert values == sorted(values, reverse=True)  # falls as T rises


@pytest.mark.slow
def test_top_20_against_the_whole_vocabulary_of_the_bundled_model(hf_engine):
    """The documented accuracy: with 20 tokens per position, within 0.01 of the whole
    vocabulary's value up to T=1 on the bundled model's evolution prompts; more tokens, closer."""
    from core.data import load_seeds
    from engines.base import Sampling
    from evolvers.base import build_scenario

    cfg = compose_cfg(["data.limit=6"])
    prompts = [p for _, p in build_scenario(cfg.scenario).first_prompts(load_seeds(cfg.data, 0))]
    vocab = hf_engine.model.config.vocab_size
    gens = hf_engine.generate(prompts, Sampling(max_tokens=5, top1_logprobs=5, top_logprobs=vocab))
    assert all(g.vocab_size == vocab and len(g.top_logprobs[0]) == vocab for g in gens)
    whole = [(g.top_logprobs, vocab) for g in gens]

    def cut(k):
        return [([pos[:k] for pos in g.top_logprobs], vocab) for g in gens]

    for t in (0.3, 0.5, 0.7, 1.0):
        assert abs(mean_top1(cut(20), t) - mean_top1(whole, t)) < 0.01, t
    err = [abs(mean_top1(cut(k), 1.5) - mean_top1(whole, 1.5)) for k in (20, 500)]
    assert err[1] < err[0]


class TopK(FakeEngine):
    """The fake engine with a fixed distribution at every position: 0.6, 0.2, 0.1, 0.05 ..."""

    DIST = [math.log(p) for p in (0.6, 0.2, 0.1, 0.05, 0.03, 0.02)]

    def generate(self, prompts, params):
        gens = super().generate(prompts, params)
        for g, p in zip(gens, per_prompt(params, len(prompts))):
            if p.top_logprobs:
                g.top_logprobs = [self.DIST[: p.top_logprobs]] * p.top1_logprobs
                g.vocab_size = 6
        return gens


def _run_cfg(tmp_path, *extra):
    """Four seeds, round 1's evolution only, calibrated."""
    base = ["engine=hf", f"cache_dir={tmp_path / 'c'}", f"models_dir={MODELS_DIR}"]
    base += ["data.limit=4", "rounds=1", "stages=[evolve]", "calibration.enabled=true"]
    return compose_cfg([*base, *extra])


def test_a_run_evolves_at_the_calibrated_temperature(tmp_path, monkeypatch):
    fake = TopK()
    monkeypatch.setattr(engine_pool, "build_engine", lambda *args: fake)
    cfg = _run_cfg(tmp_path, "calibration.target=0.4", "calibration.top_logprobs=6")
    s = Run(cfg, tmp_path / "run").run()
    t = s["round_1/calibration/temperature"]
    assert s["round_1/calibration/top1_after"] == pytest.approx(0.4, abs=1e-3)
    assert s["round_1/calibration/top1_before"] == pytest.approx(mean_top1([([TopK.DIST], 6)], 0.7))
    assert t == pytest.approx(solve_temperature([([TopK.DIST], 6)], 0.4, 0.05, 3.0)[0], abs=1e-4)
    evolve = [p for text, p in zip(fake.prompts_seen, fake.params_seen) if p.max_tokens > 5]
    assert len(evolve) == 4 and {p.temperature for p in evolve} == {t}


def test_calibration_settings_are_checked_at_start_up():
    with pytest.raises(ConfigError, match="exactly one of calibration.target"):
        validate(compose_cfg(["calibration.enabled=true"]))
    with pytest.raises(ConfigError, match=r"calibration.target: must be in \(0, 1\)"):
        validate(compose_cfg(["calibration.target=1.5"]))


@pytest.mark.slow
def test_the_bundled_model_calibrated_to_itself_keeps_its_temperature(tmp_path):
    """dtype auto (bf16 where the CPU has it): calibrated against its own top-1 at T=0.7, the
    bundled model gets T=0.7 back; against a number, it reaches that number."""
    base = ["generation.evolve.max_tokens=24", "calibration.dev_size=4"]
    own = Run(
        _run_cfg(tmp_path, *base, "calibration.target_model=smollm2_135m"), tmp_path / "a"
    ).run()
    assert own["round_1/calibration/temperature"] == pytest.approx(0.7, abs=2e-3)
    assert own["round_1/calibration/target_from"] == "smollm2_135m"
    assert 0 < own["round_1/calibration/top1_raw"] < 1
    hot = Run(_run_cfg(tmp_path, *base, "calibration.target=0.3"), tmp_path / "b").run()
    assert hot["round_1/calibration/top1_after"] == pytest.approx(0.3, abs=1e-3)
    assert hot["round_1/calibration/temperature"] > 0.7 and hot["round_1/evolve/attempted"] == 4
