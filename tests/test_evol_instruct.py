import pytest

from core.errors import ConfigError
from engines.base import Generation
from evolvers.base import clean_evolution
from evolvers.evol_instruct import (
    EvolInstruct,
    EvolInstructConfig,
    evolved_record,
    method_for,
    method_names,
)

DEPTH = ["add_constraints", "deepen", "concretize", "reasoning"]


@pytest.mark.parametrize("breadth", [False, True])
def test_rotation_is_i_plus_r_mod_k(breadth):
    cfg = EvolInstructConfig(methods=DEPTH, use_breadth=breadth)
    methods = method_names(cfg)
    k = 5 if breadth else 4
    assert len(methods) == k and (methods[-1] == "breadth") == breadth
    table = [[method_for(i, r, methods) for r in range(3)] for i in range(6)]
    for i in range(6):
        for r in range(3):
            assert table[i][r] == methods[(i + r) % k]
    # Row 0 walks the list; item 1 starts one further on.
    assert table[0] == methods[:3] and table[1][0] == methods[1]


def test_plan_uses_seed_index_not_position():
    ev = EvolInstruct(EvolInstructConfig(methods=DEPTH, use_breadth=False))
    parents = [
        {"id": "s7-r1", "instruction": "x", "meta": {"source_id": "s7", "seed_index": 7}},
        {"id": "s2-r1", "instruction": "y", "meta": {"source_id": "s2", "seed_index": 2}},
    ]
    plan = ev.plan(parents, round_num=2)
    assert [m for _, m, _ in plan] == [DEPTH[(7 + 1) % 4], DEPTH[(2 + 1) % 4]]
    prompt = plan[0][2][0]["content"]
    assert "x" in prompt and "specific" not in prompt  # deepen, not concretize
    assert prompt.rstrip().endswith("Rewritten prompt:")


def test_breadth_prompt_uses_breadth_template():
    ev = EvolInstruct(EvolInstructConfig(methods=DEPTH, use_breadth=True))
    text = ev.prompt({"instruction": "Sort a list."}, "breadth")[0]["content"]
    assert "prompt creator" in text and "Sort a list." in text


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid: .*add_constraints.*breadth"):
        EvolInstruct(EvolInstructConfig(methods=["shout"], use_breadth=False))


def test_template_override_by_path(tmp_path):
    t = tmp_path / "mine.txt"
    t.write_text("MINE {method} :: {instruction}")
    ev = EvolInstruct(EvolInstructConfig(methods=DEPTH, templates={"depth": str(t)}))
    assert ev.prompt({"instruction": "Q"}, "deepen")[0]["content"].startswith("MINE ")


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("#Rewritten Prompt#: Do X with Y.", "Do X with Y."),
        ('**Rewritten prompt:**\n"Do X with Y."', "Do X with Y."),
        ("Rewritten Prompt: 'Do X'", "Do X"),
        ("Created Prompt:\nWrite a sonnet.", "Write a sonnet."),
        ("  Plain text stays.  ", "Plain text stays."),
        ("Line one\nLine two", "Line one\nLine two"),
    ],
)
def test_clean_evolution(raw, clean):
    assert clean_evolution(raw) == clean


def _parent():
    return {
        "id": "s0",
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "meta": {"source_id": "s0", "seed_index": 0},
    }


@pytest.mark.parametrize(
    "text,ok,failure",
    [
        ("Give three tips for staying healthy, each backed by a study.", True, None),
        ("#Rewritten Prompt#:", False, "empty"),
        ("   ", False, "empty"),
        ('"give three tips  for staying healthy."', False, "unchanged"),
    ],
)
def test_evolved_record_parse_status(text, ok, failure):
    rec = evolved_record(_parent(), "deepen", 1, "m", Generation(text, 9, "stop"), "s0-r1")
    assert rec["meta"]["parse_ok"] is ok
    assert rec["meta"].get("failure") == failure
    assert rec["meta"]["raw"] == text and rec["meta"]["parent_id"] == "s0"
    assert rec["id"] == "s0-r1" and rec["meta"]["round"] == 1 and rec["meta"]["model"] == "m"
