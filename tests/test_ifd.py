"""IFD / IC-IFD: the batched two-pass scorer against a one-record-at-a-time computation with plain
transformers calls (HF's own loss), on the real bundled model."""

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from core.records import make_record, query_text
from engines.precision import hardware
from metrics.ifd import (
    FusedCrossEntropy,
    IFDScorer,
    attention_for,
    ifd_from_losses,
    token_cross_entropy,
    tokenise,
)

RECORDS = [
    make_record(
        "plain",
        "Name the largest planet in the solar system.",
        "",
        "Jupiter is the largest planet.",
    ),
    make_record(
        "with_input", "Translate the sentence into French.", "The cat sleeps.", "Le chat dort."
    ),
    make_record(
        "unicode",
        "Écris un haïku sur l'été 🌞.",
        "",
        "Soleil brûlant — les cigales chantent, 夏の日.",
    ),
    make_record(
        "long", "Explain recursion.", "", " ".join(["Recursion is a function calling itself."] * 40)
    ),
    make_record("short_q", "Hi", "", "Hello! How can I help you today?"),
    make_record("empty_a", "Say nothing.", "", ""),
]
CUTOFF = 96  # small, so the long answer is truncated


def test_formulas_and_guards():
    r = ifd_from_losses(2.0, 4.0, 2.5)
    assert r["ifd"] == pytest.approx(0.8) and r["ic_ifd"] == pytest.approx(0.2)
    p = ifd_from_losses(2.0, 4.0, 2.5, form="ppl")
    assert p["ifd"] == pytest.approx(math.exp(2.0) / math.exp(2.5))
    assert p["ic_ifd"] == pytest.approx(p["ifd"] / math.exp(4.0))
    assert ifd_from_losses(1.0, None, 2.0)["ic_ifd"] is None
    assert "L(Q)" in ifd_from_losses(1.0, None, 2.0)["ifd_reason"]
    assert ifd_from_losses(1.0, 1.0, 0.0)["ifd"] is None
    assert ifd_from_losses(None, 1.0, 1.0)["ifd_reason"].startswith("answer")
    with pytest.raises(ValueError, match="valid: loss, ppl"):
        ifd_from_losses(1.0, 1.0, 1.0, form="log")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_loss_matches_torch_cross_entropy(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(37, 1000, generator=g) * 4).to(dtype)
    targets = torch.randint(0, 1000, (37,), generator=g)
    want = F.cross_entropy(logits.double(), targets, reduction="none")
    eager = token_cross_entropy(logits, targets)
    fused = FusedCrossEntropy()(logits, targets)
    assert eager.dtype == fused.dtype == torch.float32  # fp32 loss whatever the logits' dtype
    torch.testing.assert_close(eager.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.double(), want, rtol=1e-6, atol=1e-6)


def test_fused_loss_falls_back_to_eager(caplog):
    def broken(*_):
        raise RuntimeError("no C++ compiler")

    loss = FusedCrossEntropy()
    loss.fn = broken
    logits, targets = torch.randn(3, 10), torch.tensor([1, 2, 3])
    with caplog.at_level(logging.WARNING, logger="metrics.ifd"):
        got = loss(logits, targets)
    assert "using eager" in caplog.text and not loss.fused
    torch.testing.assert_close(got, F.cross_entropy(logits, targets, reduction="none"))
    assert loss.fn is token_cross_entropy  # no second attempt


def test_attention_choice():
    assert attention_for("auto", torch.bfloat16, "cpu") == "eager"
    assert attention_for("auto", torch.float32, "cpu") is None  # transformers' default
    assert attention_for("auto", torch.bfloat16, "cuda") is None
    assert attention_for("sdpa", torch.bfloat16, "cpu") == "sdpa"


@pytest.fixture(scope="module")
def scorer(bundled_model_dir):
    return IFDScorer(bundled_model_dir, dtype="float32", max_length=CUTOFF, token_budget=512)


def _reference(scorer, record):
    """Batch size 1, HF's own shifted loss with -100 labels, one call per quantity."""
    model, tok = scorer.model, scorer.tokenizer
    q, a = query_text(record), record["output"]
    t = tokenise(tok, q, a, CUTOFF)
    x = torch.tensor([t.x])
    with torch.no_grad():
        lab_aq = x.clone()
        lab_aq[0, : t.n_q] = -100
        l_aq = model(input_ids=x, labels=lab_aq).loss.item()
        lab_q = x.clone()
        lab_q[0, t.n_q :] = -100
        l_q = model(input_ids=x, labels=lab_q).loss.item() if t.n_q > 1 else None
        a_ids = torch.tensor([t.a])
        l_a = model(input_ids=a_ids, labels=a_ids).loss.item()
    return l_aq, l_q, l_a


@pytest.mark.slow
def test_batched_scores_match_batch_size_one(scorer):
    got = scorer.score(RECORDS)
    by_id = dict(zip((r["id"] for r in RECORDS), got))
    assert by_id["long"]["truncated"] and not by_id["plain"]["truncated"]
    assert by_id["empty_a"]["ifd"] is None and by_id["empty_a"]["ifd_reason"] == "empty output"
    checked = 0
    for rec, res in zip(RECORDS, got):
        if rec["id"] == "empty_a":
            continue
        l_aq, l_q, l_a = _reference(scorer, rec)
        for key, ref in (("loss_a_given_q", l_aq), ("loss_q", l_q), ("loss_a", l_a)):
            if ref is None:
                assert res[key] is None
            else:
                assert res[key] == pytest.approx(ref, rel=1e-4), (rec["id"], key)
        assert res["ifd"] == pytest.approx(l_aq / l_a, rel=1e-4)
        if l_q:
            assert res["ic_ifd"] == pytest.approx(l_aq / (l_q * l_a), rel=1e-4)
        checked += 1
    assert checked == 5


@pytest.mark.slow
def test_query_token_boundary(scorer):
    tok = scorer.tokenizer
    for rec in RECORDS:
        q = query_text(rec)
        t = tokenise(tok, q, rec["output"], 10_000)
        assert t.x[: t.n_q] == tok(q)["input_ids"]
        assert tok.decode(t.x) == q + "\n" + rec["output"]


# fp32 unit roundoff. The fused and eager losses read the same bf16 logits and differ only in how
# the fp32 logsumexp over the vocabulary is reduced (order, vectorised exp): a sum of V terms
# carries a rounding error of about sqrt(V) * u (the probabilistic bound for sums with independent
# rounding errors, Higham & Mary 2019), so each token's loss may differ by that much in absolute
# terms; 8x that leaves room for the exp approximations and the mean over tokens.
U32 = 2.0**-24


def _fp32_reduction_tol(vocab: int) -> float:
    return 8 * math.sqrt(vocab) * U32


@pytest.mark.slow
def test_bf16_scorer_on_cpu(scorer, bundled_model_dir):
    """The bf16 path (eager attention, fused fp32 loss) against the fp32 scorer, and the fused
    loss against the eager one on the same bf16 model. About bf16 itself, so it runs only where
    bf16 is native: elsewhere every bf16 matmul is emulated (~100x slower) and `auto` never picks
    it."""
    hw = hardware()
    if not hw.cpu_bf16:
        pytest.skip(f"no native bf16: {hw.why_no_cpu_bf16()}")
    fused = IFDScorer(bundled_model_dir, dtype="bfloat16", max_length=CUTOFF, token_budget=512)
    assert fused.model.config._attn_implementation == "eager"
    eager = IFDScorer(
        bundled_model_dir,
        dtype="bfloat16",
        max_length=CUTOFF,
        token_budget=512,
        compile_loss=False,
    )
    want = scorer.score(RECORDS)
    got_fused, got_eager = fused.score(RECORDS), eager.score(RECORDS)
    tol = _fp32_reduction_tol(fused.model.config.vocab_size)
    for w, f, e in zip(want, got_fused, got_eager):
        for key in ("loss_a_given_q", "loss_q", "loss_a"):
            if w[key] is None:
                assert f[key] is None and e[key] is None
                continue
            assert f[key] == pytest.approx(e[key], abs=tol)
            # Against fp32 the model itself differs: every weight and activation is rounded to
            # bf16's 8 significant bits (u = 2^-9 ~ 2e-3), through 30 layers. That is a perturbed
            # model, not a reordered sum, so the bound is empirical: 25u relative.
            assert f[key] == pytest.approx(w[key], rel=25 * 2.0**-9)
        if w["ifd"] is not None:
            # A ratio of two losses: relative errors add.
            rel = tol / e["loss_a_given_q"] + tol / e["loss_a"]
            assert f["ifd"] == pytest.approx(e["ifd"], rel=rel)


@pytest.mark.slow
def test_ifd_from_the_vllm_engine_equals_the_transformers_scorer(tmp_path):
    """metrics.ifd.backend=engine: the losses come from the vLLM engine's prompt
    log-probabilities (the engine a large scorer is already sharded in) through the score
    stage; on the bundled model in fp32 every loss and score equals the transformers scorer's
    within 1e-3 relative."""
    from pipeline.runner import Run
    from tests.conftest import MODELS_DIR, compose_cfg

    f = tmp_path / "data.jsonl"
    f.write_text(
        "".join(
            json.dumps({"instruction": q, "output": a}) + "\n"
            for q, a in [
                ("Add 2 and 2.", "2 plus 2 equals 4."),
                ("Name a colour of the sky.", "The sky is usually blue on a clear day."),
                ("Give a synonym for happy.", "Joyful."),
            ]
        )
    )
    base = [
        f"cache_dir={tmp_path / 'cache'}",
        f"models_dir={MODELS_DIR}",
        "data=file",
        f"data.path={f}",
        "metrics=[ifd]",
        "stages=[score]",
        "model.dtype=float32",
        "metrics.ifd.dtype=float32",
        "logger=none",
    ]
    rows = {}
    for backend, engine in (("transformers", "hf"), ("engine", "vllm")):
        run = tmp_path / backend
        Run(compose_cfg([*base, f"engine={engine}", f"metrics.ifd.backend={backend}"]), run).run()
        rows[backend] = [
            json.loads(x) for x in (run / "input" / "scores.jsonl").read_text().splitlines()
        ]
    assert len(rows["engine"]) == 3
    for ref, got in zip(rows["transformers"], rows["engine"]):
        for k in ("loss_a_given_q", "loss_q", "loss_a", "ifd", "ic_ifd"):
            assert got[k] == pytest.approx(ref[k], rel=1e-3), k
