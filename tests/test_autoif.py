"""AutoIF: the reply parsers on fixed replies, augmentation cleaning, query loading, equal-size
subsampling, cross-validation through the real sandbox, the whole scenario with a scripted engine
(exact counts), and a run on the real bundled model."""

import json
import re

import pytest

from core.errors import ConfigError, DataError
from core.records import subsample
from engines.base import Generation, per_prompt
from evolvers.autoif import (
    SandboxConfig,
    clean_augmented,
    dpo_pair,
    load_queries,
    read_seed_constraints,
)
from evolvers.verifiers import (
    BAD_JSON,
    COMPILE_ERROR,
    MISSING_FUNC,
    NO_EVALUATE,
    NO_JSON,
    agreement,
    parse_verifier,
    run_programs,
    select_verifiers,
)
from pipeline.runner import Run
from tests.conftest import MODELS_DIR, compose_cfg, run_cli
from tests.fakes import use_engine

FUNC = "def evaluate(response):\n    return len(response.split()) <= 3"
OBJ = {
    "func": FUNC,
    "cases": [{"input": "a b", "output": True}, {"input": "a b c d", "output": False}],
}


# -- parsing verifier replies ------------------------------------------------------------------
def test_parse_well_formed_and_fenced():
    r = parse_verifier(json.dumps(OBJ))
    assert r.failure is None and r.func.strip() == FUNC
    assert r.cases == [("a b", True), ("a b c d", False)] and r.bad_cases == 0
    fenced = "Here you go:\n```json\n" + json.dumps(OBJ, indent=2) + "\n```\nHope it helps {x}."
    r = parse_verifier(fenced)
    assert r.failure is None and r.func.strip() == FUNC and len(r.cases) == 2


def test_parse_prefers_the_first_fenced_json_block_then_the_first_object():
    other = {"func": "def evaluate(response):\n    return True", "cases": []}
    text = f"First {json.dumps(other)}\n```json\n{json.dumps(OBJ)}\n```"
    assert parse_verifier(text).func.strip() == FUNC  # the fenced block wins
    prose = "Use {braces} freely. The answer is " + json.dumps(OBJ) + " and that's it."
    r = parse_verifier(prose)
    assert r.failure is None and r.func.strip() == FUNC  # "{braces}" is skipped
    broken_fence = "```json\n{not json}\n```\n" + json.dumps(OBJ)
    assert parse_verifier(broken_fence).func.strip() == FUNC


def test_parse_failures():
    truncated = json.dumps(OBJ)[:60]
    assert parse_verifier(truncated).failure == BAD_JSON
    # a truncated object whose cases decode on their own is still not a verifier
    cut = json.dumps(OBJ)[:-3]
    assert parse_verifier(cut).failure == BAD_JSON
    assert parse_verifier("```python\ndef evaluate(response):\n    return True\n```").failure == (
        NO_JSON
    )
    assert parse_verifier("").failure == NO_JSON
    assert parse_verifier('{"cases": [{"input": "a", "output": true}]}').failure == MISSING_FUNC
    assert parse_verifier('{"func": 3, "cases": []}').failure == MISSING_FUNC
    r = parse_verifier('{"func": "def check(r):\\n    return True", "cases": []}')
    assert r.failure == NO_EVALUATE and r.func is None
    r = parse_verifier('{"func": "def evaluate(r)\\n    return True", "cases": []}')
    assert r.failure == COMPILE_ERROR


def test_parse_cases_booleans_and_bad_cases():
    obj = {
        "func": FUNC,
        "cases": [
            {"input": "a", "output": "true"},
            {"input": "b", "output": " FALSE "},
            {"input": "c", "output": "yes"},
            {"input": 3, "output": True},
            {"output": True},
            "not a case",
        ],
    }
    r = parse_verifier(json.dumps(obj))
    assert r.cases == [("a", True), ("b", False)] and r.bad_cases == 4
    assert parse_verifier(json.dumps({"func": FUNC, "cases": "none"})).bad_cases == 1
    # cases are read even when the function is unusable (other replies' functions may use them)
    assert parse_verifier(json.dumps({"cases": OBJ["cases"]})).cases == [
        ("a b", True),
        ("a b c d", False),
    ]


def test_network_lines_are_dropped():
    func = (
        "import requests\nimport urllib.request\nfrom http import client\n"
        "def evaluate(response):\n    nltk.download('punkt')\n"
        "    return 'http' not in response or len(response) > 0\n"
    )
    r = parse_verifier(json.dumps({"func": func, "cases": []}))
    assert r.network_lines == 4 and r.failure is None
    assert "requests" not in r.func and "download" not in r.func
    assert "'http' not in response" in r.func  # a string literal is no network access


# -- augmentation, seeds, queries, subsampling ---------------------------------------------------
def test_clean_augmented():
    reply = (
        "Sure! Here are 5 new instructions:\n\n"
        "- Use at most 30 words.\n"
        '* "Do not use any exclamation marks."\n'
        "1. End your response with the word done.\n"
        "2) Write in lowercase.\n"
        "Format rules:\n"
        "- Rules:\n"
        "- Short.\n"
        "I hope these help!\n"
    )
    lines, nonblank = clean_augmented(reply)
    assert lines == [
        "Use at most 30 words.",
        "Do not use any exclamation marks.",
        "End your response with the word done.",
        "Write in lowercase.",
    ]
    assert nonblank == 9


def test_bundled_seeds_and_queries():
    from evolvers.autoif import QUERIES_FILE, SEEDS_FILE

    seeds = read_seed_constraints(SEEDS_FILE)
    assert len(seeds) == 36 and len(set(seeds)) == 36
    queries, counts = load_queries(QUERIES_FILE, 20, 300)
    assert len(queries) >= 40 and counts["queries_out_of_bounds"] == 0
    assert all(20 <= len(q) <= 300 for q in queries)


def test_seed_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_seed_constraints(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="no seed constraints"):
        read_seed_constraints(empty)


def _conv(q):
    return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "ok"}]}


QUERIES = [
    "What is the tallest mountain in Europe?",
    "Short one",  # under 20 characters
    "How do plants drink water from the soil?",
    "what is the tallest mountain in europe?",  # a duplicate
    "Tell me about the history of the bicycle, please." * 10,  # over 300
    "Explain the offside rule in football.",
]


def test_load_queries_sharegpt_json_and_jsonl(tmp_path):
    arr = tmp_path / "q.json"
    arr.write_text(json.dumps([_conv(q) for q in QUERIES], indent=1))
    jl = tmp_path / "q.jsonl"
    jl.write_text("".join(json.dumps(_conv(q)) + "\n" for q in QUERIES))
    for path in (arr, jl):
        queries, counts = load_queries(path, 20, 300)
        assert queries == [QUERIES[0], QUERIES[2], QUERIES[5]]
        assert counts == {"queries_loaded": 6, "queries_out_of_bounds": 2, "queries_usable": 3}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_conv(QUERIES[0])) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        load_queries(bad, 20, 300)
    no_user = tmp_path / "nouser.jsonl"
    no_user.write_text(json.dumps({"conversations": [{"from": "gpt", "value": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"nouser\.jsonl:1.*no user turn"):
        load_queries(no_user, 20, 300)


def test_subsample_is_seeded_and_exact():
    recs = [{"id": f"r{i}"} for i in range(20)]
    a = subsample(recs, 7, 0)
    assert len(a) == 7 and a == subsample(recs, 7, 0)
    assert [r["id"] for r in a] == sorted((r["id"] for r in a), key=lambda s: int(s[1:]))
    assert a != subsample(recs, 7, 1)
    assert subsample(recs, 20, 0) == recs


def test_dpo_pair():
    rec = {"id": "x", "instruction": "c", "input": "q", "meta": {"source_id": "i"}}
    pair = dpo_pair(rec, ["greedy", "s0", "s1"], [0.0, 1.0, 0.5])
    assert pair["chosen"] == "s0" and pair["rejected"] == "greedy"
    assert pair["meta"]["chosen_from"] == "sample 0"
    assert dpo_pair(rec, ["g", "s0"], [0.4, 0.0]) is None  # no chosen
    assert dpo_pair(rec, ["g", "s0"], [1.0, 0.5]) is None  # no rejected
    assert dpo_pair(rec, ["g", "s0"], [0.5, 0.5]) is None
    assert dpo_pair(rec, ["g", "", "s1"], [1.0, 0.0, 0.5]) is None  # an empty text is no answer
    assert dpo_pair(rec, ["", ""], [0.0, 0.0]) is None


# -- cross-validation through the real sandbox ---------------------------------------------------
def test_cross_validation_in_the_sandbox():
    funcs = [
        FUNC,  # correct
        "def evaluate(response):\n    return True",  # wrong on long replies
        "def evaluate(response):\n    while True:\n        pass",  # hostile: never returns
        "def evaluate(response):\n    return 1",  # not a bool
        "def evaluate(response):\n    return 'True'",  # not a bool either
        "def evaluate(response):\n    raise ValueError('no')",
    ]
    cases = [("a b", True), ("a b c d", False), ("x", True), ("a b c d e f", True)]
    results = run_programs(
        [(f, "evaluate", [[c] for c, _ in cases]) for f in funcs],
        SandboxConfig(timeout=1.0, batch_size=64),
        "test",
    )
    agree = [agreement(r, [e for _, e in cases]) for r in results]
    assert agree[0] == [True, True, True, False]
    assert agree[1] == [True, False, True, True]
    assert agree[2:] == [[False] * 4] * 4
    # A function that never returns times out on each case (a timeout per case, not one for all).
    assert all(not x["ok"] and "timeout" in x["error"] for x in results[2].results)
    kept_funcs, kept_cases, acc = select_verifiers(agree, 0.8)
    assert kept_cases == [0, 1, 2, 3]  # every case has a function that agrees
    assert acc[:2] == [0.75, 0.75] and acc[2:] == [0.0] * 4
    assert kept_funcs == []  # nobody reaches 0.8
    # Without the contested case (only the wrong function agrees with it):
    kept_funcs, kept_cases, acc = select_verifiers([a[:3] for a in agree], 0.8)
    assert kept_funcs == [0] and kept_cases == [0, 1, 2] and acc[0] == 1.0
    assert select_verifiers([[False, False]], 0.8) == ([], [], [None])


# -- the scenario end to end with a scripted engine ----------------------------------------------
AUGMENT_REPLY = """Sure! Here are new instructions:

- Use at most 30 words.
- Write your entire response in lowercase letters.
* Use at most 30 words.
1. End your response with the word "done".
- "Do not use any exclamation marks."
Format rules:
I hope these help.
"""
WORDS_FUNC = "def evaluate(response):\n    return len(response.split()) <= 30"
DONE_FUNC = "def evaluate(response):\n    return response.strip().rstrip('.').endswith('done')"


def _j(func=None, cases=()):
    obj = {"cases": [{"input": i, "output": o} for i, o in cases]}
    if func is not None:
        obj["func"] = func
    return json.dumps(obj)


# Two replies per constraint (k_verifiers=2): the first and the second time a prompt is seen.
VERIFIER_REPLIES = {
    # fenced; then prose around an object whose function (after its network line is dropped)
    # is the same one, with a wrong case
    "Use at most 30 words.": [
        "```json\n" + _j(WORDS_FUNC, [("short one", True), ("word " * 40, False)]) + "\n```",
        "Here is the JSON: "
        + _j(
            "import requests\n" + WORDS_FUNC,
            [("short one", True), ("two words", "true"), ("a b c", False)],
        )
        + " Thanks.",
    ],
    # a correct function; a wrong one (2 of 3 cases: below 0.8)
    'End your response with the word "done".': [
        _j(DONE_FUNC, [("all done", True), ("done already", False)]),
        _j("def evaluate(response):\n    return 'done' in response", [("we are done.", "True")]),
    ],
    # truncated (bad json); a function returning 1, not a bool (no case agreed)
    "Do not use any exclamation marks.": [
        _j("def evaluate(response):\n    return '!' not in response", [("hi", True)])[:50],
        _j("def evaluate(response):\n    return 1", [("hi", True)]),
    ],
    # a code block, no JSON; an object without `evaluate`
    "Write your entire response in lowercase letters.": [
        "```python\ndef evaluate(response):\n    return response.islower()\n```",
        _j("def check(response):\n    return response.islower()", [("abc", True)]),
    ],
    # no func; a function that does not compile
    "Answer with at least 200 words.": [
        _j(None, [("x", False)]),
        _j("def evaluate(response)\n    return True", []),
    ],
}


class AutoIFEngine:
    """Canned AutoIF replies; the n-th time a prompt is seen picks the n-th scripted reply."""

    name = "autoif-scripted"

    def __init__(self, verifiers=None):
        self.verifiers = VERIFIER_REPLIES if verifiers is None else verifiers
        self.seen: dict[str, int] = {}

    def generate(self, prompts, params):
        plist = per_prompt(params, len(prompts))
        out = []
        for prompt, p in zip(prompts, plist):
            text = prompt[-1]["content"]
            n = self.seen.get(text, 0)
            self.seen[text] = n + 1
            reply = self._reply(text, n)
            k = min(p.top1_logprobs, 5)
            out.append(Generation(reply, len(reply.split()), "stop", [-0.2] * k or None))
        return out

    def _reply(self, text: str, n: int) -> str:
        if "new instructions of this kind" in text:
            return AUGMENT_REPLY
        if text.startswith("You write Python functions"):
            inst = re.search(r"Instruction: (.*)\n", text).group(1)
            replies = self.verifiers.get(inst, ["I cannot do that."])
            return replies[min(n, len(replies) - 1)]
        if text.startswith("Answer the query below"):
            if "Use at most 30 words." in text:
                return "A short answer."
            return "It is finished, all done." if n % 2 else "Here is my long answer."
        return "50"  # judges

    def close(self):
        pass


def _write_inputs(tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(
        "# two seeds\nWrite your entire response in lowercase letters.\n"
        "Answer with at least 200 words.\n"
    )
    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps([_conv(q) for q in QUERIES]))
    return seeds, queries


def _cfg(tmp_path, *extra):
    seeds, queries = _write_inputs(tmp_path)
    return compose_cfg(
        [
            "scenario=autoif",
            "engine=hf",
            f"cache_dir={tmp_path / 'c'}",
            f"models_dir={MODELS_DIR}",
            "logger=none",
            f"scenario.seeds={seeds}",
            f"scenario.queries={queries}",
            "scenario.max_instructions=null",
            "scenario.sandbox.timeout=2",
            "stages=[evolve,respond]",
            *extra,
        ]
    )


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def scripted(monkeypatch):
    return use_engine(monkeypatch, AutoIFEngine())


def test_scenario_end_to_end_counts(tmp_path, scripted):
    run_dir = tmp_path / "run"
    # rounds=2 (the demo's default) runs the one AutoIF pass.
    summary = Run(_cfg(tmp_path, "rounds=2"), run_dir).run()
    assert summary["rounds"] == 1 and not (run_dir / "round_2").exists()
    m = json.loads((run_dir / "round_1" / "metrics.json").read_text())
    ev = m["evolve"]
    assert {k: ev[k] for k in ev if k.startswith(("samples", "instructions", "seeds"))} == {
        "samples": 2,
        "samples_truncated": 0,
        "instructions_generated": 16,  # non-blank lines of the two samples
        "instructions_parsed": 10,  # bulleted lines
        "instructions_new": 3,  # after dedupe, without the seed it repeats
        "seeds": 2,
        "instructions": 5,
        "instructions_checked": 5,
        "instructions_cross_checked": 3,
        "instructions_kept": 2,
        "instructions_dropped": {"no function": 2, "no case agreed": 1},
    }
    assert ev["verifier_replies"] == 10
    assert ev["reply_failures"] == {
        BAD_JSON: 1,
        NO_JSON: 1,
        NO_EVALUATE: 1,
        MISSING_FUNC: 1,
        COMPILE_ERROR: 1,
    }
    assert ev["functions_parsed"] == 7  # every reply with a func string
    assert ev["functions_parsed"] + 3 == ev["verifier_replies"]  # + no json, bad json, no func
    assert ev["functions_compiled"] == 4  # distinct, defining evaluate, compiling
    assert ev["functions_kept"] == 2 and ev["network_lines_dropped"] == 1
    assert ev["cases_parsed"] == 11 and ev["cases_unique"] == 10 and ev["cases_bad"] == 0
    assert ev["cases_kept"] == 6  # 30 words: 3 of 4; done: 3 of 3
    assert (ev["attempted"], ev["parsed"], ev["failed"]) == (5, 2, 3)
    assert ev["queries_loaded"] == 6 and ev["queries_usable"] == 3
    assert ev["queries_per_instruction"] == 2 and ev["records"] == 4

    evolved = _jsonl(run_dir / "round_1" / "evolved.jsonl")
    assert len(evolved) == 4 and {r["meta"]["source_id"] for r in evolved} == {"aug0-0", "aug0-3"}
    for r in evolved:
        assert r["input"] in (QUERIES[0], QUERIES[2], QUERIES[5])
        assert r["meta"]["method"] == "autoif" and r["meta"]["instruction_source"] == "augment"
        assert len(r["meta"]["verifiers"]) == 1 and r["meta"]["verifiers"][0]["accuracy"] == 1.0
    words = next(r for r in evolved if r["instruction"] == "Use at most 30 words.")
    assert words["meta"]["verifiers"][0]["func"].strip() == WORDS_FUNC
    info = _jsonl(run_dir / "autoif_instructions.jsonl")
    # new constraints first (their duplicates and the one repeating a seed dropped), seeds last
    assert [x["id"] for x in info] == ["aug0-0", "aug0-3", "aug0-4", "seed0", "seed1"]
    assert [x["failure"] for x in info] == [
        None,
        None,
        "no case agreed",
        "no function",
        "no function",
    ]
    done = info[1]
    assert [f["kept"] for f in done["functions"]] == [True, False]
    assert done["functions"][1]["accuracy"] == pytest.approx(2 / 3)
    assert len(_jsonl(run_dir / "autoif_augment.jsonl")) == 2

    assert m["respond"]["responded"] == 4
    # The level the machine allowed (core.sandbox), recorded beside the counts.
    assert m["verify"].pop("sandbox_isolation") in ("full", "userns", "uid", "process")
    assert m["verify"].pop("sandbox_memory_limit") in ("cgroup", "per process")
    assert m["verify"] == {
        "responses": 4,
        "responses_verified": 4,
        "responses_passed": 2,  # "A short answer." passes; the long answer never ends in "done"
        "responses_failed": 2,
        "responses_empty": 0,
        "unverifiable": 0,
        "pass_rate_threshold": 0.5,
        "pass_rule": "at_least",
        "pass_rate_mean": 0.5,
        "kept": 2,
    }
    rows = _jsonl(run_dir / "round_1" / "verification.jsonl")
    assert [row["passed"] for row in rows] == [r["instruction"] != DONE_LINE for r in evolved]
    verified = _jsonl(run_dir / "round_1" / "verified.jsonl")
    assert len(verified) == 2 and all(r["meta"]["pass_rate"] == 1.0 for r in verified)
    assert len(_jsonl(run_dir / "round_1" / "responded.jsonl")) == 4
    assert summary["round_1/verify/kept"] == 2 and summary["round_1/evolve/parsed"] == 2
    assert not (run_dir / "round_1" / "dpo.jsonl").exists()


DONE_LINE = 'End your response with the word "done".'


def test_dpo_pairs_and_equal_size(tmp_path, scripted):
    run_dir = tmp_path / "run"
    cfg = _cfg(
        tmp_path,
        "scenario.dpo.enabled=true",
        "scenario.dpo.samples=2",
        "filter=none",
        "filter.equal_size=1",
        "stages=[evolve,respond,filter]",
    )
    summary = Run(cfg, run_dir).run()
    m = json.loads((run_dir / "round_1" / "metrics.json").read_text())
    # "done" records: greedy fails, sample 0 ends in "done", sample 1 fails -> one pair each;
    # "30 words" records: every response passes -> no rejected answer, no pair.
    assert m["verify"]["dpo_pairs"] == 2 and m["verify"]["dpo_samples"] == 2
    pairs = _jsonl(run_dir / "round_1" / "dpo.jsonl")
    assert all(p["instruction"] == DONE_LINE for p in pairs)
    assert all(p["chosen"] == "It is finished, all done." for p in pairs)
    assert all(p["rejected"] == "Here is my long answer." for p in pairs)
    assert m["verify"]["responses_passed"] == 2 and m["verify"]["kept"] == 2
    assert len(_jsonl(run_dir / "round_1" / "verified.jsonl")) == 2
    # filter.equal_size cuts the verified set (seeded): the final size is recorded.
    assert summary["filter/before_equal_size"] == 2 and summary["filter/equal_size"] == 1
    assert summary["filter/kept"] == 1 and len(_jsonl(run_dir / "selected.jsonl")) == 1


def test_equal_size_larger_than_the_set_fails_clearly(tmp_path, scripted):
    cfg = _cfg(tmp_path, "filter=none", "filter.equal_size=5", "stages=[evolve,respond,filter]")
    with pytest.raises(DataError, match="equal_size=5 but this job selects only 2 records"):
        Run(cfg, tmp_path / "run").run()


def test_score_and_filter_on_autoif_records(tmp_path, scripted):
    cfg = _cfg(
        tmp_path,
        "stages=[evolve,respond,score,filter]",
        "filter=random",
        "filter.keep_ratio=0.5",
        "metrics.ifd.enabled=false",
        "metrics.diversity.enabled=false",
    )
    s = Run(cfg, tmp_path / "run").run()
    # judges and the top-1 probe (under the augmentation prompt) run on the verified records
    assert s["round_1/score/records"] == 2 and s["round_1/score/judge/complexity_mean"] == 50
    assert s["round_1/score/confidence/scored"] == 2
    assert s["filter/kept"] == 1


def test_no_surviving_verifier_still_runs(tmp_path, monkeypatch):
    use_engine(monkeypatch, AutoIFEngine(verifiers={}))
    cfg = _cfg(
        tmp_path,
        "stages=[evolve,respond,score,filter,train]",
        "filter=random",
        "metrics.ifd.enabled=false",
        "metrics.diversity.enabled=false",
    )
    s = Run(cfg, tmp_path / "run").run()
    assert s["round_1/evolve/instructions_checked"] == 5
    assert s["round_1/evolve/reply_failures/no json"] == 10
    assert s["round_1/evolve/instructions_kept"] == 0 and s["round_1/evolve/records"] == 0
    assert s["round_1/verify/kept"] == 0 and s["filter/kept"] == 0
    assert s["train/skipped"] == "no records"  # nothing to fine-tune on; the job still ends ok
    assert (tmp_path / "run" / "round_1" / "verified.jsonl").read_text() == ""


def test_verify_hook_directly(tmp_path):
    """The verification step on hand-made records: pass rates over two functions, an empty
    response, a record without verifiers, and the threshold."""
    from evolvers.base import build_scenario

    scenario = build_scenario(compose_cfg(["scenario=autoif"]).scenario)
    lower = "def evaluate(response):\n    return response == response.lower()"
    verifiers = [{"id": "f0", "func": WORDS_FUNC}, {"id": "f1", "func": lower}]

    def rec(rid, output, funcs=verifiers):
        return {
            "id": rid,
            "instruction": "c",
            "input": "q",
            "output": output,
            "meta": {"verifiers": funcs},
        }

    records = [
        rec("both", "a short answer"),
        rec("half", "A Short Answer"),  # short, not lowercase: 0.5
        rec("none", "WORD " * 40),
        rec("empty", ""),  # both functions accept "", but an empty answer passes nothing
        rec("bare", "anything", funcs=[]),
    ]
    result = scenario.verify("set", records, generate=None)
    kept, counts = result.kept, result.counts
    assert [r["id"] for r in kept] == ["both", "half"]
    assert [r["meta"]["pass_rate"] for r in kept] == [1.0, 0.5]
    assert counts["responses_verified"] == 4 and counts["responses_empty"] == 1
    assert counts["unverifiable"] == 1 and counts["responses_failed"] == 2
    rows = result.files["verification.jsonl"]  # written by the runner into the set's folder
    assert rows[1]["functions"] == {"f0": True, "f1": False}
    assert rows[3]["pass_rate"] == 0.0 and rows[3]["functions"] == {"f0": True, "f1": True}
    scenario.cfg.pass_rate = 1.0
    assert [r["id"] for r in scenario.verify("set", records, generate=None).kept] == ["both"]
    # Upstream AutoIF's rule (table3_autoif): kept when any kept function accepts the response;
    # an empty response still passes nothing.
    scenario.cfg.pass_rate, scenario.cfg.pass_rule = 0.0, "above"
    result = scenario.verify("set", records, generate=None)
    assert [r["id"] for r in result.kept] == ["both", "half"]
    half_of_one = rec("one", "A SHORT ANSWER")  # short but not lowercase: one of two functions
    assert [r["id"] for r in scenario.verify("set", [half_of_one], None).kept] == ["one"]
    scenario.cfg.pass_rule = "at_least"  # >= 0 keeps everything checkable, the empty one too
    assert len(scenario.verify("set", records, generate=None).kept) == 4


def test_one_pass_and_template_overrides(tmp_path):
    from evolvers.base import build_scenario

    scenario = build_scenario(compose_cfg(["scenario=autoif"]).scenario)
    assert scenario.max_rounds == 1  # the runner caps rounds (test_pipeline_with_fake_engine)
    assert '- Use the word "however" exactly once.' in scenario.augment_prompt()[0]["content"]
    mine = tmp_path / "verifier.txt"
    mine.write_text("Check this: {instruction}\n")
    cfg = compose_cfg(["scenario=autoif", f"scenario.templates.verifier={mine}"]).scenario
    prompt = build_scenario(cfg).verifier_prompt("Answer in lowercase.")
    assert prompt == [{"role": "user", "content": "Check this: Answer in lowercase.\n"}]
    missing = compose_cfg(["scenario=autoif", "scenario.templates.respond=/nope.txt"])
    with pytest.raises(ConfigError, match="not found"):
        build_scenario(missing.scenario)


@pytest.mark.slow
def test_autoif_on_the_bundled_model(tmp_path, bundled_model_dir):
    """`python run.py scenario=autoif` with tiny sizes: a 135M model rarely writes a verifier that
    survives, so the counts must add up whatever it writes."""
    res = run_cli(
        [
            "scenario=autoif",
            "engine=hf",
            "logger=none",
            "scenario.n_samples=1",
            "scenario.max_instructions=3",
            "scenario.k_verifiers=2",
            "scenario.max_tokens.augment=160",
            "scenario.max_tokens.verifier=160",
            "generation.greedy.max_tokens=48",
            "stages=[evolve,respond,report]",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            f"hydra.run.dir={tmp_path}/run",
        ],
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    run_dir = tmp_path / "run"
    s = json.loads((run_dir / "summary.json").read_text())
    ev = json.loads((run_dir / "round_1" / "metrics.json").read_text())["evolve"]
    assert ev["samples"] == 1 and ev["instructions_checked"] == 3 and ev["verifier_replies"] == 6
    assert ev["instructions"] == ev["instructions_new"] + 36
    f = ev["reply_failures"]
    unparsed = sum(f.get(k, 0) for k in (NO_JSON, BAD_JSON, MISSING_FUNC))
    assert ev["functions_parsed"] + unparsed == ev["verifier_replies"]
    assert ev["functions_compiled"] <= ev["functions_parsed"]
    assert ev["functions_kept"] <= ev["functions_compiled"]
    assert ev["instructions_kept"] + sum(ev["instructions_dropped"].values()) == 3
    assert ev["records"] == ev["instructions_kept"] * ev["queries_per_instruction"]
    assert s["round_1/respond/responded"] + s["round_1/respond/empty"] == ev["records"]
    v = s["round_1/verify/responses_passed"] + s["round_1/verify/responses_failed"]
    assert v == ev["records"] and s["round_1/verify/kept"] == s["round_1/verify/responses_passed"]
    for f in ("evolved.jsonl", "responded.jsonl", "verification.jsonl", "verified.jsonl"):
        assert (run_dir / "round_1" / f).is_file()
    assert len(_jsonl(run_dir / "autoif_instructions.jsonl")) == 3
