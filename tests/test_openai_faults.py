"""The openai engine against a loopback server that fails as real servers do: 429 with
Retry-After, 500, a slow answer, a malformed answer, a bad request, a refused key, a redirect.
A request that still fails is a counted failed generation, not a failed job, and is not cached."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.cache import StepCache
from core.errors import UserFacingError
from engines.base import Sampling
from engines.openai_engine import OpenAIEngine, RateLimiter, retry_after

GREEDY = Sampling(max_tokens=8)


class Server:
    """Answers by the prompt's first word: ok, 429once, 500, slow, malformed, bad, key, move,
    flaky (500 on its first request, then ok). Counts requests per prompt; records headers."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body.get("prompt") or body["messages"][-1]["content"]
                word = prompt.split()[0]
                n = outer.hits[prompt] = outer.hits.get(prompt, 0) + 1
                outer.auth.append(self.headers.get("Authorization"))
                if word == "429once" and n == 1:
                    return self._send(429, b"slow down", {"Retry-After": "3"})
                if word == "500" or (word == "flaky" and n == 1):
                    return self._send(500, b"boom")
                if word == "slow":
                    threading.Event().wait(1.0)
                if word == "malformed":
                    return self._send(200, b"{not json")
                if word == "bad":
                    return self._send(400, b"prompt too long")
                if word == "key":
                    return self._send(401, b"invalid key")
                if word == "move":
                    return self._send(302, b"", {"Location": outer.other + "/v1/completions"})
                out = {
                    "choices": [{"text": f"echo {prompt}", "finish_reason": "stop"}],
                    "usage": {"completion_tokens": 2, "prompt_tokens": 3},
                }
                self._send(200, json.dumps(out).encode())

            def _send(self, code, data, headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.other = ""
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def _engine(url, **kw):
    eng = OpenAIEngine(url, model="m", **{"retries": 2, "timeout_s": 0.5, **kw})
    eng.waits = []
    eng._sleep = eng.waits.append  # no real waiting; the waits are recorded
    return eng


def test_faults_become_failed_generations_and_the_rest_succeeds(server):
    eng = _engine(server.url)
    prompts = ["ok one", "429once two", "500 three", "slow four", "malformed five", "bad six"]
    gens = eng.generate(prompts, GREEDY)
    by = dict(zip(prompts, gens))
    assert by["ok one"].text == "echo ok one" and by["ok one"].error is None
    assert by["429once two"].text == "echo 429once two"  # retried after the server's 3 s
    assert 3.0 in eng.waits
    for p, why in [
        ("500 three", "HTTP 500"),
        ("slow four", "timed out"),
        ("malformed five", "malformed"),
    ]:
        g = by[p]
        assert (g.text, g.finish_reason) == ("", "error") and why in g.error, g.error
        assert server.hits[p] == 3  # one try and two retries
    assert by["bad six"].finish_reason == "error" and "HTTP 400" in by["bad six"].error
    assert server.hits["bad six"] == 1  # a bad request is not retried


def test_backoff_doubles_and_is_capped(server):
    eng = _engine(server.url, retries=5, backoff_s=1.0, max_backoff_s=4.0)
    eng.generate(["500 x"], GREEDY)
    assert len(eng.waits) == 5
    for k, w in enumerate(eng.waits):  # jittered within [0.5, 1] of min(4, 2**k)
        assert 0.5 * min(4, 2**k) <= w <= min(4, 2**k)
    assert retry_after({"Retry-After": "7"}) == 7.0 and retry_after({}) is None


def test_refused_key_and_redirect_stop_the_job_without_leaking_the_key(server, monkeypatch):
    other = Server()  # another host: it must never see the key
    server.other = other.url.rsplit("/v1", 1)[0]
    monkeypatch.setenv("TEST_KEY", "sk-secret")
    try:
        eng = _engine("http://user:pw@" + server.url.split("://")[1], api_key_env="TEST_KEY")
        with pytest.raises(UserFacingError, match="401.*key was refused") as e:
            eng.generate(["key a"], GREEDY)
        assert ":pw@" not in str(e.value) and "user" not in str(e.value)
        with pytest.raises(UserFacingError, match="redirected .* not followed"):
            eng.generate(["move b"], GREEDY)
        assert other.hits == {} and "sk-secret" not in json.dumps(other.auth)
    finally:
        other.httpd.shutdown()


def test_failed_requests_are_counted_not_cached_and_retried_on_rerun(server, tmp_path):
    """Through the engine pool: the job gets every item (failures as failed generations), the
    summary counts them, and a rerun asks only for what failed."""
    from omegaconf import OmegaConf

    from engines.pool import EnginePool

    cfg = OmegaConf.create(
        {"kind": "openai", "base_url": server.url, "retries": 0, "timeout_s": 2, "dtype": None}
    )
    model = OmegaConf.create({"name": "m", "hf_id": "m"})
    items = [(f"i{k}", p, GREEDY) for k, p in enumerate(["ok a", "flaky b", "ok c"])]
    pool = EnginePool(cfg, StepCache(tmp_path), "unused")
    first = pool.generate("respond", model, items)
    assert first["i1"].finish_reason == "error" and first["i0"].text == "echo ok a"
    assert pool.stats.failed == 1
    again = EnginePool(cfg, StepCache(tmp_path), "unused")
    second = again.generate("respond", model, items)
    assert second["i1"].text == "echo flaky b" and again.stats.prompts == 1  # only the failed one
    assert server.hits == {"ok a": 1, "flaky b": 2, "ok c": 1}


def test_rate_limits_pace_requests_and_tokens():
    t = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        t[0] += s

    lim = RateLimiter(requests_per_minute=60, clock=lambda: t[0], sleep=sleep)
    for _ in range(60):  # a minute's worth of requests is allowed at once
        assert lim.acquire(1) == 0
    assert lim.acquire(1) == pytest.approx(1.0)  # then one a second
    assert lim.acquire(1) == pytest.approx(1.0)
    tok = RateLimiter(tokens_per_minute=600, clock=lambda: t[0], sleep=sleep)
    assert tok.acquire(600) == 0
    assert tok.acquire(100) == pytest.approx(10.0)  # 600 a minute: 10 a second
    assert slept == pytest.approx([1.0, 1.0, 10.0])
    assert RateLimiter().acquire(10**9) == 0  # no limits, no waiting


def test_credentials_in_urls_are_redacted_wherever_shown(tmp_path):
    """A key in engine.base_url (user:password or a query parameter) never reaches W&B's config,
    logs or errors (core.redact)."""
    from core.redact import redact, redact_url

    url = "https://user:sk-1@api.example.org/v1?api_key=sk-2&region=eu"
    assert redact_url(url) == "https://***@api.example.org/v1?api_key=***&region=eu"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    cfg = {"engine": {"base_url": url, "n": 1}, "notes": ["see " + url]}
    flat = json.dumps(redact(cfg))
    assert "sk-1" not in flat and "sk-2" not in flat and '"n": 1' in flat and "region=eu" in flat


def test_the_wandb_config_is_redacted(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from reporting import tracking
    from tests.conftest import compose_cfg

    seen = {}

    class FakeRun:
        id, dir = "x", str(tmp_path)

    def init(**kw):
        seen.update(kw["config"])
        return FakeRun()

    import wandb

    monkeypatch.setattr(wandb, "init", init)
    cfg = compose_cfg(["engine=openai", "logger=wandb"])
    OmegaConf.update(cfg, "engine.base_url", "https://u:sk-3@api.example.org/v1")
    tracking.Tracker(cfg, tmp_path)
    assert seen["engine"]["base_url"] == "https://***@api.example.org/v1"


def test_a_job_goes_on_when_requests_fail(tmp_path):
    """evolve + respond through the openai engine against a server that always fails for one
    seed: the job ends ok, that lineage is an `engine_error` failure, the summary counts the
    failed requests, and nothing failed is cached."""
    from pipeline.runner import Run
    from tests.conftest import compose_cfg
    from tests.fakes import fake_openai_server

    httpd = fake_openai_server(fail_when="sky appears blue")
    try:
        cfg = compose_cfg(
            [
                "engine=openai",
                f"engine.base_url=http://127.0.0.1:{httpd.server_address[1]}/v1",
                "engine.retries=1",
                "engine.backoff_s=0.01",
                f"cache_dir={tmp_path / 'cache'}",
                "data.limit=4",
                "rounds=1",
                "stages=[evolve,respond]",
                "logger=none",
            ]
        )
        summary = Run(cfg, tmp_path / "run").run()
    finally:
        httpd.shutdown()
    assert summary["status"] == "ok"
    assert summary["engine/failed_requests"] == 1  # the one seed's evolution (2 tries)
    evolved = [
        json.loads(x) for x in (tmp_path / "run/round_1/evolved.jsonl").read_text().split("\n") if x
    ]
    failed = [r for r in evolved if r["meta"].get("failure") == "engine_error"]
    assert len(failed) == 1 and "503" in failed[0]["meta"]["engine_error"]
    assert summary["round_1/evolve/failures/engine_error"] == 1
    (done,) = (tmp_path / "cache" / "steps").glob("evolve*/*/done.jsonl")
    assert len(done.read_text().splitlines()) == 3  # the failed request is not cached
