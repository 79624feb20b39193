"""A deterministic stand-in engine for fast tests of the pipeline's bookkeeping (the same paths
are also tested against the real bundled model in the slow tests)."""

from __future__ import annotations

import engines.pool as engine_pool
from engines.base import Chat, Generation, Sampling, per_prompt


def no_weights(monkeypatch):
    """Fake engines load no weights: the start-up check that every role's weights can be had
    (pipeline.weights) is given a stand-in folder per model, so hub models need no download."""
    import pipeline.weights as weights

    monkeypatch.setattr(
        weights, "resolve_model_path", lambda model, models_dir: f"<weights of {model.name}>"
    )


def use_engine(monkeypatch, engine):
    """Every engine the pipeline loads during the test is `engine`; `engine.loads` counts how
    often the pipeline loaded one."""
    engine.loads = 0
    no_weights(monkeypatch)

    def build(*args, **kwargs):
        engine.loads += 1
        return engine

    monkeypatch.setattr(engine_pool, "build_engine", build)
    return engine


class FakeIFDScorer:
    """Stands in for metrics.ifd.IFDScorer (a transformers model): constant losses, counted
    loads."""

    loads = 0

    def __init__(self, *args, **kwargs):
        FakeIFDScorer.loads += 1

    def score(self, records):
        return [
            {"loss_a_given_q": 1.0, "loss_q": 2.0, "loss_a": 2.0, "ifd": 0.5, "ic_ifd": 0.25}
            | {"q_tokens": 3, "a_tokens": 3, "truncated": False, "boundary_fallback": False}
            for _ in records
        ]

    def close(self) -> None:
        pass


class FakeEngine:
    """Rewrites by appending a phrase; answers with a fixed sentence.

    `fail_when` maps a substring of the prompt to a reply, to provoke parse failures.
    """

    name = "fake"

    def __init__(self, fail_when: dict[str, str] | None = None):
        self.fail_when = fail_when or {}
        self.prompts_seen: list[str] = []
        self.params_seen: list[Sampling] = []  # one per prompt, in the same order

    def generate(self, prompts: list[Chat | str], params: Sampling | list[Sampling]):
        plist = per_prompt(params, len(prompts))
        out = []
        for prompt, p in zip(prompts, plist):
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            self.prompts_seen.append(text)
            self.params_seen.append(p)
            reply = self._reply(text)
            k = min(p.top1_logprobs, 3)
            out.append(Generation(reply, len(reply.split()), "stop", [-0.1] * k or None))
        return out

    def _reply(self, text: str) -> str:
        for needle, reply in self.fail_when.items():
            if needle in text:
                return reply
        if "Given prompt:" in text:
            given = text.split("Given prompt:\n", 1)[1].split("\n\n", 1)[0]
            return f"#Rewritten Prompt#: {given} Explain each step in detail."
        return "A complete and accurate answer."

    def close(self) -> None:
        pass


def fake_openai_server(fail_when: str | None = None, delay_s: float = 0.0, on_request=None):
    """A loopback OpenAI-compatible server answering as FakeEngine does, started in a thread:
    requests whose prompt contains `fail_when` get a 503; each answer waits `delay_s` and calls
    `on_request()`. Returns the server (`.server_address`, `.shutdown()`)."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    fake = FakeEngine()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body.get("messages") or body["prompt"]
            time.sleep(delay_s)
            if on_request:
                on_request()
            if fail_when and fail_when in json.dumps(prompt):
                data, code = b"overloaded", 503
            else:
                g = fake.generate([prompt], Sampling(max_tokens=body["max_tokens"]))[0]
                choice = {"message": {"role": "assistant", "content": g.text}, "text": g.text}
                data = json.dumps({"choices": [choice | {"finish_reason": "stop"}]}).encode()
                code = 200
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd
