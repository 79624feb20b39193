"""The pairwise judge: verdict parsing, the swap logic on fixed verdict pairs, and a run with the
real bundled model as judge (which rarely writes a readable verdict: counted, not a crash)."""

import pytest

from engines.base import Generation
from evaluation.pairwise import combine, judge_pairs, parse_verdict


@pytest.mark.parametrize(
    "text,verdict",
    [
        ("A is clearer.\nVerdict: A", "A"),
        ("Verdict: **B**", "B"),
        ("verdict: Tie", "tie"),
        ("Verdict: A ... on reflection\nVerdict: B", "B"),
        ("Verdict: Answer A", "A"),
        ("I prefer A.", None),
        ("Verdict: C", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "first,swapped,outcome",
    [
        ("A", "B", "win"),
        ("B", "A", "lose"),
        ("A", "A", "tie"),
        ("B", "B", "tie"),
        ("tie", "B", "tie"),
        ("A", "tie", "tie"),
        (None, "B", "unparseable"),
        ("A", None, "unparseable"),
    ],
)
def test_swap_logic(first, swapped, outcome):
    assert combine(first, swapped) == outcome


def test_counts_from_scripted_verdicts():
    script = {
        "x-ab": "Verdict: A",
        "x-ba": "Verdict: B",  # win
        "y-ab": "Verdict: A",
        "y-ba": "Verdict: A",  # position bias -> tie
        "z-ab": "Verdict: B",
        "z-ba": "Verdict: A",  # lose
        "w-ab": "no idea",
        "w-ba": "Verdict: B",
    }  # unparseable
    seen = []

    def generate(prompts):
        seen.extend(prompts)
        return {i: Generation(script[i], 3, "stop") for i, _ in prompts}

    items = [
        {"id": k, "instruction": "Q", "answer_1": "ANSWER_ONE", "answer_2": "ANSWER_TWO"}
        for k in "xyzw"
    ]
    rows, c = judge_pairs(items, generate)
    assert [r["outcome"] for r in rows] == ["win", "tie", "lose", "unparseable"]
    assert c == {
        "win": 1,
        "tie": 1,
        "lose": 1,
        "unparseable": 1,
        "win_rate": 1 / 3,
        "tie_rate": 1 / 3,
        "lose_rate": 1 / 3,
    }
    ab = dict(seen)["x-ab"][0]["content"]
    ba = dict(seen)["x-ba"][0]["content"]
    assert ab.index("ANSWER_ONE") < ab.index("ANSWER_TWO")
    assert ba.index("ANSWER_TWO") < ba.index("ANSWER_ONE")


@pytest.mark.slow
def test_bundled_model_as_judge(hf_engine):
    from engines.base import Sampling

    def generate(prompts):
        gens = hf_engine.generate([p for _, p in prompts], Sampling(max_tokens=48))
        return {i: g for (i, _), g in zip(prompts, gens)}

    items = [
        {
            "id": "p1",
            "instruction": "Name the capital of France.",
            "answer_1": "Paris.",
            "answer_2": "I like turtles.",
        }
    ]
    rows, c = judge_pairs(items, generate)
    assert sum(c[k] for k in ("win", "tie", "lose", "unparseable")) == 1
    assert rows[0]["outcome"] in ("win", "tie", "lose", "unparseable")


def test_instruction_sources(tmp_path, monkeypatch):
    """bundled, a local copy of AlpacaFarm's alpaca_eval.json (its own fields), and the hub
    source offline: a clear error saying how to supply the file."""
    import json

    from core.errors import ConfigError
    from core.records import read_records
    from evaluation.run import pairwise_instructions
    from evaluation.tasks import BUNDLED_DATA

    bundled = BUNDLED_DATA / "pairwise"
    assert len(list(read_records(pairwise_instructions("bundled", bundled)))) == 8
    rows = [
        {"instruction": f"Q{i}", "output": "a", "generator": "text_davinci_003", "dataset": "x"}
        for i in range(3)
    ]
    local = tmp_path / "alpaca_eval.json"
    local.write_text(json.dumps(rows, indent=2))
    got = list(read_records(pairwise_instructions(str(local), bundled)))
    assert [r["instruction"] for r in got] == ["Q0", "Q1", "Q2"]
    with pytest.raises(ConfigError, match="no file .*missing.json"):
        pairwise_instructions(str(tmp_path / "missing.json"), bundled)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="instructions=/path/to/alpaca_eval.json"):
        pairwise_instructions("alpaca_eval", bundled)
