"""Every engine against the real bundled model (SmolLM2-135M-Instruct)."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engines.base import Sampling
from engines.openai_engine import OpenAIEngine

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]
GREEDY = Sampling(temperature=0.0, max_tokens=24)


def _check(gens, n, max_tokens):
    assert len(gens) == n
    for g in gens:
        assert g.text.strip() and 0 < g.num_tokens <= max_tokens
        assert g.finish_reason in ("stop", "length")
        assert g.prompt_tokens > 0


def test_hf_engine_chat_and_plain_prompts(hf_engine):
    gens = hf_engine.generate([CHAT, "The capital of France is"], GREEDY)
    _check(gens, 2, 24)
    # Greedy is deterministic, and a batch gives what one prompt at a time gives.
    alone = hf_engine.generate([CHAT], GREEDY)[0]
    assert alone.text == gens[0].text


def test_hf_engine_top1_logprobs_and_seeded_sampling(hf_engine):
    p = Sampling(temperature=0.7, top_p=0.95, max_tokens=16, top1_logprobs=5, seed=3)
    a = hf_engine.generate([CHAT, CHAT], p)
    b = hf_engine.generate([CHAT, CHAT], p)
    assert [g.text for g in a] == [g.text for g in b]
    for g in a:
        assert len(g.top1_logprobs) == min(5, g.num_tokens)
        assert all(-30 < lp <= 0 for lp in g.top1_logprobs)


def _check_top_logprobs(engine):
    """The K largest raw log-probabilities per position, largest first, the first being the
    top-1 (what temperature calibration reads)."""
    p = Sampling(max_tokens=5, top1_logprobs=5, top_logprobs=20)
    (g,) = engine.generate([CHAT], p)
    assert len(g.top_logprobs) == len(g.top1_logprobs) == min(5, g.num_tokens) >= 1
    for top1, tops in zip(g.top1_logprobs, g.top_logprobs):
        assert len(tops) == 20 and tops == sorted(tops, reverse=True)
        assert abs(tops[0] - top1) < 1e-4
        assert sum(math.exp(x) for x in tops) <= 1 + 1e-3
    assert engine.generate([CHAT], GREEDY)[0].top_logprobs is None  # only when asked


def test_hf_engine_top_logprobs(hf_engine):
    _check_top_logprobs(hf_engine)


def test_vllm_engine_top_logprobs(vllm_engine):
    _check_top_logprobs(vllm_engine)


def test_vllm_engine_many_long_sampled_prompts(vllm_engine):
    # More prompt tokens than one scheduler step takes: prefill is chunked, which must not crash.
    long = [
        [{"role": "user", "content": f"Rewrite this prompt {k}: " + "word " * 300}]
        for k in range(16)
    ]
    p = [Sampling(temperature=0.7, top_p=0.95, max_tokens=4, seed=k) for k in range(16)]
    assert len(vllm_engine.generate(long, p)) == 16


def test_vllm_engine(vllm_engine):
    gens = vllm_engine.generate([CHAT, "The capital of France is"], GREEDY)
    _check(gens, 2, 24)
    assert vllm_engine.generate([CHAT], GREEDY)[0].text == gens[0].text
    p = Sampling(temperature=0.7, top_p=0.95, max_tokens=16, top1_logprobs=5, seed=11)
    a = vllm_engine.generate([CHAT], [p])
    if vllm_engine.per_prompt_seeds:  # GPUs; the CPU build seeds per engine (see VLLMEngine)
        assert vllm_engine.generate([CHAT], [p])[0].text == a[0].text
    assert len(a[0].top1_logprobs) == min(5, a[0].num_tokens)
    assert all(lp <= 0 for lp in a[0].top1_logprobs)
    assert max(math.exp(lp) for lp in a[0].top1_logprobs) > 0.05


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _openai_server(engine):
    """A minimal OpenAI-compatible server of the test's own, on loopback, backed by `engine`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            chat = self.path.endswith("/chat/completions")
            k = body.get("top_logprobs", 0) if chat else body.get("logprobs") or 0
            p = Sampling(
                temperature=body["temperature"],
                top_p=body["top_p"],
                max_tokens=body["max_tokens"],
                seed=body.get("seed"),
                top1_logprobs=5 if k else 0,
            )
            g = engine.generate([body["messages"] if chat else body["prompt"]], p)[0]
            lps = g.top1_logprobs or []
            if chat:
                choice = {"message": {"role": "assistant", "content": g.text}}
                if k:
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": "t",
                                "logprob": lp,
                                "top_logprobs": [{"token": "t", "logprob": lp}],
                            }
                            for lp in lps
                        ]
                    }
            else:
                choice = {"text": g.text}
                if k:
                    choice["logprobs"] = {"top_logprobs": [{"t": lp} for lp in lps]}
            choice["finish_reason"] = g.finish_reason
            out = json.dumps(
                {
                    "choices": [choice],
                    "usage": {"completion_tokens": g.num_tokens, "prompt_tokens": g.prompt_tokens},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_openai_engine_against_a_loopback_server(hf_engine):
    server = _openai_server(hf_engine)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        engine = OpenAIEngine(url, model="smollm2", max_concurrency=2)
        gens = engine.generate([CHAT, "The capital of France is"], GREEDY)
        _check(gens, 2, 24)
        assert gens[0].text == hf_engine.generate([CHAT], GREEDY)[0].text
        lp = engine.generate([CHAT, "Once upon"], Sampling(max_tokens=8, top1_logprobs=5))
        assert all(g.top1_logprobs and all(x <= 0 for x in g.top1_logprobs) for g in lp)
    finally:
        server.shutdown()


def test_openai_engine_unreachable_server_is_a_clear_error():
    from core.errors import UserFacingError

    engine = OpenAIEngine("http://127.0.0.1:9/v1", model="m", retries=0, timeout_s=2)
    with pytest.raises(UserFacingError, match="no answer from .* start the server"):
        engine.generate([CHAT], GREEDY)


@pytest.mark.heavy
@pytest.mark.slow
def test_data_parallel_replicas_generate_what_one_engine_does(tmp_path):
    """engine.replicas=2: vLLM's own data-parallel server with two replicas of the bundled model
    (on the CPU here). Greedy generations in fp32 (no bf16 rounding that batch shapes could
    tip) equal the single offline engine's, and the cache keys are the same: the single-engine
    path finds the replicas' results and computes nothing."""
    from core.cache import StepCache
    from engines.pool import EnginePool
    from engines.vllm_server import VLLMServerEngine
    from tests.conftest import MODELS_DIR, compose_cfg

    questions = [
        "Name three primary colours.",
        "What is 12 times 12?",
        "Write one sentence about the sea.",
        "Give a synonym for quick.",
        "What is the capital of Italy?",
        "List two uses of a paperclip.",
    ]
    items = [
        (f"q{i}", [{"role": "user", "content": q}], Sampling(max_tokens=24))
        for i, q in enumerate(questions)
    ]

    def pool(replicas, cache):
        cfg = compose_cfg(["engine=vllm", f"engine.replicas={replicas}", "model.dtype=float32"])
        return EnginePool(cfg.engine, StepCache(cache), MODELS_DIR), cfg.model

    dp, model = pool(2, tmp_path / "a")
    got = dp.generate("evolve", model, items)
    server = dp._loaded[1]
    assert isinstance(server, VLLMServerEngine) and server.replicas == 2
    dp.release()
    assert server.proc.poll() is not None  # the server and its replicas are stopped

    one, model = pool(1, tmp_path / "b")
    single = one.generate("evolve", model, items)
    one.release()
    assert {i: g.text for i, g in got.items()} == {i: g.text for i, g in single.items()}
    assert all(g.num_tokens > 0 for g in got.values())

    again, model = pool(1, tmp_path / "a")
    assert again.generate("evolve", model, items) == got
    assert again.cache.reports[-1].computed == 0 and again._loaded is None
