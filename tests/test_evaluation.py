"""The evaluate stage: lm-evaluation-harness on the five benchmarks.

Canned "model" outputs (known right, known wrong) go through the real harness, the tasks' own
scorers and the sandbox and must score exactly 1 and 0; the bundled model is then evaluated for real
through the project's LM (vLLM engine) and lm-eval's own hf backend."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from core.cache import StepCache
from core.errors import ConfigError
from engines.base import Generation
from engines.pool import EnginePool
from evaluation import tasks as T
from evaluation.run import evaluate
from tests.conftest import MODELS_DIR, compose_cfg, run_cli

DATA = T.BUNDLED_DATA
from evaluation.benchmarks import BENCHMARKS  # noqa: E402

TASKS = ("ifeval", "gsm8k", "math", "humaneval", "mbpp")  # eval=smoke's tasks, the built-ins
HEADLINES = [k for t in TASKS for k in BENCHMARKS.get(t).headline_keys()]
# eval.variant=opencompass (eval=paper's): what each of eval=smoke's tasks runs as.
OC_TASKS = ("ifeval", "gsm8k_oc", "math", "humaneval_oc", "mbpp_oc")
OC_HEADLINES = [k for t in OC_TASKS for k in BENCHMARKS.get(t).headline_keys()]


def _rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(x) for x in f if x.strip()]


# Known-right responses for the IFEval fixtures, by key.
IFEVAL_RIGHT = {
    1: "had a calm weekend. we walked by the river and cooked soup together. see you soon!",
    2: "* It strengthens the heart.\n* It improves sleep.\n* It lifts your mood.",
    3: "The sun rises slowly and paints the calm sea gold and pink.",
    4: "Sleep restores the body and clears the mind. Without it focus and mood suffer.",
    5: "A compiler translates source code to machine code. Is there anything else I can help with?",
    6: '"Soft rain on the roof / puddles hold the grey sky / the garden drinks deep"',
}
IFEVAL_WRONG = {
    1: "I Had A Great Weekend.",
    2: "* One point only.",
    3: " ".join(["word"] * 60),
    4: "Sleep matters, a lot, for everyone.",
    5: "A compiler translates code. Is there anything else I can help with? Bye.",
    6: "Soft rain on the roof",
}


class CannedEngine:
    """Answers each benchmark item with its known right (or a wrong) answer, found from the
    item's text in the prompt."""

    name = "canned"

    def __init__(self, right: bool):
        self.right = right
        self.calls = 0
        self.prompts: list[str] = []
        self.ifeval = {r["prompt"]: r["key"] for r in _rows(DATA / "ifeval" / "test.jsonl")}
        self.gsm8k = _rows(DATA / "gsm8k" / "test.jsonl")
        self.math = _rows(DATA / "math" / "test.jsonl")
        self.mbpp = _rows(DATA / "mbpp" / "test.jsonl")
        self.humaneval = _rows(Path(T.humaneval_file()))

    def generate(self, prompts, params):
        self.calls += 1
        self.prompts += list(prompts)
        self.params = getattr(self, "params", []) + (
            list(params) if isinstance(params, list) else [params] * len(prompts)
        )
        return [Generation(self._answer(p), 8, "stop") for p in prompts]

    def _answer(self, prompt: str) -> str:
        for text, key in self.ifeval.items():
            if text in prompt:
                return (IFEVAL_RIGHT if self.right else IFEVAL_WRONG)[key]
        for r in self.gsm8k:
            if r["question"] in prompt:
                gold = r["answer"].split("#### ")[-1]
                return f"Let me think.\n#### {gold if self.right else int(gold) + 1}"
        for r in self.math:
            if r["problem"] in prompt:
                gold = T.boxed(r["solution"])
                say = gold if self.right else gold + "+1"
                return (  # minerva_math's answer form
                    f"So the answer is $\\boxed{{{say}}}$.\n"
                    f"Final Answer: The final answer is ${say}$. I hope it is correct."
                )
        for r in self.mbpp:
            if r["text"] in prompt:
                code = r["code"] if self.right else "def nothing():\n    pass"
                if prompt.endswith("[BEGIN]\n"):  # OpenCompass's form, up to its stop
                    return f" '{code}' \n[DONE] \n\n"
                return code + "\n```\n"
        for r in self.humaneval:
            if r["prompt"].strip() in prompt:
                body = r["canonical_solution"] if self.right else "    return None\n"
                if "Complete the following python code:" in prompt:  # OpenCompass's: a reply
                    return f"Here it is:\n```python\n{r['prompt']}{body}```\nDone."
                return body + "```\n"
        raise AssertionError(f"no canned answer for prompt: {prompt[-300:]}")

    def close(self) -> None:
        pass


def _pool(tmp_path, engine, model_name="smollm2_135m"):
    cfg = compose_cfg([f"cache_dir={tmp_path / 'cache'}", f"models_dir={MODELS_DIR}"])
    pool = EnginePool(cfg.engine, StepCache(tmp_path / "cache"), MODELS_DIR)
    pool.adopt(model_name, engine)
    return cfg, pool


def _eval_cfg(*extra):
    return compose_cfg(["eval=smoke", *extra]).eval


@pytest.mark.parametrize("right", [True, False], ids=["right", "wrong"])
def test_canned_answers_score_one_and_zero_on_every_task(tmp_path, bundled_model_dir, right):
    cfg, pool = _pool(tmp_path, CannedEngine(right))
    numbers = evaluate(_eval_cfg("eval.limit=5"), cfg.model, pool, tmp_path / "eval", str(tmp_path))
    expected = 1.0 if right else 0.0
    for key in HEADLINES:
        assert numbers[key] == expected, (key, numbers)
    assert (tmp_path / "eval" / "results.json").is_file()
    for task in TASKS:
        rows = _rows(tmp_path / "eval" / f"samples_{task}.jsonl")
        assert {r["doc_id"] for r in rows} == set(range(5))  # HumanEval: its first five problems


def test_prompts_are_chat_formatted_and_rerun_makes_no_model_call(tmp_path, bundled_model_dir):
    """...and the code benchmarks run in the sandbox service given (left open for its owner),
    or in one of evaluate's own; either way the level reaches headline.json."""
    from sandbox import SandboxService

    engine = CannedEngine(True)
    cfg, pool = _pool(tmp_path, engine)
    with SandboxService() as service:
        first = evaluate(
            _eval_cfg("eval.limit=2"), cfg.model, pool, tmp_path / "a", str(tmp_path), 0, service
        )
        assert not service.closed and service.usage.ran > 0  # HumanEval's and MBPP's programs
        assert first["eval/sandbox_isolation"] == service.isolation
    headline = json.loads((tmp_path / "a" / "headline.json").read_text())
    assert headline["eval/sandbox_isolation"] == service.isolation
    assert T._RUNNER.get() is None  # the scorers' service was set for that evaluation only
    assert engine.calls >= 1
    assert all(p.startswith("<|im_start|>system") for p in engine.prompts)  # chat template
    assert any(p.endswith("<|im_start|>assistant\n\n```python\n") for p in engine.prompts)  # MBPP
    calls = engine.calls
    again = evaluate(_eval_cfg("eval.limit=2"), cfg.model, pool, tmp_path / "b", str(tmp_path))
    assert engine.calls == calls and again == first


def test_stop_sequences_end_the_answer(tmp_path, bundled_model_dir):
    from evaluation.lm import EngineLM

    class Echo(CannedEngine):
        def _answer(self, prompt):
            return "#### 4\nQuestion: next one"

    cfg, pool = _pool(tmp_path, Echo(True))
    lm = EngineLM(pool=pool, model_cfg=cfg.model)

    class Req:
        args = ("Question: 2+2?\nAnswer:", {"until": ["Question:"], "max_gen_toks": 16})

    assert lm.generate_until([Req()]) == ["#### 4\n"]
    with pytest.raises(NotImplementedError, match="generate_until"):
        lm.loglikelihood([Req()])


def test_headline_weights_math_subjects_by_size():
    results = {
        "math_algebra": {"exact_match,none": 1.0},
        "math_geometry": {"exact_match,none": 0.0},
        "gsm8k": {"exact_match,strict-match": 0.5, "exact_match,flexible-extract": 0.75},
    }
    n = {"math_algebra": {"effective": 3}, "math_geometry": {"effective": 1}}
    out = T.headline(results, n)
    assert out == {"math/exact_match": 0.75, "gsm8k/strict": 0.5, "gsm8k/flexible": 0.75}
    # A variant's task is its own benchmark's, even where its metric keys are the base's.
    results["gsm8k_oc"] = {"accuracy,none": 0.25, "exact_match,strict-match": 0.0}
    out = T.headline(results, n)
    assert out["gsm8k/strict"] == 0.5 and out["gsm8k_oc/accuracy"] == 0.25


def test_answer_extraction():
    assert T.boxed("so $\\boxed{\\frac{1}{2}}$ done") == "\\frac{1}{2}"
    assert T.boxed("no box") is None
    assert T.math_answer("Final Answer: The final answer is $7$. I hope it is correct.") == "7"
    assert T.math_results({"answer": "3", "solution": "$\\boxed{3}$"}, ["I do not know"]) == {
        "exact_match": 0,
        "math_verify": 0,
    }
    assert T.code_block("def f():\n    return 1\n```\nprose") == "def f():\n    return 1\n"
    assert T.code_block("```python\nx = 1\n```") == "x = 1\n"


def test_code_runs_only_in_the_sandbox():
    """A program that tries the network or runs forever fails; nothing runs in this process.
    The scorers run programs in the service the evaluation in progress set (`code_runner`),
    only for its duration, and never close it."""
    from sandbox import LEVELS, SandboxService

    with pytest.raises(RuntimeError, match="outside an evaluation"):
        T.passes("assert True")
    with SandboxService() as service:
        with T.code_runner(service, timeout=2) as runner:
            assert T.passes("assert 1 + 1 == 2")
            assert not T.passes("import socket\nsocket.create_connection(('127.0.0.1', 9))")
            assert not T.passes("while True:\n    pass")
            assert not T.passes("")
            with T.code_runner(service, timeout=3) as inner:  # nested: restored after
                assert T.passes("assert 2 + 2 == 4")
            assert T._RUNNER.get() is runner and inner.usage.ran == 1
        assert runner.usage.isolation in LEVELS and runner.usage.ran == 3
        assert T._RUNNER.get() is None and not service.closed
    assert not T.passes("")  # an empty program is a failure without any sandbox


def test_punkt_written_for_offline_ifeval(tmp_path):
    T.ensure_punkt(tmp_path / "nltk")
    import nltk

    text = "Dr. Smith went home at 5 p.m. yesterday. He was tired! Was he? Yes."
    assert len(nltk.sent_tokenize(text)) == 4


def test_paper_eval_uses_hub_data_and_the_tasks_defaults():
    configs = T.task_configs(_eval_cfg("eval.data_dir=null", "eval.limit=null"))
    names = [c["task"] for c in configs]
    assert names[:2] == ["ifeval", "gsm8k"] and names[-2:] == ["humaneval", "mbpp"]
    assert [n for n in names if n.startswith("math_")] == [f"math_{s}" for s in T.MATH_SUBJECTS]
    by = {c["task"]: c for c in configs}
    assert by["ifeval"]["dataset_path"] == "google/IFEval"
    assert by["gsm8k"]["dataset_path"] == "openai/gsm8k"
    assert by["humaneval"]["dataset_kwargs"]["data_files"]["test"].endswith("HumanEval.jsonl.gz")
    paper = compose_cfg(["eval=paper"]).eval
    assert paper.data_dir is None and paper.limit is None and paper.variant == "opencompass"
    configs = T.task_configs(paper)
    assert len(configs) == 11  # MATH: seven subjects
    by = {c["task"]: c for c in configs}
    assert {"gsm8k_oc", "humaneval_oc", "mbpp_oc"} <= set(by) and "gsm8k" not in by
    assert by["gsm8k_oc"]["dataset_path"] == "openai/gsm8k"
    assert by["mbpp_oc"]["dataset_name"] == "full"  # MBPP's 500 test problems, as OpenCompass
    assert by["humaneval_oc"]["dataset_kwargs"]["data_files"]["test"].endswith(".jsonl.gz")
    shots = {t: c["num_fewshot"] for t, c in by.items() if not t.startswith("math_")}
    assert shots == {"ifeval": 0, "gsm8k_oc": 4, "humaneval_oc": 0, "mbpp_oc": 3}
    assert len(T.math_fewshot()) == 4 and len(T.mbpp_fewshot()) == 3  # lm-eval's own, not run


def test_variant_is_chosen_by_config_and_checked():
    """eval.variant swaps each task for its variant where one exists (a domain's task list runs
    under either protocol); the variant's task name also works on its own; a wrong value is one
    error naming the valid ones."""
    names = T.run_benchmarks(_eval_cfg("eval.variant=opencompass"))
    assert names == list(OC_TASKS)
    assert T.run_benchmarks(_eval_cfg("eval.tasks=[gsm8k_oc, gsm8k]")) == ["gsm8k_oc", "gsm8k"]
    with pytest.raises(ConfigError, match="eval.variant 'opencompas'.*lm_eval, opencompass"):
        T.task_configs(_eval_cfg("eval.variant=opencompas"))


ECHO = """
name: echo
task:
  output_type: generate_until
  test_split: test
  doc_to_text: "Repeat the word: {{word}}"
  doc_to_target: "{{word}}"
  dataset_path: json
  dataset_kwargs: {data_files: {test: /nowhere/test.jsonl}}
  metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
headlines: {exact_match: "exact_match,none"}
"""


def test_benchmark_dirs_make_a_job_registry_and_leave_the_global_one(tmp_path):
    """eval.benchmark_dirs: the job's registry is the built-ins plus those folders
    (`registry_for`); the global BENCHMARKS never changes, so a later job (or report) without
    the folder does not see its benchmarks, and one that replaces a built-in replaces it only
    for its own job."""
    from evaluation.benchmarks import BENCHMARKS, registry_for

    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "echo.yaml").write_text(ECHO)
    (folder / "gsm8k.yaml").write_text("name: gsm8k\nlm_eval: gsm8k/gsm8k.yaml\norder: 99\n")
    builtins = BENCHMARKS.names()
    registry = registry_for([str(folder)])
    assert "echo" in registry and registry.get("gsm8k").order == 99
    assert set(registry.names()) == {*builtins, "echo"}
    assert "echo/exact_match" in registry.headline_keys()
    job = _eval_cfg("eval.tasks=[echo]", "eval.data_dir=null", f"+eval.benchmark_dirs=[{folder}]")
    assert [c["task"] for c in T.task_configs(job)] == ["echo"]
    assert T.run_benchmarks(job) == ["echo"]
    # The global registry is as it was: no echo, the built-in gsm8k.
    assert BENCHMARKS.names() == builtins and "echo" not in BENCHMARKS
    assert BENCHMARKS.get("gsm8k").order != 99 and BENCHMARKS.for_headline("echo/x") is None
    with pytest.raises(ConfigError, match="unknown eval task 'echo'"):
        T.task_configs(_eval_cfg("eval.tasks=[echo]"))
    results = {"echo": {"exact_match,none": 1.0}}
    assert T.headline(results, registry=registry) == {"echo/exact_match": 1.0}
    assert T.headline(results) == {}
    with pytest.raises(ConfigError, match="is not a folder"):
        registry_for([str(tmp_path / "nope")])


def test_benchmarks_and_tasks_import_one_way_only():
    """evaluation.tasks (builders, scorers) imports evaluation.benchmarks (the registry), never
    the other way round, at any level: no import cycle hidden in a function."""
    import ast

    import evaluation.benchmarks as B

    tree = ast.parse(Path(B.__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m.startswith("evaluation")}, imported


def test_bad_eval_input_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="valid: .*ifeval.*mbpp"):
        T.task_configs(_eval_cfg("eval.tasks=[ifevl]"))
    with pytest.raises(ConfigError, match="gsm8k/test.jsonl not found"):
        T.task_configs(_eval_cfg(f"eval.data_dir={tmp_path}", "eval.tasks=[gsm8k]"))
    (tmp_path / "mbpp").mkdir()
    (tmp_path / "mbpp" / "test.jsonl").write_text('{"task_id": 1}\n{"task_id": \n')
    with pytest.raises(ConfigError, match=re.escape("mbpp/test.jsonl:2")):
        T.task_configs(_eval_cfg(f"eval.data_dir={tmp_path}", "eval.tasks=[mbpp]"))
    with pytest.raises(ConfigError, match="eval.data_dir=.* is not a folder"):
        T.task_configs(_eval_cfg(f"eval.data_dir={tmp_path / 'nope'}"))


def test_every_task_runs_with_the_configured_number_of_shots(tmp_path):
    """`num_fewshot: null` is the benchmark's own default (IFEval 0, GSM8K 5, MATH 4 as minerva,
    HumanEval 0, MBPP 3), an explicit value wins, and lm-eval runs what was set: read back from
    its results, not from our config."""
    paper = _eval_cfg("eval.num_fewshot={gsm8k: null, math: null, mbpp: null}")
    shots = {c["task"]: c["num_fewshot"] for c in T.task_configs(paper)}
    assert shots == {"ifeval": 0, "gsm8k": 5, "math": 4, "humaneval": 0, "mbpp": 3}
    cfg, pool = _pool(tmp_path, CannedEngine(True))
    evaluate(
        _eval_cfg("eval.limit=1", "eval.num_fewshot={gsm8k: 2, math: null, mbpp: 0}"),
        cfg.model,
        pool,
        tmp_path / "eval",
        str(tmp_path),
    )
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    ran = {t: results["configs"][t]["num_fewshot"] for t in results["configs"]}
    assert ran == {"ifeval": 0, "gsm8k": 2, "math": 4, "humaneval": 0, "mbpp": 0}
    assert results["n-shot"]["math"] == 4


def test_a_task_without_a_budget_gets_lm_evals_default(tmp_path, bundled_model_dir):
    """eval=paper sets no max_gen_toks: a task that sets none (GSM8K, MATH) gets what lm-eval's
    own models give it (HFLM.max_gen_toks), not a budget of ours; a task's own still wins."""
    from lm_eval.models.huggingface import HFLM

    hf_default = HFLM.max_gen_toks.fget(None)  # a constant property of lm-eval's HF model
    engine = CannedEngine(True)
    cfg, pool = _pool(tmp_path, engine)
    ev = _eval_cfg("eval.limit=1", "eval.max_gen_toks=null", "eval.tasks=[gsm8k, math, ifeval]")
    evaluate(ev, cfg.model, pool, tmp_path / "eval", str(tmp_path))
    budgets = {
        task: {p.max_tokens for prompt, p in zip(engine.prompts, engine.params) if key in prompt}
        for task, key in (("gsm8k", "Question:"), ("math", "Problem:"), ("ifeval", ""))
    }
    assert budgets["gsm8k"] == budgets["math"] == {hf_default}
    assert max(budgets["ifeval"]) == 1280  # IFEval's own max_gen_toks


def test_math_exact_match_is_lm_evals_and_math_verify_is_named_apart():
    """`exact_match` is minerva_math's: the normalised "final answer is" equals the gold one. A
    boxed 0.5 for 1/2 is not an exact match; math-verify (lm-eval's `math_verify`) accepts it."""
    doc = {"solution": "So $x = \\boxed{\\frac{1}{2}}$.", "problem": "?", "answer": "\\frac{1}{2}"}
    assert T.math_results(doc, ["$\\boxed{0.5}$"]) == {"exact_match": 0, "math_verify": 1}
    assert T.math_gold(doc["solution"]) == doc["answer"]  # minerva_math's process_docs
    said = "Final Answer: The final answer is $\\frac12$. I hope it is correct."
    assert T.math_results(doc, [said]) == {"exact_match": 1, "math_verify": 1}
    assert BENCHMARKS.get("math").headlines == {
        "exact_match": "exact_match,none",
        "math_verify": "math_verify,none",
    }


def test_results_json_records_the_prompt_settings(tmp_path, bundled_model_dir):
    """results.json carries what lm-eval's tracker logs (chat template and its hash,
    fewshot_as_multiturn, system instruction) and the model's end-of-turn token."""
    engine = CannedEngine(True)
    cfg, pool = _pool(tmp_path, engine)
    ev = _eval_cfg("eval.limit=1", "eval.tasks=[gsm8k]")
    numbers = evaluate(ev, cfg.model, pool, tmp_path / "eval", str(tmp_path))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    from engines.hf import load_tokenizer

    tok = load_tokenizer(bundled_model_dir)
    assert results["chat_template"] == tok.chat_template and results["chat_template_sha"]
    assert results["fewshot_as_multiturn"] is True and "system_instruction" in results
    assert results["model_name"] == "smollm2_135m" and results["model_source"] == "CUSTOM"
    assert results["eot_token_id"] == tok.eos_token_id is not None
    assert results["tokenizer_eos_token"][0] == tok.eos_token
    assert results["variant"] == numbers["eval/variant"] == "lm_eval"


@pytest.mark.parametrize("right", [True, False], ids=["right", "wrong"])
def test_opencompass_variants_score_one_and_zero(tmp_path, bundled_model_dir, right):
    """eval.variant=opencompass on the bundled fixtures: GSM8K 4-shot chain of thought, HumanEval
    0-shot, MBPP 3-shot [BEGIN]/[DONE], each scored by OpenCompass's extraction."""
    engine = CannedEngine(right)
    cfg, pool = _pool(tmp_path, engine)
    ev = _eval_cfg(
        "eval.limit=3",
        "eval.variant=opencompass",
        "eval.num_fewshot={gsm8k: null, math: 0, mbpp: null}",
        "eval.max_gen_toks=null",
    )
    numbers = evaluate(ev, cfg.model, pool, tmp_path / "eval", str(tmp_path))
    for key in OC_HEADLINES:
        assert numbers[key] == (1.0 if right else 0.0), (key, numbers)
    assert not any(k.startswith(("gsm8k/", "mbpp/", "humaneval/")) for k in numbers)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {t: results["n-shot"][t] for t in ("gsm8k_oc", "humaneval_oc", "mbpp_oc")} == {
        "gsm8k_oc": 4,
        "humaneval_oc": 0,
        "mbpp_oc": 3,
    }
    gsm = [p for p in engine.prompts if "Let's think step by step" in p]
    mbpp = [p for p in engine.prompts if p.endswith("[BEGIN]\n")]
    assert gsm and all(p.count("Let's think step by step\nAnswer:") == 5 for p in gsm)
    assert all(p.count("The answer is") == 4 for p in gsm)  # the examples' own answers
    assert mbpp and all(p.count("[DONE]") == 3 and " 'def " in p for p in mbpp)
    assert any("Complete the following python code:\nfrom typing" in p for p in engine.prompts)
    budgets = {p.max_tokens for q, p in zip(engine.prompts, engine.params) if q in gsm + mbpp}
    assert budgets == {512}  # OpenCompass's max_out_len
    for task in ("gsm8k_oc", "humaneval_oc", "mbpp_oc"):
        assert len(_rows(tmp_path / "eval" / f"samples_{task}.jsonl")) == 3


def test_opencompass_answer_extraction():
    """OpenCompass's post-processing, case by case (its quirks kept: a number's comma splits it)."""
    assert T.gsm8k_oc_answer("3 x 4 = 12\nThe answer is 12\n\nQuestion: 5 more") == "12"
    assert T.gsm8k_oc_answer("It costs 1,000 dollars") == "000"
    assert T.gsm8k_oc_answer("no idea") == "NULL"
    assert T.gsm8k_oc_results({"answer": "so\n#### 1,250"}, ["The answer is 1250.0"]) == {
        "accuracy": 1
    }
    assert T.humaneval_oc_completion("Sure:\n```python\ndef f():\n    return 1\n```\n") == (
        "def f():\n    return 1\n"
    )
    assert T.humaneval_oc_completion("    return 1\n") == "    return 1\n"
    code = "def f(x):\r\n    return x"
    assert T.mbpp_oc_answer(f" '{code}' \n[DONE] \n\n") == code
    assert T.mbpp_oc_answer(f"```python\n{code}\n```\n[DONE]") == code
    assert T.mbpp_oc_answer(repr(code)) == code  # a quoted string, parsed, never run
    assert T.mbpp_oc_answer("__import__('os').system('true')") == "__import__('os').system('true')"


# -- the real bundled model ---------------------------------------------------------------------
@pytest.mark.slow
def test_bundled_model_through_the_engine_lm_on_vllm(tmp_path, vllm_engine):
    cfg, pool = _pool(tmp_path, vllm_engine)
    numbers = evaluate(_eval_cfg("eval.limit=2"), cfg.model, pool, tmp_path / "eval", str(tmp_path))
    for key in HEADLINES:
        assert 0.0 <= numbers[key] <= 1.0, key
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["results"]) == set(TASKS)
    rows = _rows(tmp_path / "eval" / "samples_gsm8k.jsonl")
    assert {r["doc_id"] for r in rows} == {0, 1} and all(
        r["resps"][0][0] for r in rows
    )  # the model said something


@pytest.mark.slow
def test_bundled_model_on_the_opencompass_variants(tmp_path, vllm_engine):
    cfg, pool = _pool(tmp_path, vllm_engine)
    ev = _eval_cfg(
        "eval.limit=1", "eval.variant=opencompass", "eval.tasks=[gsm8k, humaneval, mbpp]"
    )
    numbers = evaluate(ev, cfg.model, pool, tmp_path / "eval", str(tmp_path))
    for key in ("gsm8k_oc/accuracy", "humaneval_oc/pass@1", "mbpp_oc/pass@1"):
        assert 0.0 <= numbers[key] <= 1.0, key
    for task in ("gsm8k_oc", "humaneval_oc", "mbpp_oc"):
        assert _rows(tmp_path / "eval" / f"samples_{task}.jsonl")[0]["resps"][0][0]


@pytest.mark.slow
def test_bundled_model_through_lm_evals_hf_backend(tmp_path, bundled_model_dir):
    """The cross-check backend: lm-eval's own HF model class on the same checkpoint, every task."""
    cfg, pool = _pool(tmp_path, CannedEngine(True))  # never asked: the hf backend loads its own
    ev = _eval_cfg("eval.backend=hf", "eval.limit=1", "eval.max_gen_toks=64")
    numbers = evaluate(ev, cfg.model, pool, tmp_path / "eval", str(tmp_path))
    assert numbers["eval/backend"] == "hf" and pool.stats.prompts == 0
    for key in HEADLINES:
        assert 0.0 <= numbers[key] <= 1.0, key
    for task in TASKS:
        assert _rows(tmp_path / "eval" / f"samples_{task}.jsonl")[0]["resps"][0][0] is not None


@pytest.mark.slow
def test_evaluate_stage_alone_from_the_command_line(tmp_path, bundled_model_dir):
    """`python run.py stages=[evaluate] eval=smoke`: the untrained student, the baseline row."""
    res = run_cli(
        [
            "stages=[evaluate]",
            "eval=smoke",
            "eval.limit=1",
            "engine=hf",
            "logger=none",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            f"hydra.run.dir={tmp_path}/run",
        ]
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["eval/model"] == "smollm2_135m"
    for key in HEADLINES:
        assert 0.0 <= s[key] <= 1.0
    assert "ifeval/prompt_strict" in res.stdout  # the printed table


def test_pairwise_judges_both_orders_and_counts_unparseable_apart(tmp_path, monkeypatch):
    """The evaluate stage's pairwise judge: the job's model against another, every item judged
    twice with positions swapped; an unreadable verdict is `unparseable`, not a tie."""
    from omegaconf import OmegaConf

    import engines.pool as engine_pool
    from evaluation.run import pairwise

    class Model:
        def __init__(self, reply):
            self.reply = reply

        def generate(self, prompts, params):
            return [Generation(self.reply(p[-1]["content"]), 4, "stop") for p in prompts]

        def close(self):
            pass

    def judge(text):
        if "pens at 3 for $2" in text:
            return "I cannot decide."
        a = text.split("#Answer A#:\n", 1)[1]
        return "Verdict: A" if a.startswith("GOOD") else "Verdict: B"

    models = {
        "student-a": Model(lambda t: "GOOD answer"),
        "qwen2.5_0.5b": Model(lambda t: "bad answer"),
        "smollm2_135m": Model(judge),
    }
    monkeypatch.setattr(engine_pool, "build_engine", lambda cfg, m, d: models[m.name])
    cfg = compose_cfg(
        [
            f"cache_dir={tmp_path}",
            "eval.pairwise.against=qwen2.5_0.5b",
            "eval.pairwise.limit=null",
        ]
    )
    pool = EnginePool(cfg.engine, StepCache(tmp_path), MODELS_DIR)
    student = OmegaConf.create({"name": "student-a"})
    out = pairwise(cfg, student, pool, tmp_path)
    assert (out["judge/win"], out["judge/tie"], out["judge/lose"]) == (7, 0, 0)
    assert out["judge/unparseable"] == 1 and out["judge/win_rate"] == 1.0
    assert out["judge/against"] == "qwen2.5_0.5b" and out["judge/model"] == "smollm2_135m"
    rows = _rows(tmp_path / "pairwise.jsonl")
    assert len(rows) == 8 and {r["outcome"] for r in rows} == {"win", "unparseable"}
    assert pool.stats.prompts == 8 + 8 + 16  # two answer sets, each pair judged twice
