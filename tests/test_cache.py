import json

import pytest

from core.cache import StepCache


class Counter:
    def __init__(self, fail_after: int | None = None):
        self.calls, self.items, self.fail_after = 0, 0, fail_after

    def __call__(self, ids):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.items += len(ids)
        return [{"value": f"out-{i}"} for i in ids]


def test_second_run_computes_nothing(tmp_path):
    ids = [f"i{k}" for k in range(10)]
    first, second = Counter(), Counter()
    a = StepCache(tmp_path).run("gen", {"model": "m"}, ids, first, chunk_size=3)
    b = StepCache(tmp_path).run("gen", {"model": "m"}, ids, second, chunk_size=3)
    assert a == b and first.items == 10 and second.items == 0


def test_other_payload_or_ids_miss(tmp_path):
    ids = ["a", "b"]
    c = Counter()
    StepCache(tmp_path).run("gen", {"model": "m"}, ids, c, chunk_size=8)
    StepCache(tmp_path).run("gen", {"model": "other"}, ids, c, chunk_size=8)
    StepCache(tmp_path).run("gen", {"model": "m"}, ["a", "b", "c"], c, chunk_size=8)
    StepCache(tmp_path).run("judge", {"model": "m"}, ids, c, chunk_size=8)
    assert c.items == 2 + 2 + 3 + 2


def test_interrupted_run_resumes_from_last_chunk(tmp_path):
    ids = [f"i{k}" for k in range(10)]
    dying = Counter(fail_after=2)  # two chunks of 3 land, the third dies
    with pytest.raises(KeyboardInterrupt):
        StepCache(tmp_path).run("gen", {"m": 1}, ids, dying, chunk_size=3)
    partial = list(tmp_path.glob("steps/gen/*/partial.jsonl"))
    assert len(partial) == 1
    lines = partial[0].read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ids[:6]
    cache = StepCache(tmp_path)
    rest = Counter()
    out = cache.run("gen", {"m": 1}, ids, rest, chunk_size=3)
    assert rest.items == 4 and list(out) == ids
    assert cache.reports[-1].status == "resumed" and cache.reports[-1].cached == 6
    assert not partial[0].exists() and partial[0].with_name("done.jsonl").exists()


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not unique"):
        StepCache(tmp_path).run("gen", {}, ["a", "a"], Counter(), chunk_size=2)


def test_the_runtime_that_decides_outputs_is_in_the_key(tmp_path, monkeypatch):
    """Switching the served model or server, vLLM's seed, the context length or the device gives
    other generations: each is part of the cache key (only when set, so older keys stay)."""
    from omegaconf import OmegaConf

    import engines.vllm_engine as vllm_engine
    from core.cache import StepCache
    from engines.pool import EnginePool

    def key(kind, model=None, **engine):
        cfg = OmegaConf.create({"kind": kind, "chunk_size": 8, "dtype": "float32", **engine})
        monkeypatch.setattr("engines.pool.resolve_engine_kind", lambda k: k)
        pool = EnginePool(cfg, StepCache(tmp_path), str(tmp_path))
        return pool.runtime_identity(OmegaConf.create(model or {"name": "m"}))

    monkeypatch.setattr(vllm_engine, "cuda_device_count", lambda: 0)
    assert key("hf") == {} and key("vllm", seed=0) == {}  # the defaults: keys as before
    assert key("vllm", seed=3) == {"seed": 3}
    assert key("hf", {"name": "m", "max_model_len": 2048}) == {"max_model_len": 2048}
    a = key("openai", base_url="http://127.0.0.1:8000/v1", served_model="a")
    b = key("openai", base_url="http://127.0.0.1:8000/v1", served_model="b")
    assert a != b and a["served_model"] == "a"
    monkeypatch.setattr(vllm_engine, "cuda_device_count", lambda: 1)
    assert key("hf") == {"device": "cuda"}


def test_a_switched_served_model_is_not_a_cache_hit(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from core.cache import StepCache
    from engines.base import Sampling
    from engines.pool import EnginePool
    from tests.fakes import FakeEngine, use_engine

    fake = use_engine(monkeypatch, FakeEngine())
    items = [("a", "Say hi.", Sampling(max_tokens=4))]
    model = OmegaConf.create({"name": "m", "hf_id": "org/m"})
    for served in ("model-a", "model-b", "model-a"):
        cfg = OmegaConf.create(
            {"kind": "openai", "chunk_size": 8, "base_url": "http://127.0.0.1:1/v1"}
            | {"served_model": served}
        )
        EnginePool(cfg, StepCache(tmp_path), str(tmp_path)).generate("s", model, items)
    assert fake.loads == 2  # the third call is model-a's cached result


CONCURRENT = """
import json, os, sys, time
sys.path.insert(0, sys.argv[3])
from core.cache import StepCache

calls = sys.argv[2]

def compute(ids):
    with open(calls, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "ids": ids}) + "\\n")
    time.sleep(0.5)
    return [{"value": "out-" + i} for i in ids]

ids = ["i%d" % k for k in range(6)]
res = StepCache(sys.argv[1]).run("gen", {"model": "m"}, ids, compute, chunk_size=2)
print("RESULT " + json.dumps(res, sort_keys=True))
"""


def test_two_processes_compute_a_shared_step_once(tmp_path):
    """Two jobs of a sweep start the same step at once (real processes): one computes it, the
    other waits on the step's lock and reads the result; nothing is computed twice and
    done.jsonl holds every id once (before, both computed it and their renames raced)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = tmp_path / "job.py"
    script.write_text(CONCURRENT)
    calls = tmp_path / "calls.jsonl"
    cmd = [sys.executable, str(script), str(tmp_path / "cache"), str(calls), str(ROOT)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [line for out in outs for line in out.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2 and results[0] == results[1]
    computed = [i for line in calls.read_text().splitlines() for i in json.loads(line)["ids"]]
    assert sorted(computed) == [f"i{k}" for k in range(6)]  # each id once, by one process
    assert len({json.loads(line)["pid"] for line in calls.read_text().splitlines()}) == 1
    (done,) = (tmp_path / "cache" / "steps" / "gen").glob("*/done.jsonl")
    assert sorted(json.loads(x)["id"] for x in done.read_text().splitlines()) == sorted(computed)


@pytest.mark.slow
def test_a_parallel_sweep_computes_its_shared_steps_once(tmp_path, bundled_model_dir):
    """Two jobs of a joblib sweep (two processes, the bundled model) evolve the same seeds at
    once: one computes each round, the other waits and reads it."""
    from tests.conftest import MODELS_DIR, run_cli

    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "filter=random,length",  # two jobs, identical up to the filter
            "stages=[evolve]",
            "rounds=2",
            "engine=hf",
            "data.limit=2",
            "generation.evolve.max_tokens=32",
            "logger=none",
            "hydra/launcher=local",
            f"hydra.sweep.dir={sweep}",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
        ]
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summaries = [json.loads((sweep / f"{k}" / "summary.json").read_text()) for k in (0, 1)]
    assert sum(s["cache/items_computed"] for s in summaries) == 4  # 2 seeds x 2 rounds, once
    assert sum(s["cache/hits"] for s in summaries) == 2  # the other job's two rounds
    # (Whether the second job waited on a lock or came after depends on timing; the lock itself
    # is tested deterministically above.)


def test_generation_chunks_are_sized_for_the_device():
    """engine.chunk_size=auto: a vLLM engine on GPUs gets thousands of prompts per call (a call
    of 64 capped vLLM at 64 sequences and waited for the slowest of every 64); on the CPU the
    calls stay small; a number is kept as given."""
    from core.schemas import EngineConfig
    from engines.pool import chunk_size_for
    from tests.conftest import compose_cfg

    assert compose_cfg().engine.chunk_size == "auto"
    assert chunk_size_for("auto", "vllm", gpus=8) == 2048
    assert chunk_size_for("auto", "vllm", gpus=0) == 64
    assert chunk_size_for("auto", "openai", 0, {"max_concurrency": 32}) == 256
    assert chunk_size_for("auto", "hf", 1, {"batch_size": 16}) == 64
    assert chunk_size_for(8, "vllm", gpus=8) == 8
    with pytest.raises(Exception, match="chunk_size"):
        EngineConfig(chunk_size=0)
