"""vLLM's data-parallel server engine against a loopback stand-in for `vllm serve`: the prompts it
is sent (no BOS added to a plain prompt), prompt log-probabilities from the replicas, a server
that dies, hangs, lists another model or loses its port, and where its log goes. No vLLM runs:
the server process is a fake whose HTTP side is a thread on the port the engine chose."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import engines.pool as engine_pool
import engines.vllm_server as vllm_server
from core.cache import StepCache
from core.errors import ConfigError, UserFacingError
from engines.base import Generation, Sampling
from engines.openai_engine import OpenAIEngine
from engines.pool import EnginePool
from engines.vllm_server import SERVED_NAME, VLLMServerEngine, server_logs_in


class FakeServer:
    """`vllm serve` as seen over HTTP: lists `names` on /v1/models, answers /v1/completions
    (prompt log-probabilities when asked), records every body. `on_request(body)` may return
    "die" (the process exits mid-request, the connection drops) or "hang" (no answer)."""

    def __init__(self, port: int, names=(SERVED_NAME,), on_request=None):
        self.bodies: list[dict] = []
        self.names, self.on_request = list(names), on_request
        self.proc: FakeProc | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path != "/v1/models":
                    return self._send(404, {})
                data = [{"id": n, "object": "model", "max_model_len": 64} for n in outer.names]
                self._send(200, {"object": "list", "data": data})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                what = outer.on_request(body) if outer.on_request else None
                if what == "die":
                    outer.proc.returncode = 1
                    self.close_connection = True
                    return  # no answer: the client sees the connection drop
                if what == "hang":
                    time.sleep(2.0)
                    return
                choice: dict = {"index": 0, "text": "ok", "finish_reason": "stop"}
                if body.get("prompt_logprobs") is not None:
                    ids = body["prompt"]
                    # The actual token's log-probability is -(its position)/10; a rival token
                    # beside it, as vLLM returns the top ones with it.
                    choice["prompt_logprobs"] = [None] + [
                        {str(t): {"logprob": -k / 10, "rank": 1, "decoded_token": "x"}}
                        | {"99999": {"logprob": -50.0, "rank": 2, "decoded_token": "y"}}
                        for k, t in enumerate(ids[1:], start=1)
                    ]
                usage = {"completion_tokens": 1, "prompt_tokens": 3}
                self._send(200, {"choices": [choice], "usage": usage})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeProc:
    """The server process: alive until `returncode` is set."""

    def __init__(self, server: FakeServer | None, returncode: int | None = None):
        self.server, self.returncode = server, returncode
        self.pid = -1  # never signalled: os.killpg is replaced in these tests
        if server is not None:
            server.proc = self

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            self.returncode = -15
        return self.returncode


@pytest.fixture
def launches(monkeypatch):
    """Replaces the vLLM process: each start runs the next of `plans` (a callable of the port
    and the log path returning a FakeProc; by default a server serving SERVED_NAME)."""
    started: list = []
    plans: list = []
    servers: list[FakeServer] = []
    killed: list = []

    def launch(self, port):
        plan = plans.pop(0) if plans else None
        with self.log_path.open("ab") as f:
            f.write(f"starting on {port}\n".encode())
        if plan is None:
            servers.append(FakeServer(port))
            proc = FakeProc(servers[-1])
        else:
            proc = plan(port, self.log_path, servers)
        started.append((port, proc))
        return proc

    monkeypatch.setattr(vllm_server, "import_vllm", lambda: None)
    monkeypatch.setattr(vllm_server, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(vllm_server, "template_stop_ids", lambda *a, **k: [])
    monkeypatch.setattr(vllm_server, "cpu_kv_cache_bytes", lambda *a, **k: 2**30)
    monkeypatch.setattr(VLLMServerEngine, "_launch", launch)
    monkeypatch.setattr(VLLMServerEngine, "poll_s", 0.01)
    monkeypatch.setattr(os, "killpg", lambda pid, sig: killed.append((pid, sig)))
    box = type("Launches", (), {})()
    box.started, box.plans, box.servers, box.killed = started, plans, servers, killed
    yield box
    for s in servers:
        s.stop()


def _engine(tmp_path, **kw) -> VLLMServerEngine:
    kw.setdefault("log_dir", tmp_path / "run")
    engine = VLLMServerEngine("/models/m", replicas=2, dtype="float32", **kw)
    engine._sleep = lambda s: None  # backoff: not waited in tests
    return engine


# --- the prompts -----------------------------------------------------------------------------


def test_a_plain_prompt_is_sent_without_special_tokens(tmp_path, launches):
    """lm-eval's contexts already hold the BOS; vLLM's server adds one unless told not to."""
    engine = _engine(tmp_path)
    (g,) = engine.generate(["<s>Question: 2+2?"], Sampling(max_tokens=4))
    assert g.text == "ok"
    (body,) = launches.servers[0].bodies
    assert body["add_special_tokens"] is False and body["prompt"] == "<s>Question: 2+2?"


def test_a_hosted_api_is_not_sent_vllm_fields(tmp_path, launches):
    server = FakeServer(0)
    launches.servers.append(server)
    port = server.httpd.server_address[1]
    OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m").generate(["hi"], Sampling(max_tokens=4))
    assert "add_special_tokens" not in server.bodies[0]


def test_logprob_calls_are_keyed_by_the_path_texts_are_shared(tmp_path, monkeypatch):
    """Texts through the replicas are a cache hit for one engine; log-probabilities (the OpenAI
    format's, through the server) are not."""

    class Engine:
        name = "vllm"

        def generate(self, prompts, params):
            return [Generation("t", 1, "stop", top1_logprobs=[-0.5]) for _ in prompts]

        def close(self):
            pass

    monkeypatch.setattr(engine_pool, "build_engine", lambda *a: Engine())
    monkeypatch.setattr(engine_pool, "resolve_engine_kind", lambda k: k)
    model = OmegaConf.create({"name": "m", "path": "/ckpt/m", "role": "model"})
    plain = [("q", "Say hi.", Sampling(max_tokens=4))]
    scored = [("q", "Say hi.", Sampling(max_tokens=4, top1_logprobs=2))]

    def pool(replicas):
        cfg = OmegaConf.create(
            {"kind": "vllm", "replicas": replicas, "chunk_size": 8, "dtype": "float32"}
        )
        return EnginePool(cfg, StepCache(tmp_path / "cache"), str(tmp_path))

    pool(2).generate("evolve", model, plain)
    pool(2).generate("confidence", model, scored)
    one = pool(1)
    one.generate("evolve", model, plain)
    assert one.cache.reports[-1].computed == 0
    one.generate("confidence", model, scored)
    assert one.cache.reports[-1].computed == 1


# --- prompt log-probabilities ----------------------------------------------------------------


def test_prompt_logprobs_from_the_replicas(tmp_path, launches):
    """The offline engine's contract: per sequence, the log-probability of each token after the
    first; sequences of under two tokens score nothing and are not sent."""
    engine = _engine(tmp_path)
    got = engine.prompt_logprobs([[5, 6, 7], [9], []])
    assert got == [[-0.1, -0.2], [], []]
    (body,) = launches.servers[0].bodies
    assert body["prompt"] == [5, 6, 7] and body["max_tokens"] == 1
    assert body["prompt_logprobs"] == 0 and body["model"] == SERVED_NAME
    assert engine.max_model_len == 64  # from /v1/models: what IFD caps its sequences at


def test_the_ifd_engine_backend_takes_the_server_and_names_an_engine_that_cannot(tmp_path):
    from metrics.ifd import EngineIFDScorer

    assert callable(getattr(VLLMServerEngine, "prompt_logprobs", None))
    hosted = OpenAIEngine("http://127.0.0.1:9/v1", "gpt")
    with pytest.raises(ConfigError) as e:
        EngineIFDScorer("/unused", hosted)
    assert "OpenAIEngine" in str(e.value) and "127.0.0.1:9" in str(e.value)


# --- the server process ----------------------------------------------------------------------


def test_the_server_log_goes_to_the_given_folder(tmp_path, launches):
    engine = _engine(tmp_path, log_dir=tmp_path / "run" / "logs")
    assert engine.log_path == tmp_path / "run" / "logs" / "vllm-server.log"
    assert "starting on" in engine.log_path.read_text()
    with server_logs_in(tmp_path / "pool"):  # how the pool passes its run folder
        assert _engine(tmp_path, log_dir=None).log_path.parent == tmp_path / "pool"
    default = _engine(tmp_path, log_dir=None).log_path
    assert default.parent.parent == Path(tempfile.gettempdir())


def test_the_pool_passes_its_log_dir_to_the_engine_it_builds(tmp_path, monkeypatch):
    seen = []

    class Engine:
        name = "vllm"

        def close(self):
            pass

    def build(*a):
        seen.append(vllm_server.server_log_path())
        return Engine()

    monkeypatch.setattr(engine_pool, "build_engine", build)
    monkeypatch.setattr(engine_pool, "resolve_engine_kind", lambda k: k)
    cfg = OmegaConf.create({"kind": "vllm", "replicas": 2, "dtype": "float32"})
    pool = EnginePool(cfg, StepCache(tmp_path / "c"), str(tmp_path), log_dir=str(tmp_path / "r"))
    pool.engine_for(OmegaConf.create({"name": "m", "path": "/ckpt/m"}))
    assert seen == [tmp_path / "r" / "vllm-server.log"]


def test_readiness_rejects_a_server_serving_another_model(tmp_path, launches):
    launches.plans.append(
        lambda port, log, servers: FakeProc(
            servers.append(FakeServer(port, ["llama"])) or servers[-1]
        )
    )
    with pytest.raises(UserFacingError) as e:
        _engine(tmp_path, start_timeout_s=0.3)
    assert "llama" in str(e.value) and "did not start" in str(e.value)


def test_a_taken_port_is_retried_on_another(tmp_path, launches):
    def taken(port, log, servers):
        with log.open("ab") as f:
            f.write(b"OSError: [Errno 98] Address already in use\n")
        return FakeProc(None, returncode=1)

    launches.plans.append(taken)
    engine = _engine(tmp_path)
    assert len(launches.started) == 2
    assert engine.base_url.endswith(f":{launches.started[1][0]}/v1")
    assert engine.generate(["hi"], Sampling(max_tokens=2))[0].text == "ok"


def test_a_server_that_dies_during_generation_is_restarted_once(tmp_path, launches):
    deaths = iter(["die"])
    launches.plans.append(
        lambda port, log, servers: FakeProc(
            servers.append(FakeServer(port, on_request=lambda b: next(deaths, None))) or servers[-1]
        )
    )
    engine = _engine(tmp_path)
    (g,) = engine.generate(["hi"], Sampling(max_tokens=2))
    assert g.text == "ok" and engine.restarts == 1 and len(launches.started) == 2


def test_a_server_that_dies_again_stops_the_job_at_once_naming_its_log(tmp_path, launches):
    def dying(port, log, servers):
        servers.append(FakeServer(port, on_request=lambda b: "die"))
        return FakeProc(servers[-1])

    launches.plans += [dying, dying]
    engine = _engine(tmp_path)

    def no_backoff(s):
        raise AssertionError("a dead server is not retried")

    engine._sleep = no_backoff
    t0 = time.monotonic()
    with pytest.raises(UserFacingError) as e:
        engine.generate(["a", "b", "c"], Sampling(max_tokens=2))
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "exited with code 1 during generation" in msg and str(engine.log_path) in msg
    assert "start the server" not in msg and engine.restarts == 1


def test_a_hung_replica_fails_its_request_within_the_timeout(tmp_path, launches):
    launches.plans.append(
        lambda port, log, servers: FakeProc(
            servers.append(FakeServer(port, on_request=lambda b: "hang")) or servers[-1]
        )
    )
    engine = _engine(tmp_path, request_timeout_s=0.2, retries=1)
    t0 = time.monotonic()
    (g,) = engine.generate(["hi"], Sampling(max_tokens=2))
    assert g.finish_reason == "error" and time.monotonic() - t0 < 2
    default = VLLMServerEngine.__init__.__defaults__  # bounded by default, not 3600 s x 7
    assert vllm_server.REQUEST_TIMEOUT_S * (vllm_server.REQUEST_RETRIES + 1) <= 3600
    assert default[-2:] == (vllm_server.REQUEST_TIMEOUT_S, vllm_server.REQUEST_RETRIES)
