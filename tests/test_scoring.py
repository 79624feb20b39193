"""Metrics and filters: parsers and math (fast), then each metric on the real bundled models."""

import json
import math

import numpy as np
import pytest
import torch

from core.errors import ConfigError, DataError
from engines.base import Generation
from metrics.base import filters
from metrics.confidence import confidence_record, confidence_summary
from metrics.diversity import diversity_scores, embed, nearest_neighbours
from metrics.filters import select_top_fraction
from metrics.judge import label_counts, parse_complexity, parse_difficulty
from metrics.reward import reward_summary
from pipeline.runner import Run
from tests.conftest import MODELS_DIR, compose_cfg


@pytest.mark.parametrize(
    "text,score",
    [
        ("85", 85.0),
        ("Score: 72/100", 72.0),
        ("I'd say 150, no, 60.", 60.0),
        ("around 33.5", 33.5),
        ("no idea", None),
        ("-", None),
        ("2024 was 999", None),
    ],
)
def test_parse_complexity(text, score):
    assert parse_complexity(text) == score


@pytest.mark.parametrize(
    "text,label",
    [
        ("Difficulty: Hard", "hard"),
        ("Not easy at all. Difficulty: VERY HARD", "very hard"),
        ("It is very easy", "very easy"),
        ("It is medium, maybe easy", "easy"),
        ("medium", "medium"),  # the level alone, as the template asks
        ("Very Hard.", "very hard"),
        ("**hard**", "hard"),
        ("no label", None),
        ("Difficulty: very\\n easy".replace("\\n", "\n"), "very easy"),
        ("Difficulty: hard (it is not easy)", "hard"),  # the label the template asks for
    ],
)
def test_parse_difficulty_reads_the_level(text, label):
    assert parse_difficulty(text) == label


def test_a_difficulty_reply_cut_off_before_its_label_line_is_a_failure():
    cut = "The user wants a poem. It needs easy rhyming skills and some"
    assert parse_difficulty(cut, "length") is None
    assert parse_difficulty(cut + " medium. Difficulty: medium", "length") == "medium"
    assert parse_difficulty(cut, "stop") == "easy"
    # A judge that answered with the level and went on talking until the cap gave its level.
    assert parse_difficulty("hard. The query asks for a proof that needs", "length") == "hard"


def test_the_judge_templates_ask_for_the_answer_alone():
    """The paper's structure (its eval_complex_score/eval_complex_rate prompts): the score or the
    level alone, not reasoning first and a label line last."""
    from metrics.judge import load_judge_templates

    t = load_judge_templates({})
    assert "{query}" in t["complexity"] and "{query}" in t["difficulty"]
    assert "alone" in t["complexity"] and "alone" in t["difficulty"]
    assert "Difficulty: <label>" not in t["difficulty"] and "First," not in t["difficulty"]


def test_label_counts():
    c = label_counts(["easy", "easy", "hard", None])
    assert c["counts"]["easy"] == 2 and c["failed"] == 1
    assert c["percent"]["easy"] == pytest.approx(200 / 3) and sum(c["percent"].values()) == 100


def _recs(n):
    return [
        {"id": f"r{i}", "instruction": f"q{i}", "input": "", "output": "a", "meta": {}}
        for i in range(n)
    ]


def test_filters_rank_break_ties_and_keep_ratio():
    recs = _recs(8)
    scores = {
        f"r{i}": {
            "ic_ifd": [0.5, 0.9, 0.9, None, 0.1, 0.7, 0.2, 0.3][i],
            "ifd": [0.5, 1.2, 0.9, 0.4, 0.1, 0.7, 0.2, 0.3][i],
            "instruction_tokens": [5, 3, 9, 1, 7, 3, 2, 8][i],
        }
        for i in range(8)
    }
    kept, c = select_top_fraction(recs, scores, "ic_ifd", 0.25)
    assert [r["id"] for r in kept] == ["r1", "r2"] and c["no_score"] == 1 and c["kept"] == 2
    kept, _ = select_top_fraction(recs, scores, "length", 0.5)
    assert [r["id"] for r in kept] == ["r3", "r6", "r1", "r5"]  # ascending, ties by id
    kept, c = select_top_fraction(recs, scores, "ifd", 0.25, drop_ifd_above_1=True)
    assert c["dropped_ifd_above_1"] == 1 and [r["id"] for r in kept] == ["r2", "r5"]
    a, _ = select_top_fraction(recs, scores, "random", 0.5, seed=1)
    b, _ = select_top_fraction(list(reversed(recs)), scores, "random", 0.5, seed=1)
    assert a == b and len(a) == 4  # seeded, independent of input order
    assert len(select_top_fraction(recs, {}, "none", 1.0)[0]) == 8


def test_filter_errors():
    with pytest.raises(DataError, match="no record left"):
        select_top_fraction(_recs(3), {}, "ic_ifd", 0.25)
    with pytest.raises(ConfigError, match="valid: .*ic_ifd"):
        select_top_fraction(_recs(3), {}, "best", 0.25)
    with pytest.raises(DataError, match="keep_ratio"):
        select_top_fraction(_recs(3), {}, "random", 0.0)
    assert set(filters()) == {"ic_ifd", "ifd", "length", "instruction_loss", "random", "none"}


def test_nearest_neighbours_torch_and_faiss_agree():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 32)).astype(np.float32)
    emb[10] = emb[20] + 0.01  # near duplicates
    emb[30] = emb[20]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a = nearest_neighbours(emb, 0.05, use_faiss=False)
    b = nearest_neighbours(emb, 0.05, use_faiss=True)
    assert np.allclose(a["max_cos"], b["max_cos"], atol=1e-5)
    assert a["near_dups"] == b["near_dups"]
    assert a["near_dups"][20] == 2 and a["near_dups"][10] == 2 and sum(a["near_dups"]) == 6


def test_confidence_and_reward_math():
    r = confidence_record(Generation("x", 3, "stop", [math.log(0.5), math.log(0.25), 0.0]), 5)
    assert r["top1_probs"] == pytest.approx([0.5, 0.25, 1.0]) and r["top1_mean"] == pytest.approx(
        7 / 12
    )
    s = confidence_summary([r, {"top1_mean": None, "top1_probs": []}])
    assert s["failed"] == 1 and sum(s["histogram"]) == 3 and s["mean"] == pytest.approx(7 / 12)
    rs = reward_summary([1.0, 3.0, None], [10, 30, 5])
    assert rs["mean"] == 2.0 and rs["scored"] == 2
    assert rs["lc_mean"] == pytest.approx((1 / 10 * 20 + 3 / 30 * 20) / 2)


def test_pad_id_fallback():
    from metrics.ifd import pad_id_for

    class Tok:
        pad_token_id, eos_token_id = None, 7

    assert pad_id_for(Tok()) == 7
    Tok.eos_token_id = None
    assert pad_id_for(Tok()) == 0
    Tok.pad_token_id = 3
    assert pad_id_for(Tok()) == 3


# ---- real models -----------------------------------------------------------------------------
@pytest.mark.slow
def test_bundled_embedder_finds_duplicates():
    texts = [
        "Sort a list of numbers in Python.",
        "Sort a list of numbers in Python.",
        "Describe the water cycle.",
        "Write a poem about the sea.",
    ]
    emb = embed(texts, "bundled:all-MiniLM-L6-v2")
    assert emb.shape == (4, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    cfg = compose_cfg().metrics.diversity
    res = diversity_scores(texts, cfg, emb=emb)
    assert res[0]["near_dups"] == 1 and res[0]["nn_l2sq"] < 1e-4
    assert res[2]["near_dups"] == 0 and res[2]["nn_l2sq"] > 0.5


@pytest.mark.slow
def test_reward_scorer_with_a_local_head(tmp_path, bundled_model_dir, monkeypatch):
    """No reward model can be had offline: a sequence-classification head on the bundled weights."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from metrics.reward import RewardScorer, reward_pair

    torch.manual_seed(0)
    head = AutoModelForSequenceClassification.from_pretrained(bundled_model_dir, num_labels=1)
    head.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(bundled_model_dir).save_pretrained(tmp_path / "rm")
    rm = RewardScorer(str(tmp_path / "rm"), dtype="float32", batch_size=4)
    prompt = [{"role": "user", "content": "Rewrite: Sort a list."}]
    pairs = [
        reward_pair(prompt, t)
        for t in [
            "Sort a list of integers in descending order.",
            "Sort.",
            "Sort a list " * 20,
            "Hi",
        ]
    ]
    batched = rm.score(pairs)
    one_by_one = [rm.score([p])[0] for p in pairs]
    assert batched == pytest.approx(one_by_one, rel=1e-4, abs=1e-4)
    assert len(set(round(x, 4) for x in batched)) == 4

    # The metric in a run: the length-controlled mean counts the evolved instruction's tokens
    # under the reward model's tokenizer.
    from pipeline.runner import Run
    from tests.fakes import FakeEngine, use_engine

    use_engine(monkeypatch, FakeEngine())
    cfg = compose_cfg(
        [
            "engine=hf",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            "data.limit=4",
            "rounds=1",
            "stages=[evolve,respond,score]",
            "metrics=[reward]",
            "metrics.reward.enabled=true",
            f"metrics.reward.model={tmp_path / 'rm'}",
            "metrics.reward.dtype=float32",
        ]
    )
    s = Run(cfg, tmp_path / "run").run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "round_1" / "scores.jsonl").open()]
    evolved = {
        r["id"]: r["instruction"]
        for r in map(json.loads, (tmp_path / "run" / "round_1" / "evolved.jsonl").open())
    }
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    lengths = [len(tok(evolved[r["id"]], add_special_tokens=False).input_ids) for r in rows]
    want = reward_summary([r["reward"] for r in rows], lengths)
    assert s["round_1/score/reward/lc_mean"] == pytest.approx(want["lc_mean"], abs=1e-4)
    assert lengths != [len(evolved[r["id"]].split()) for r in rows]  # tokens, not words


@pytest.mark.slow
def test_score_and_filter_stages_fill_every_metric(tmp_path, bundled_model_dir):
    cfg = compose_cfg(
        [
            "engine=hf",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            "data.limit=6",
            "rounds=2",
            "generation.evolve.max_tokens=48",
            "generation.greedy.max_tokens=48",
            "metrics.ifd.max_length=256",
            # Training and evaluation are covered by the full-pipeline tests.
            "stages=[evolve,respond,score,filter]",
        ]
    )
    s = Run(cfg, tmp_path / "run").run()
    fields = {
        "complexity",
        "difficulty",
        "top1_mean",
        "nn_l2sq",
        "nn_cosine",
        "near_dups",
        "ifd",
        "ic_ifd",
        "loss_q",
        "loss_a",
        "loss_a_given_q",
        "q_tokens",
        "instruction_tokens",
    }
    for r in (1, 2):
        rows = [json.loads(x) for x in (tmp_path / "run" / f"round_{r}" / "scores.jsonl").open()]
        assert len(rows) == s[f"round_{r}/evolve/parsed"]
        for row in rows:
            assert fields <= set(row), fields - set(row)
            assert 1 <= row["instruction_tokens"] <= row["q_tokens"]  # the length baseline's
            assert (
                row["ifd"] is None
                or row["ic_ifd"] is None
                or row["ic_ifd"] == pytest.approx(row["ifd"] / row["loss_q"])
            )
        for key in (
            "score/ifd/ic_ifd_mean",
            "score/ifd/ifd_mean",
            "score/diversity/nn_l2sq_mean",
            "score/confidence/mean",
            "score/judge/difficulty/failed",
        ):
            assert f"round_{r}/{key}" in s
    selected = [json.loads(x) for x in (tmp_path / "run" / "selected.jsonl").open()]
    rows = {
        json.loads(x)["id"]: json.loads(x)
        for x in (tmp_path / "run" / "round_2" / "scores.jsonl").open()
    }
    valid = sorted((v["ic_ifd"], k) for k, v in rows.items() if v["ic_ifd"] is not None)
    assert len(selected) == math.ceil(0.25 * len(valid)) == s["filter/kept"]
    assert selected[0]["id"] == max(valid)[1]  # best IC-IFD first

    # Scoring an existing file: outputs present -> scored; missing -> a clear error or a skip.
    f = tmp_path / "data.jsonl"
    f.write_text(
        '{"instruction": "Add 2 and 2.", "output": "2 plus 2 equals 4."}\n'
        '{"instruction": "Name a colour."}\n'
    )
    base = [
        "engine=hf",
        f"cache_dir={tmp_path / 'cache'}",
        f"models_dir={MODELS_DIR}",
        "data=file",
        f"data.path={f}",
        "metrics.judge.enabled=false",
        "metrics.confidence.enabled=false",
    ]
    from pipeline.runner import run_job

    assert run_job(compose_cfg([*base, "stages=[score]"]), tmp_path / "e") is None
    err = json.loads((tmp_path / "e" / "summary.json").read_text())["error"]
    assert "1 of 2 records" in err and "respond" in err
    s2 = Run(
        compose_cfg([*base, "stages=[score]", "metrics.ifd.missing_output=skip"]), tmp_path / "s"
    ).run()
    assert s2["input/score/ifd/skipped_no_output"] == 1 and s2["input/score/ifd/ifd_null"] == 0
