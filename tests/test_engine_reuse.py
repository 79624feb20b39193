"""The engine pool reuses a loaded engine by the same identity the cache keys its results by: a
model of the same name with other weights gets its own engine (and its own cache entries)."""

from __future__ import annotations

from omegaconf import OmegaConf

import engines.pool as engine_pool
from core.cache import StepCache
from engines.base import Generation, Sampling
from engines.pool import EnginePool


class WeightsEngine:
    """Answers with the weights it was loaded from (the model's `path`)."""

    name = "fake"

    def __init__(self, model_cfg):
        self.weights = model_cfg.get("path") or model_cfg.get("hf_id")
        self.closed = False

    def generate(self, prompts, params):
        return [Generation(f"from {self.weights}", 2, "stop") for _ in prompts]

    def close(self):
        self.closed = True


def _pool(tmp_path, monkeypatch, **engine):
    built = []

    def build(cfg, model_cfg, models_dir):
        built.append(WeightsEngine(model_cfg))
        return built[-1]

    monkeypatch.setattr(engine_pool, "build_engine", build)
    monkeypatch.setattr(engine_pool, "resolve_engine_kind", lambda k: k)
    cfg = OmegaConf.create({"kind": "hf", "chunk_size": 8, "dtype": "float32", **engine})
    return EnginePool(cfg, StepCache(tmp_path / "cache"), str(tmp_path)), built


ITEMS = [("q", "Say hi.", Sampling(max_tokens=4))]


def test_a_model_of_the_same_name_with_other_weights_gets_its_own_engine(tmp_path, monkeypatch):
    pool, built = _pool(tmp_path, monkeypatch)
    evolver = OmegaConf.create({"name": "m", "path": "/ckpt/evolver", "role": "model"})
    responder = OmegaConf.create({"name": "m", "path": "/ckpt/other", "role": "respond.model"})
    assert pool.generate("evolve", evolver, ITEMS)["q"].text == "from /ckpt/evolver"
    assert pool.generate("respond", responder, ITEMS)["q"].text == "from /ckpt/other"
    assert len(built) == 2 and built[0].closed  # released, not answering for the other path
    assert pool.engine_key(evolver) != pool.engine_key(responder)


def test_two_roles_of_one_model_share_its_engine(tmp_path, monkeypatch):
    pool, built = _pool(tmp_path, monkeypatch)
    evolver = OmegaConf.create({"name": "m", "path": "/ckpt/m", "role": "model"})
    responder = OmegaConf.create(
        {"name": "m", "path": "/ckpt/m", "role": "respond.model", "select": "+model@x=m"}
    )
    pool.generate("evolve", evolver, ITEMS)
    pool.generate("respond", responder, [("r", "Answer.", Sampling(max_tokens=4))])
    assert len(built) == 1 and pool.engine_for(responder) is built[0]


def test_settings_that_change_the_loaded_engine_reload_it(tmp_path, monkeypatch):
    pool, built = _pool(tmp_path, monkeypatch)
    m = OmegaConf.create({"name": "m", "path": "/ckpt/m"})
    pool.engine_for(m)
    pool.engine_for(OmegaConf.create({"name": "m", "path": "/ckpt/m", "max_model_len": 512}))
    pool.engine_for(OmegaConf.create({"name": "m", "path": "/ckpt/m", "engine": {"batch_size": 2}}))
    assert len(built) == 3


def test_an_adopted_engine_serves_its_model(tmp_path, monkeypatch):
    pool, built = _pool(tmp_path, monkeypatch)
    m = OmegaConf.create({"name": "m", "path": "/ckpt/m"})
    mine = WeightsEngine(m)
    pool.adopt(m, mine)
    assert pool.engine_for(m) is mine and not built
    assert pool.engine_for(OmegaConf.create({"name": "m", "path": "/ckpt/x"})) is not mine
    pool.adopt("m", mine)  # by name: every model called m (the caller vouches for it)
    assert pool.engine_for(OmegaConf.create({"name": "m", "path": "/ckpt/y"})) is mine


def test_the_score_stage_runs_the_metrics_of_one_engine_together(tmp_path, monkeypatch):
    """The responder is the evolver, so it is loaded when scoring starts; the judge is another
    model. In the metrics' own order (judge 10, confidence 11) the judge unloaded the evolver and
    the confidence metric loaded it again: three loads. Grouped by engine: two."""
    from metrics.stages import by_engine

    pool, built = _pool(tmp_path, monkeypatch)
    evolver = OmegaConf.create({"name": "evo", "path": "/ckpt/evo"})
    judge = OmegaConf.create({"name": "judge", "path": "/ckpt/judge"})
    pool.engine_for(evolver)

    class Metric:
        def __init__(self, name, order, model):
            self.name, self.order, self.model = name, order, model

        def engine_model(self):
            return self.model

    metrics = [Metric("judge", 10, judge), Metric("confidence", 11, evolver)]
    metrics.append(Metric("ifd", 30, None))
    ordered = by_engine(metrics, pool)
    assert [m.name for m in ordered] == ["confidence", "judge", "ifd"]
    for m in ordered:
        if m.engine_model() is not None:
            pool.engine_for(m.engine_model())
    assert [e.weights for e in built] == ["/ckpt/evo", "/ckpt/judge"]
