"""GPU memory between stages: releasing an engine or closing a scorer frees what it held (on a
CPU the freeing is a garbage collection; CUDA's side is checked against a stand-in)."""

from __future__ import annotations

import gc
import time
import weakref

from omegaconf import OmegaConf

import engines.memory as memory
import engines.pool as engine_pool
from core.cache import StepCache
from engines.pool import EnginePool


class FakeCuda:
    def __init__(self):
        self.calls: list[str] = []

    def empty_cache(self):
        self.calls.append("empty_cache")

    def ipc_collect(self):
        self.calls.append("ipc_collect")

    def device_count(self):
        return 2

    def mem_get_info(self, i):
        return (10 + i) * 2**30, 80 * 2**30


def test_free_gpu_memory_collects_and_empties_the_cuda_cache(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setattr(memory, "_cuda", lambda: cuda)
    memory.free_gpu_memory()
    assert cuda.calls == ["empty_cache", "ipc_collect"]
    assert memory.gpu_memory_report() == {
        "cuda:0": {"free": 10 * 2**30, "total": 80 * 2**30},
        "cuda:1": {"free": 11 * 2**30, "total": 80 * 2**30},
    }


def test_on_a_cpu_freeing_is_quick_and_there_is_nothing_to_report(monkeypatch):
    monkeypatch.setattr(memory, "_cuda", lambda: None)
    t0 = time.perf_counter()
    memory.free_gpu_memory()
    assert time.perf_counter() - t0 < 5
    assert memory.gpu_memory_report() == {}


def test_releasing_an_engine_frees_gpu_memory(tmp_path, monkeypatch):
    freed = []

    class Engine:
        name = "fake"

        def close(self):
            freed.append("closed")

    monkeypatch.setattr(memory, "free_gpu_memory", lambda: freed.append("freed"))
    monkeypatch.setattr(engine_pool, "build_engine", lambda *a: Engine())
    monkeypatch.setattr(engine_pool, "resolve_engine_kind", lambda k: k)
    cfg = OmegaConf.create({"kind": "hf", "dtype": "float32"})
    pool = EnginePool(cfg, StepCache(tmp_path), str(tmp_path))
    pool.engine_for(OmegaConf.create({"name": "m", "path": "/ckpt/m"}))
    pool.release()
    assert freed == ["closed", "freed"] and pool._loaded is None


def test_closing_the_ifd_scorer_drops_its_model_and_frees_memory(monkeypatch):
    from metrics.ifd import IFDScorer

    class Model:
        pass

    freed = []
    monkeypatch.setattr(memory, "free_gpu_memory", lambda: freed.append(True))
    scorer = IFDScorer.__new__(IFDScorer)  # the model itself is not what is tested
    scorer.model = Model()
    ref = weakref.ref(scorer.model)
    scorer.close()
    gc.collect()
    assert ref() is None and freed == [True]
    scorer.close()  # closing twice is harmless
