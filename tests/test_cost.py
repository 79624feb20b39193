"""The cost on paper (reporting.cost): tokens from the composed config's sizes, GPU-hours by model
size, a sweep's jobs, and estimates set beside a job's summary.json. No model loads."""

from __future__ import annotations

import pytest

from core.config import compose_config
from reporting import cost
from reporting.cost import (
    INSTRUCTION_TOKENS,
    JUDGE_ANSWER_TOKENS,
    PROMPT_TOKENS,
    compare_to_summary,
    estimate,
    jobs,
    parse_size,
    per_gpu_rate,
    seed_count,
    study,
)

TINY = ["data=tiny", "rounds=2"]


def _rows(est, stage, what=None):
    return [r for r in est.rows if r.stage == stage and (what is None or r.what == what)]


def test_tiny_token_arithmetic_is_the_hand_computation():
    cfg = compose_config(TINY)
    est = estimate(cfg)
    with open(cfg.data.path, encoding="utf-8") as f:
        rows_in_file = sum(1 for line in f if line.strip())
    seeds = min(int(cfg.data.limit), rows_in_file)
    assert seed_count(cfg) == seeds
    rounds = int(cfg.rounds)
    evolve_cap = int(cfg.generation.evolve.max_tokens)
    greedy_cap = int(cfg.generation.greedy.max_tokens)

    evolve = _rows(est, "evolve")
    assert [r.what for r in evolve] == [f"round {r}" for r in range(1, rounds + 1)]
    for r in evolve:
        assert (r.calls, r.tokens_in, r.tokens_out) == (
            seeds,
            seeds * PROMPT_TOKENS["evolve"],
            seeds * evolve_cap,
        )
    respond = _rows(est, "respond")
    assert len(respond) == rounds  # every round's set is answered
    assert all(r.tokens_out == seeds * greedy_cap for r in respond)
    assert all(r.tokens_in == seeds * PROMPT_TOKENS["respond"] for r in respond)

    scored = seeds * rounds
    for kind in ("complexity", "difficulty"):
        (judge,) = _rows(est, "score", f"judge {kind}")
        cap = min(greedy_cap, int(cfg.metrics.judge.max_tokens[kind]), JUDGE_ANSWER_TOKENS)
        assert (judge.calls, judge.tokens_out) == (scored, scored * cap)
        assert judge.tokens_in == scored * PROMPT_TOKENS["judge"]
    (conf,) = _rows(est, "score", "confidence")
    assert conf.tokens_out == scored * int(cfg.metrics.confidence.positions)
    (ifd,) = _rows(est, "score", "ifd")
    length = int(cfg.metrics.ifd.max_length)
    per = min(INSTRUCTION_TOKENS + greedy_cap, length) + min(greedy_cap, length)
    assert (ifd.calls, ifd.tokens_in, ifd.tokens_out) == (2 * scored, scored * per, 0)

    (train,) = _rows(est, "train")
    t = cfg.train
    sequences = seeds * int(t.epochs)
    if t.max_steps:
        sequences = min(sequences, int(t.max_steps) * int(t.effective_batch_size))
    per = min(PROMPT_TOKENS["train_turn"] + greedy_cap, int(t.cutoff_len))
    assert (train.calls, train.tokens_in) == (sequences, sequences * per)

    for task in cfg.eval.tasks:
        (row,) = _rows(est, "evaluate", str(task))
        items = min(cost.EVAL_ITEMS[str(task)], int(cfg.eval.limit))
        own = cost.EVAL_GEN_TOKENS.get(str(task), cost.LM_EVAL_DEFAULT_GEN_TOKS)
        assert row.tokens_out == items * min(own, int(cfg.eval.max_gen_toks))
        assert row.tokens_in == items * cost.EVAL_PROMPT_TOKENS[str(task)]


def test_typical_lengths_are_below_the_caps():
    caps = estimate(compose_config([*TINY, "generation.evolve.max_tokens=2048"]))
    typical = estimate(compose_config([*TINY, "generation.evolve.max_tokens=2048"]), typical=True)
    (a, *_), (b, *_) = _rows(caps, "evolve"), _rows(typical, "evolve")
    assert b.tokens_out == a.calls * cost.TYPICAL_OUTPUT_TOKENS["evolve"] < a.tokens_out


def test_stages_not_selected_cost_nothing():
    est = estimate(compose_config([*TINY, "stages=[evolve,respond]"]))
    assert {r.stage for r in est.rows} == {"evolve", "respond"}


def test_a_72b_evolver_costs_more_than_small_ones():
    hours, gpus = {}, {}
    for name in ("qwen2.5_0.5b", "llama3.1_8b", "qwen2.5_72b"):
        est = estimate(compose_config([*TINY, f"model={name}"]))
        hours[name] = est.gpu_hours("evolve")
        gpus[name] = {r.gpus for r in _rows(est, "evolve")}
    assert hours["qwen2.5_72b"] > hours["llama3.1_8b"] > hours["qwen2.5_0.5b"] > 0
    assert gpus == {"qwen2.5_0.5b": {1}, "llama3.1_8b": {1}, "qwen2.5_72b": {8}}  # TP x PP


def test_rates_go_through_the_anchors():
    t = cost.THROUGHPUT_H100
    assert per_gpu_rate("decode", 8.0) == pytest.approx(t["decode_8b_per_replica"])
    assert per_gpu_rate("decode", 70.0) == pytest.approx(t["decode_70b_per_node"] / 8)
    assert per_gpu_rate("prefill", 70.0) == pytest.approx(t["prefill_70b_per_node"] / 8)
    assert per_gpu_rate("train", 8.0) == pytest.approx(t["train_8b_per_gpu"])
    cap = cost.MAX_SMALL_MODEL_SPEEDUP * t["decode_8b_per_replica"]
    assert per_gpu_rate("decode", 0.1) == pytest.approx(cap)


def test_sizes_from_names():
    assert parse_size("qwen2.5_72b") == 72
    assert parse_size("llama3.1_8b") == 8
    assert parse_size("mixtral_8x7b") == 56
    assert parse_size("smollm2_135m") == pytest.approx(0.135)
    assert parse_size("internlm/internlm2-7b-reward") == 7
    assert parse_size("sentence-transformers/all-mpnet-base-v2") is None
    # a model config without size_b: from its name
    assert cost.size_b({"name": "qwen2.5_72b", "size_b": None}) == 72


def test_a_sweep_is_its_jobs_and_shared_work_counts_once():
    got = jobs(["experiment=table1_evol"])
    assert len(got) == 6  # the preset's sweep: 2 evolvers x 3 domains
    assert {tuple(sorted(o for o in j if o.startswith(("model=", "domain=")))) for j in got} == {
        (f"domain={d}", f"model={m}")
        for m in ("llama3.1_70b", "llama3.1_8b")
        for d in ("code", "general", "math")
    }
    # the command line's sweep replaces the preset's for that key
    got = jobs(["experiment=table1_evol", "model=qwen2.5_0.5b,qwen2.5_72b", "domain=math"])
    assert len(got) == 2 and all("domain=math" in j for j in got)

    # two students of one evolution: the evolution and responses once, training twice
    s = study([*TINY, "model@train.student=smollm2_135m,smollm2_360m"])
    assert len(s.estimates) == 2
    one = s.estimates[0]
    totals = s.totals()
    assert totals["evolve"]["tokens_out"] == sum(r.tokens_out for r in _rows(one, "evolve"))
    assert totals["train"]["tokens_in"] == sum(
        r.tokens_in for e in s.estimates for r in _rows(e, "train")
    )
    assert s.gpu_hours() < sum(e.gpu_hours() for e in s.estimates)


def test_compare_to_summary_pairs_the_stages_present():
    est = estimate(compose_config(TINY))
    summary = {
        "time/evolve": 12.5,
        "time/score": 3.0,
        "time/report": 1.0,  # not a cost stage
        "time/model_load": 4.0,
        "time/total": 30.0,
        "engine/generated_tokens": 5000,
    }
    rows = compare_to_summary(est, summary)
    seconds = [r for r in rows if r["what"] == "seconds"]
    assert [r["stage"] for r in seconds] == ["evolve", "score"]
    for r in seconds:
        assert r["measured"] == summary[f"time/{r['stage']}"]
        assert r["estimated"] == round(est.seconds(r["stage"]), 2) > 0
        assert r["ratio"] == pytest.approx(r["measured"] / est.seconds(r["stage"]), rel=1e-2)
    (tokens,) = [r for r in rows if r["what"] == "generated tokens"]
    ran = ("evolve", "score")
    assert tokens["estimated"] == sum(r.tokens_out for r in est.rows if r.stage in ran)
    assert tokens["measured"] == 5000
    assert compare_to_summary(est, {"time/total": 1.0}) == []


def test_cli_prints_the_tables(capsys, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "cost.py"
    spec = importlib.util.spec_from_file_location("bench_cost", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([*TINY, "stages=[evolve]"]) == 0
    out = capsys.readouterr().out
    assert "| **total (1 job)** |" in out and "| evolve | model | smollm2_135m | round 2 |" in out
    summary = tmp_path / "summary.json"
    summary.write_text('{"time/evolve": 2.0, "time/total": 3.0}')
    assert mod.main([*TINY, "stages=[evolve]", "--caps-only", "--compare", str(summary)]) == 0
    out = capsys.readouterr().out
    assert "typical" not in out and "| evolve | seconds |" in out
