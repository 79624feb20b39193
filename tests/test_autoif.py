"""AutoIF: the reply parsers on fixed replies, augmentation cleaning, query loading, equal-size
subsampling, cross-validation through the real sandbox, the whole scenario with a scripted engine
(exact counts), and a run on the real bundled model."""

import json
import logging
import re

import pytest

import engines.pool as engine_pool
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
from evolvers.ifeval_types import IFEVAL_TYPES, ifeval_overlap
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
from pipeline.arms import JobOverrides
from pipeline.runner import Run
from tests.conftest import MODELS_DIR, compose_cfg, run_cli
from tests.fakes import no_weights, use_engine

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
    # Upstream AutoIF's reading (scenario.string_booleans=false): a string is not a boolean.
    r = parse_verifier(json.dumps(obj), string_booleans=False)
    assert r.cases == [] and r.bad_cases == 6
    obj["cases"].append({"input": "d", "output": False})
    assert parse_verifier(json.dumps(obj), string_booleans=False).cases == [("d", False)]
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


# Instructions in the manner of each of IFEval's 25 checker types (this project's wording).
IFEVAL_LIKE = {
    "keywords:existence": "Make sure the keywords sunlight and harbor appear in your reply.",
    "keywords:frequency": 'The word "market" should show up at least 4 times.',
    "keywords:forbidden_words": 'Never use the words "cheap" or "easy" in your answer.',
    "keywords:letter_frequency": "In your answer, the letter q must occur at least 5 times.",
    "language:response_language": "Reply only in German; no other language is allowed.",
    "length_constraints:number_sentences": "Your answer must contain at most 6 sentences.",
    "length_constraints:number_paragraphs": "Split the answer into 3 paragraphs.",
    "length_constraints:number_words": "Keep the answer under 200 words.",
    "length_constraints:nth_paragraph_first_word": (
        "Write 4 paragraphs; the second paragraph must start with the word 'Moreover'."
    ),
    "detectable_content:number_placeholders": "Add at least 3 placeholders such as [name].",
    "detectable_content:postscript": "At the end add a P.P.S. line.",
    "detectable_format:number_bullet_lists": "Give exactly 4 bullet points using markdown.",
    "detectable_format:constrained_response": "Say 'My answer is no.' or 'My answer is yes.'",
    "detectable_format:number_highlighted_sections": "Highlight at least 3 parts with markdown.",
    "detectable_format:multiple_sections": "Mark the parts of your reply SECTION 1 and SECTION 2.",
    "detectable_format:json_format": "Wrap the whole output in JSON.",
    "detectable_format:title": "Give the answer a title, wrapped like <<my title>>.",
    "combination:two_responses": "Provide two different responses, separated by six asterisks.",
    "combination:repeat_prompt": "Before answering, repeat the request without changing anything.",
    "startend:end_checker": "Finish your answer with the exact phrase 'Any other questions?'.",
    "startend:quotation": "Enclose your entire reply in double quotation marks.",
    "change_case:english_capital": "Your entire response must be in English, in capital letters.",
    "change_case:english_lowercase": "Everything you write must be in lower case.",
    "change_case:capital_word_frequency": "Use all-caps words at least 3 times.",
    "punctuation:no_comma": "Refrain from using any commas.",
}

# The seed file this project bundled before: IFEval's checker types, near word for word.
OLD_SEEDS = (
    "Write your entire response in lowercase letters; no capital letters are allowed.",
    "Write your entire response in capital letters only.",
    'Use exactly 3 bullet points in markdown, each starting with "* ".',
    "Wrap your entire response in double quotation marks.",
    "Format your entire response as valid JSON.",
    "Answer in fewer than 50 words.",
    "Answer in at least 120 words.",
    'End your response with the exact phrase "Is there anything else I can help '
    'with?" and nothing after it.',
    "Do not use any commas in your response.",
    "Include a title wrapped in double angular brackets, such as <<a day at sea>>.",
    "Write exactly 4 paragraphs, separated from each other by the markdown divider ***.",
    'Start your response with the word "Yes".',
    'Include the keywords "river" and "stone" in your response.',
    'Do not use the word "very" anywhere in your response.',
    'The letter "z" must appear at least 3 times in your response.',
    "Highlight at least 2 parts of your answer with markdown italics, for example "
    "*highlighted part*.",
    'Finish your response with a postscript that starts with "P.S.".',
    'Divide your response into 3 sections, each beginning with "SECTION" followed by its number.',
    "Include at least 2 placeholders in square brackets, such as [address].",
    "Answer in exactly one sentence.",
    "Use no more than 5 sentences in your response.",
    "First repeat the request word for word, then give your answer.",
    "Give two different answers, separated by six asterisks: ******.",
    'Use the word "because" at least twice.',
    "Use fewer than 4 words written entirely in capital letters.",
    "End your response with a question mark.",
    "Write your answer as a numbered list with exactly 5 items.",
    "Do not use any digits in your response.",
    "End every sentence with an exclamation mark.",
    "Keep every line of your response under 60 characters.",
    'Start at least 3 lines of your response with "> ".',
    "Put your entire response inside one markdown code block.",
    'Answer with one of these options only: "My answer is yes.", "My answer is no.", '
    '"My answer is maybe."',
    'Use the word "however" exactly once.',
    "Write exactly 2 paragraphs, separated by one blank line.",
    "Include a markdown table with at least 2 rows.",
)


def test_ifeval_overlap_names_each_of_the_25_types():
    assert {name for name, _ in IFEVAL_TYPES} == set(IFEVAL_LIKE) and len(IFEVAL_TYPES) == 25
    assert {k: ifeval_overlap(v) for k, v in IFEVAL_LIKE.items()} == {k: k for k in IFEVAL_LIKE}
    assert ifeval_overlap("Write the reply in Morse code.") is None
    assert ifeval_overlap("Wrap it in \u201cdouble quotes\u201d.") == "startend:quotation"


def test_bundled_seeds_restate_no_ifeval_type():
    from evolvers.autoif import SEEDS_FILE

    flagged = {s: ifeval_overlap(s) for s in read_seed_constraints(SEEDS_FILE) if ifeval_overlap(s)}
    assert flagged == {}
    hits = [s for s in OLD_SEEDS if ifeval_overlap(s)]
    assert len(OLD_SEEDS) == 36 and len(hits) >= 28  # the 7 or so left are not IFEval's types


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
    return compose_cfg(_cfg_overrides(tmp_path, *extra))


def _cfg_overrides(tmp_path, *extra):
    seeds, queries = _write_inputs(tmp_path)
    return [
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


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def scripted(monkeypatch):
    return use_engine(monkeypatch, AutoIFEngine())


def test_scenario_end_to_end_counts(tmp_path, scripted, caplog):
    run_dir = tmp_path / "run"
    # rounds=2 (the demo's default) runs the one AutoIF pass.
    with caplog.at_level(logging.WARNING, logger="evolvers.autoif"):
        summary = Run(_cfg(tmp_path, "rounds=2"), run_dir).run()
    assert "2 of 2 seed constraints restate IFEval instruction types" in caplog.text
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
        # both kept constraints restate IFEval types (number_words, end_checker)
        "instructions_kept_ifeval_flagged": 2,
        # both of this test's seeds restate IFEval types (SPEC §3.1), listed by type
        "seeds_ifeval_flagged": 2,
        "seeds_ifeval_overlap": {
            "change_case:english_lowercase": ["Write your entire response in lowercase letters."],
            "length_constraints:number_words": ["Answer with at least 200 words."],
        },
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
    # The level the machine allowed (the sandbox package), recorded beside the counts.
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


def test_string_booleans_false_drops_string_cases(tmp_path, scripted):
    s = Run(_cfg(tmp_path, "scenario.string_booleans=false"), tmp_path / "run").run()
    # the two "true"/"True" cases of the script become bad cases, as upstream loses them
    assert s["round_1/evolve/cases_bad"] == 2 and s["round_1/evolve/cases_parsed"] == 9
    assert s["round_1/evolve/cases_kept"] == 4  # 30 words: 2 of 3; done: 2 of 2
    assert s["round_1/evolve/instructions_kept"] == 2


def test_unverified_responses_are_all_kept(tmp_path, scripted):
    run_dir = tmp_path / "run"
    cfg = _cfg(
        tmp_path, "scenario.verify_responses=false", "filter=none", "stages=[evolve,respond,filter]"
    )
    s = Run(cfg, run_dir).run()
    # the paper's AutoIF: the two responses that fail their constraint are trained on too
    assert s["round_1/respond/responded"] == 4 and s["filter/kept"] == 4
    assert not any(k.startswith("round_1/verify/") for k in s)
    assert not (run_dir / "round_1" / "verified.jsonl").exists()
    assert len(_jsonl(run_dir / "selected.jsonl")) == 4


class FakeEmbedder:
    """Stands in for the sentence embedder: a unit vector per text, from its checksum."""

    def __init__(self, *args, **kwargs):
        pass

    def encode(self, texts, batch_size=64):
        import zlib

        import numpy as np

        emb = np.asarray([[1.0, zlib.crc32(t.encode()) % 97, len(t)] for t in texts])
        return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)

    def close(self):
        pass


def test_equal_size_constraints_n_cuts_before_respond_and_score(tmp_path, scripted, monkeypatch):
    import metrics.diversity

    monkeypatch.setattr(metrics.diversity, "Embedder", FakeEmbedder)

    def run(name, *extra):
        cfg = _cfg(
            tmp_path,
            "scenario.equal_size_constraints=1",
            "scenario.verify_responses=false",
            "stages=[evolve,respond,score,filter]",
            "filter=none",
            "metrics.ifd.enabled=false",
            *extra,
        )
        return Run(cfg, tmp_path / name).run()

    s = run("a")
    cut = json.loads((tmp_path / "a" / "round_1" / "metrics.json").read_text())["cut"]
    assert cut == {
        "constraints_before": 2,
        "records_before": 4,
        "equal_size_constraints": 1,
        "constraints": 1,
        "records": 2,
    }
    kept = _jsonl(tmp_path / "a" / "round_1" / "cut.jsonl")
    assert len(kept) == 2 and len({r["meta"]["source_id"] for r in kept}) == 1  # all its queries
    assert len(_jsonl(tmp_path / "a" / "round_1" / "evolved.jsonl")) == 4
    # Only the cut set is answered and scored: the set-level numbers (diversity: each query's
    # nearest neighbour in the set) are the cut arm's, as the paper computed them.
    assert s["round_1/respond/responded"] == 2 and s["round_1/score/records"] == 2
    scores = _jsonl(tmp_path / "a" / "round_1" / "scores.jsonl")
    assert [r["id"] for r in scores] == [r["id"] for r in kept]
    assert "round_1/score/diversity/nn_l2sq_mean" in s and s["filter/kept"] == 2
    run("b")
    assert _jsonl(tmp_path / "b" / "round_1" / "cut.jsonl") == kept  # seeded
    with pytest.raises(DataError, match="equal_size_constraints=3 but this job kept only 2"):
        run("c", "scenario.equal_size_constraints=3")


def test_equal_size_constraints_smallest_across_arms(tmp_path, monkeypatch):
    """smollm2_360m's script keeps one constraint (no verifier for "done"), smollm2_135m's two:
    both arms are cut to one constraint, with all its queries."""
    built = {}
    fewer = {k: v for k, v in VERIFIER_REPLIES.items() if k != DONE_LINE}

    def build(engine_cfg, model_cfg, models_dir):
        name = str(model_cfg.name)
        built.setdefault(name, AutoIFEngine(fewer if name == "smollm2_360m" else None))
        return built[name]

    monkeypatch.setattr(engine_pool, "build_engine", build)
    no_weights(monkeypatch)
    sweep = {"model": ["smollm2_135m", "smollm2_360m"]}
    extra = ["scenario.equal_size_constraints=smallest", "scenario.verify_responses=false"]

    def job(model):
        task = [f"model={model}", *_cfg_overrides(tmp_path, *extra)]
        return Run(compose_cfg(task), tmp_path / model, job=JobOverrides(task, sweep)).run()

    small = job("smollm2_135m")
    assert small["round_1/cut/arm_sizes/smollm2_135m"] == 2
    assert small["round_1/cut/arm_sizes/smollm2_360m"] == 1
    assert small["round_1/cut/constraints"] == 1 and small["round_1/respond/responded"] == 2
    # The other arm ran here up to its evolve stage only: nothing answered for its sake.
    arm = tmp_path / "smollm2_135m" / "arms" / "model=smollm2_360m"
    assert (arm / "round_1" / "evolved.jsonl").is_file()
    assert not (arm / "round_1" / "responded.jsonl").exists()
    large = job("smollm2_360m")
    assert large["round_1/cut/constraints"] == 1 and large["round_1/respond/responded"] == 2
    assert large["round_1/cut/arm_sizes/smollm2_135m"] == 2


def test_paper_preset_runs_autoif_as_the_paper_did():
    cfg = compose_cfg(["experiment=table3_autoif", "scenario.queries=q.json"])
    sc = cfg.scenario
    assert sc.equal_size_constraints == "smallest" and cfg.filter.equal_size is None
    assert sc.verify_responses is False and sc.string_booleans is False
    plain = compose_cfg(["scenario=autoif"]).scenario  # today's behaviour elsewhere
    assert plain.verify_responses and plain.string_booleans
    assert plain.equal_size_constraints is None


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


def _scripted_generate(augment_reply):
    """A `generate` for `evolve_round` on AutoIFEngine's replies, with this augmentation reply."""
    engine = AutoIFEngine()

    def generate(items, max_tokens=None):
        out = {}
        for i, prompt in items:
            text = prompt[-1]["content"]
            n = engine.seen.get(text, 0)
            engine.seen[text] = n + 1
            augment = "new instructions of this kind" in text
            reply = augment_reply if augment else engine._reply(text, n)
            out[i] = Generation(reply, len(reply.split()), "stop")
        return out

    return generate


def test_counts_belong_to_their_call_and_the_sandbox_is_injected(tmp_path):
    """Two evolve_round calls on one scenario: each call's records get that call's counts (the
    scenario keeps none between calls). The sandbox service given to build_scenario runs the
    programs and is left open for its owner; without one, AutoIF runs its own per step."""
    from evolvers.autoif import AutoIF, EvolvedRecords
    from evolvers.base import build_scenario
    from sandbox import SandboxService

    cfg = _cfg(tmp_path).scenario
    with SandboxService() as service:
        scenario = build_scenario(cfg, sandbox=service)
        assert isinstance(scenario, AutoIF) and scenario.sandbox is service
        first = scenario.evolve_round([], 1, "m", _scripted_generate(AUGMENT_REPLY), None)
        second = scenario.evolve_round([], 1, "m", _scripted_generate(""), None)
        assert not service.closed and service.usage.ran > 0
        ran = service.usage.ran
    one, two = scenario.counts(first), scenario.counts(second)
    assert (one["instructions_generated"], one["instructions_kept"], one["records"]) == (16, 2, 4)
    assert (two["instructions_generated"], two["instructions_new"], two["records"]) == (0, 0, 0)
    assert isinstance(first, EvolvedRecords) and len(first) == 4 and not second
    # Records from elsewhere: only counted, nothing of an earlier call.
    assert scenario.counts(list(first)) == {"records": 4}
    # Without a service: one of its own per sandbox step, closed after it.
    alone = build_scenario(cfg)
    assert alone.sandbox is None
    again = alone.evolve_round([], 1, "m", _scripted_generate(AUGMENT_REPLY), None)
    assert alone.counts(again) == one and ran > 0
    # Scenarios that run no program ignore the service.
    plain = build_scenario(compose_cfg([]).scenario, sandbox=object())
    assert not hasattr(plain, "sandbox")


def test_one_pass_and_template_overrides(tmp_path):
    from evolvers.base import build_scenario

    scenario = build_scenario(compose_cfg(["scenario=autoif"]).scenario)
    assert scenario.max_rounds == 1  # the runner caps rounds (test_pipeline_with_fake_engine)
    assert (
        "- Make the last line of the reply identical to its first line."
        in (scenario.augment_prompt()[0]["content"])
    )
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
