"""Any OpenAI-compatible HTTP server: `vllm serve`, a llama.cpp server, a hosted API."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.errors import UserFacingError
from engines.base import Chat, Generation, Sampling, per_prompt


class OpenAIEngine:
    name = "openai"
    send_seeds = True  # per-request seeds (engines.vllm_server turns them off on CPU)

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 600.0,
        retries: int = 3,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = os.environ.get(api_key_env, "")
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.retries = retries

    def generate(
        self, prompts: list[Chat | str], params: Sampling | list[Sampling]
    ) -> list[Generation]:
        plist = per_prompt(params, len(prompts))
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(self._one, prompts, plist))

    def _one(self, prompt: Chat | str, p: Sampling) -> Generation:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": p.temperature,
            "top_p": 1.0 if p.greedy else p.top_p,
            "max_tokens": p.max_tokens,
        }
        if p.seed is not None and self.send_seeds:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if isinstance(prompt, str):
            body["prompt"] = prompt
            if p.top1_logprobs:
                body["logprobs"] = max(1, p.top_logprobs)
            data = self._post("/completions", body)
            choice = data["choices"][0]
            text = choice.get("text", "")
            top1, tops = None, None
            if p.top1_logprobs and choice.get("logprobs"):
                dicts = [d for d in (choice["logprobs"].get("top_logprobs") or []) if d]
                top1 = [max(d.values()) for d in dicts[: p.top1_logprobs]]
                if p.top_logprobs:
                    tops = [
                        sorted(d.values(), reverse=True)[: p.top_logprobs]
                        for d in dicts[: p.top1_logprobs]
                    ]
        else:
            body["messages"] = prompt
            if p.top1_logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = max(1, p.top_logprobs)
            data = self._post("/chat/completions", body)
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            top1, tops = None, None
            if p.top1_logprobs and choice.get("logprobs"):
                content = choice["logprobs"].get("content") or []
                top1 = [
                    max(t["logprob"] for t in (c.get("top_logprobs") or [c]))
                    for c in content[: p.top1_logprobs]
                ]
                if p.top_logprobs:
                    tops = [
                        sorted((t["logprob"] for t in (c.get("top_logprobs") or [c])), reverse=True)
                        for c in content[: p.top1_logprobs]
                    ]
        usage = data.get("usage") or {}
        return Generation(
            text=text,
            num_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=str(choice.get("finish_reason") or ""),
            top1_logprobs=top1,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            top_logprobs=tops,
        )

    def _post(self, route: str, body: dict) -> dict:
        req = urllib.request.Request(
            self.base_url + route,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}),
        )
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                if e.code < 500 and e.code != 429:
                    raise UserFacingError(
                        f"openai engine: {self.base_url}{route} answered {e.code}: {detail}"
                    ) from None
                last = e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = e
            time.sleep(min(2**attempt, 30))
        raise UserFacingError(
            f"openai engine: no answer from {self.base_url}{route} after {self.retries + 1} tries "
            f"({last}); start the server (e.g. `vllm serve <model>`) or set engine.base_url"
        )

    def close(self) -> None:
        pass
