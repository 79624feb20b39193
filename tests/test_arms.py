"""Arms of a comparison (pipeline.arms): failed evolutions kept as the paper's code keeps them,
equal-size cuts (a given N, or the smallest arm of the sweep), and finding another arm's work."""

import json

import pytest

import engines.pool as engine_pool
from core.errors import ConfigError, DataError
from pipeline.arms import JobOverrides, arm_overrides, is_this_job, parse_overrides
from pipeline.runner import Run
from tests.conftest import MODELS_DIR, compose_cfg
from tests.fakes import FakeEngine, no_weights

SEEDS = [
    "Explain why the sky appears blue during the day.",
    "Write a short poem about autumn leaves.",
]
BASE = ["engine=hf", f"models_dir={MODELS_DIR}", "data.limit=6", "filter=none"]


def _overrides(tmp_path, *extra):
    return [*BASE, f"cache_dir={tmp_path / 'cache'}", *extra]


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def engines(monkeypatch):
    """One fake engine per evolver: smollm2_360m's empties its first two seeds' evolutions, so
    its arm keeps 4 of 6 records where smollm2_135m's keeps 6."""
    built: dict[str, FakeEngine] = {}

    def build(engine_cfg, model_cfg, models_dir):
        name = str(model_cfg.name)
        fail = {s: "#Rewritten Prompt#:" for s in SEEDS} if name == "smollm2_360m" else {}
        built.setdefault(name, FakeEngine(fail_when=fail))
        built[name].loads = getattr(built[name], "loads", 0) + 1
        return built[name]

    monkeypatch.setattr(engine_pool, "build_engine", build)
    no_weights(monkeypatch)
    return built


def test_keep_failed_keeps_failures_with_text_and_their_lineage(tmp_path, monkeypatch):
    # s1's evolution is empty (dropped either way), s2's echoes its parent ("unchanged": kept).
    fake = FakeEngine(fail_when={SEEDS[0]: "#Rewritten Prompt#:", SEEDS[1]: SEEDS[1]})
    monkeypatch.setattr(engine_pool, "build_engine", lambda *args: fake)
    no_weights(monkeypatch)

    def run(keep):
        over = ["rounds=2", f"scenario.keep_failed={keep}", "stages=[evolve,respond]"]
        return Run(compose_cfg(_overrides(tmp_path, *over)), tmp_path / keep).run()

    dropped, kept = run("false"), run("true")
    assert dropped["round_1/evolve/failed"] == kept["round_1/evolve/failed"] == 2
    assert "round_1/evolve/kept_failed" not in dropped and kept["round_1/evolve/kept_failed"] == 1
    assert dropped["round_2/evolve/attempted"] == 4
    assert kept["round_2/evolve/attempted"] == 5  # the unchanged one's lineage goes on
    r1 = _jsonl(tmp_path / "true" / "round_1" / "evolved.jsonl")
    failures = {r["id"]: r["meta"]["failure"] for r in r1 if not r["meta"]["parse_ok"]}
    assert failures == {"s1-r1": "empty", "s2-r1": "unchanged"}
    responded = {r["id"] for r in _jsonl(tmp_path / "true" / "round_1" / "responded.jsonl")}
    assert "s2-r1" in responded and "s1-r1" not in responded


def test_equal_size_n_is_a_seeded_cut_and_is_recorded(tmp_path, engines):
    def run(seed, name):
        over = ["filter.equal_size=4", f"seed={seed}", "stages=[evolve,respond,filter]"]
        return Run(compose_cfg(_overrides(tmp_path, *over)), tmp_path / name).run()

    a, _, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert a["filter/before_equal_size"] == 6 and a["filter/equal_size"] == a["filter/kept"] == 4
    ids = [[r["id"] for r in _jsonl(tmp_path / n / "selected.jsonl")] for n in "abc"]
    assert len(ids[0]) == 4 and ids[0] == ids[1]
    with pytest.raises(DataError, match="equal_size=7 but this job selects only 6"):
        over = ["filter.equal_size=7", "stages=[evolve,respond,filter]"]
        Run(compose_cfg(_overrides(tmp_path, *over)), tmp_path / "d").run()
    assert c["filter/kept"] == 4


def test_equal_size_smallest_cuts_every_arm_to_the_smallest(tmp_path, engines):
    sweep = {"model": ["smollm2_135m", "smollm2_360m"]}
    extra = ["filter.equal_size=smallest", "stages=[evolve,respond,filter]"]

    def job(model):
        task = [f"model={model}", *_overrides(tmp_path, *extra)]
        return Run(compose_cfg(task), tmp_path / model, job=JobOverrides(task, sweep)).run()

    small = job("smollm2_135m")
    assert small["filter/arm_sizes"] == {"smollm2_135m": 6, "smollm2_360m": 4}
    assert small["filter/before_equal_size"] == 6 and small["filter/kept"] == 4
    # The other arm ran inside this job, in its own folder, through the stages its ranked set
    # needs: not its own equal-size cut (which would ask this arm back), so no selected.jsonl.
    arm = tmp_path / "smollm2_135m" / "arms" / "model=smollm2_360m"
    assert len(_jsonl(arm / "round_2" / "responded.jsonl")) == 4
    assert not (arm / "selected.jsonl").exists()
    loads = engines["smollm2_360m"].loads
    large = job("smollm2_360m")  # its own work was done by the first job: all cache hits
    assert engines["smollm2_360m"].loads == loads
    assert large["filter/kept"] == 4 and large["filter/arm_sizes"] == small["filter/arm_sizes"]
    assert large["engine/prompts"] == 0


def test_equal_size_smallest_outside_a_sweep_says_what_to_do(tmp_path, engines):
    cfg = compose_cfg(_overrides(tmp_path, "filter.equal_size=smallest", "stages=[evolve,filter]"))
    with pytest.raises(ConfigError, match="not part of a sweep over model"):
        Run(cfg, tmp_path / "run", job=JobOverrides(["model=smollm2_135m"], {})).run()


def test_bad_equal_size_fails_at_start_up():
    from core.config import validate

    with pytest.raises(ConfigError, match="filter.equal_size: must be null, a count >= 1"):
        validate(compose_cfg(["filter.equal_size=largest"]))


def test_override_helpers():
    job = JobOverrides(["experiment=x", "filter=ic_ifd", "filter.keep_ratio=0.05"], {})
    assert arm_overrides(job, ["filter=ifd"]) == [
        "experiment=x",
        "filter.keep_ratio=0.05",
        "filter=ifd",
    ]
    assert is_this_job(JobOverrides(["filter=ifd"]), ["filter=ifd"])
    assert not is_this_job(job, ["filter=ifd"])
    assert parse_overrides(["model=a,b", "+model@metrics.ifd.model=c"]) == {
        "model": ["a", "b"],
        "model@metrics.ifd.model": ["c"],
    }


@pytest.mark.slow
def test_a_real_sweep_cuts_arms_equal_and_judges_one_arm_against_another(tmp_path):
    """`python run.py -m` with the bundled model: two arms (two evolution temperatures) cut to
    the smaller arm's size, the second judged against the first's trained model; the first job's
    work on the second arm is the second job's, from the cache."""
    from tests.conftest import run_cli

    sweep = tmp_path / "sweep"
    res = run_cli(
        [
            "-m",
            "generation.evolve.temperature=0.7,1.3",
            "engine=hf",
            "data.limit=3",
            "rounds=1",
            "filter=none",
            "scenario.keep_failed=true",
            "filter.equal_size=smallest",
            "filter.equal_across=generation.evolve.temperature",
            "stages=[evolve,respond,filter,train,evaluate]",
            "train.max_steps=1",
            "eval.tasks=[]",
            "eval.pairwise.enabled=true",
            "eval.pairwise.limit=1",
            "eval.pairwise.against_arm='generation.evolve.temperature=0.7'",
            "generation.evolve.max_tokens=32",
            "generation.greedy.max_tokens=32",
            "eval.pairwise.max_tokens=16",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            "logger=none",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    first, second = (json.loads((sweep / n / "summary.json").read_text()) for n in "01")
    sizes = first["filter/arm_sizes"]
    assert set(sizes) == {"0.7", "1.3"} and second["filter/arm_sizes"] == sizes
    assert first["filter/kept"] == second["filter/kept"] == min(sizes.values())
    # The other arm's ranked set came from its own stages, up to its filter (not its cut).
    arm = sweep / "0" / "arms" / "generation.evolve.temperature=1.3"
    assert (arm / "round_1" / "responded.jsonl").is_file() and not (arm / "selected.jsonl").exists()
    # The reference arm judges nothing; the other is judged against the reference's model,
    # which its own job trained (the same folder in the train cache).
    assert "judge/win" not in first
    assert second["judge/against"].startswith("smollm2_135m-ref-")
    assert sum(second[f"judge/{k}"] for k in ("win", "tie", "lose", "unparseable")) == 1
    ref = (sweep / "0" / "train").resolve()
    assert str(ref.name) in second["judge/against"]


def test_a_split_of_a_presets_arms_keeps_the_presets_arms():
    from pipeline.arms import sweep_values

    preset = {"model": ["a", "b", "c"], "domain": ["general"]}
    assert sweep_values(preset, ["model=a,b"])["model"] == ["a", "b", "c"]  # a part: the preset's
    assert sweep_values(preset, ["model=x,y"])["model"] == ["x", "y"]  # other arms: the line's
    assert sweep_values({}, ["model=x,y", "rounds=2"]) == {"model": ["x", "y"]}
    with pytest.raises(ConfigError, match="cannot read the overrides"):
        parse_overrides(["model=a,"])


def test_arms_missing_fail_reads_the_cache_only_and_says_what_to_run(tmp_path, engines):
    sweep = {"model": ["smollm2_135m", "smollm2_360m"]}
    extra = ["filter.equal_size=smallest", "stages=[evolve,respond,filter]"]

    def job(model, *more):
        task = [f"model={model}", *_overrides(tmp_path, *extra, *more)]
        return Run(compose_cfg(task), tmp_path / model, job=JobOverrides(task, sweep)).run()

    from core.errors import NotCached

    with pytest.raises(NotCached, match=r"arm model=smollm2_360m has not run up to filter"):
        job("smollm2_135m", "arms.missing=fail")
    assert "smollm2_360m" not in engines  # nothing of the other arm was computed
    job("smollm2_360m")  # that arm's own job (which computes the other arm's size here)
    s = job("smollm2_135m", "arms.missing=fail")
    assert s["filter/arm_sizes"] == {"smollm2_135m": 6, "smollm2_360m": 4}
