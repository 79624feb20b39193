"""Any OpenAI-compatible HTTP server: `vllm serve`, a llama.cpp server, a hosted API.

Under faults the engine behaves as a long batch job must: a 429 or 5xx is retried with exponential
backoff, honouring the server's `Retry-After`; requests and tokens per minute can be capped
(`engine.requests_per_minute`, `engine.tokens_per_minute`); a request that still fails (retries
spent, a slow or malformed answer, a 4xx about that request alone) becomes a failed generation —
empty text, `finish_reason="error"`, the reason in `error` — which the pool counts
(`engine/failed_requests`) and does not cache, so a rerun asks again. Only what would fail every
request (no server, a refused key, an unknown model, a redirect) stops the job. Redirects are not
followed (urllib would forward the Authorization header to another host), and URLs are redacted
wherever they are shown."""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.errors import UserFacingError
from core.redact import redact_url
from engines.base import Chat, Generation, Sampling, per_prompt

# Statuses that would fail every request of the run: stop with the server's explanation.
FATAL = {401: "the key was refused", 403: "access denied", 404: "no such route or model"}
RETRY = {408, 409, 425, 429}  # and every 5xx
NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


class RequestFailed(Exception):
    """One request failed for good: it becomes a failed generation, not a failed job."""


class RateLimiter:
    """Requests and tokens per minute, shared by the engine's threads: two token buckets; a
    request reserves its share and waits until both buckets cover it."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        clock=time.monotonic,
        sleep=time.sleep,
    ):
        self.rates = [r / 60.0 if r else None for r in (requests_per_minute, tokens_per_minute)]
        self.levels = [r * 60.0 if r else 0.0 for r in self.rates]  # start full: a minute's worth
        self.clock, self.sleep = clock, sleep
        self.t = clock()
        self.lock = threading.Lock()

    def acquire(self, tokens: int) -> float:
        """Wait until one request of `tokens` tokens is allowed; the seconds waited."""
        with self.lock:
            now = self.clock()
            wait = 0.0
            for k, (rate, need) in enumerate(zip(self.rates, (1, tokens))):
                if rate is None:
                    continue
                self.levels[k] = min(rate * 60.0, self.levels[k] + (now - self.t) * rate) - need
                wait = max(wait, -self.levels[k] / rate)
            self.t = now
        if wait > 0:
            self.sleep(wait)
        return wait


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None  # urllib then raises the 3xx as an HTTPError


def retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OpenAIEngine:
    name = "openai"
    send_seeds = True  # per-request seeds (engines.vllm_server turns them off on CPU)
    # Token ids to stop on beside the server's own EOS: vLLM's extension of the API, sent only
    # to a server known to take it (engines.vllm_server); a hosted API would refuse the field.
    stop_token_ids: tuple[int, ...] = ()
    # vLLM's other extensions, sent likewise only to vLLM's own server (engines.vllm_server).
    vllm_fields = False
    unreachable_hint = "start the server (e.g. `vllm serve <model>`) or set engine.base_url"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 600.0,
        retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
    ):
        self.base_url, basic = _split_credentials(base_url.rstrip("/"))
        self.shown_url = redact_url(self.base_url)
        self.model = model
        self.api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        # user:password in base_url becomes Basic auth (urllib does not read it from the URL);
        # a key from api_key_env wins.
        self.auth = f"Bearer {self.api_key}" if self.api_key else basic
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._sleep = time.sleep

    @property
    def description(self) -> str:
        """The engine as errors name it."""
        return f"the {self.name} engine at {self.shown_url}"

    def _check_server(self) -> None:
        """Before each try: raise if the server is known to be gone (a server this engine
        started, engines.vllm_server); a remote one can only be tried."""

    def generate(
        self, prompts: list[Chat | str], params: Sampling | list[Sampling]
    ) -> list[Generation]:
        plist = per_prompt(params, len(prompts))
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(self._one_or_failed, prompts, plist))

    def _one_or_failed(self, prompt: Chat | str, p: Sampling) -> Generation:
        try:
            return self._one(prompt, p)
        except RequestFailed as e:
            return Generation(text="", num_tokens=0, finish_reason="error", error=str(e))

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
        if self.stop_token_ids:
            body["stop_token_ids"] = list(self.stop_token_ids)
        if isinstance(prompt, str):
            body["prompt"] = prompt
            if self.vllm_fields:
                # A plain string is the whole prompt (lm-eval's contexts already hold the BOS),
                # as the offline engine sends it; vLLM's server would add special tokens.
                body["add_special_tokens"] = False
            if p.top1_logprobs:
                body["logprobs"] = max(1, p.top_logprobs)
            data = self._post("/completions", body, _tokens(prompt, p))
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
            data = self._post("/chat/completions", body, _tokens(prompt, p))
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

    def _post(self, route: str, body: dict, tokens: int = 0) -> dict:
        url = self.base_url + route
        shown = self.shown_url + route
        req = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": self.auth} if self.auth else {}),
        )
        last, refused = "", 0
        for attempt in range(self.retries + 1):
            self._check_server()
            self.limiter.acquire(tokens)
            wait = None
            try:
                with self._opener.open(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                try:
                    data = json.loads(raw)
                    if not isinstance(data, dict) or not data.get("choices"):
                        raise ValueError("no choices")
                    return data
                except ValueError as e:
                    last = f"a malformed answer ({e}): {raw[:120]!r}"
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                if 300 <= e.code < 400:
                    where = redact_url(e.headers.get("Location") or "?")
                    raise UserFacingError(
                        f"openai engine: {shown} redirected ({e.code}) to {where}; redirects are "
                        "not followed (they would carry the key elsewhere): set engine.base_url "
                        "to the final address"
                    ) from None
                if e.code in FATAL:
                    raise UserFacingError(
                        f"openai engine: {shown} answered {e.code} ({FATAL[e.code]}): {detail}"
                    ) from None
                if e.code not in RETRY and e.code < 500:  # about this request alone
                    raise RequestFailed(f"HTTP {e.code} from {shown}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
                wait = retry_after(e.headers)
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                http.client.HTTPException,
            ) as e:
                reason = getattr(e, "reason", e)
                refused += isinstance(reason, ConnectionRefusedError)
                last = f"{type(reason).__name__}: {reason}"
            if attempt < self.retries:
                if wait is None:  # exponential, jittered so parallel requests spread out
                    backoff = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                    wait = backoff * (0.5 + random.random() / 2)
                else:  # the server's own Retry-After, within reason
                    wait = min(wait, 10 * self.max_backoff_s)
                self._check_server()  # a dead server: no point in waiting
                self._sleep(wait)
        self._check_server()
        if refused == self.retries + 1:
            raise UserFacingError(
                f"openai engine: no answer from {shown} after {self.retries + 1} tries ({last}); "
                f"{self.unreachable_hint}"
            )
        raise RequestFailed(f"{last} (after {self.retries + 1} tries)")

    def close(self) -> None:
        pass


def _split_credentials(url: str) -> tuple[str, str | None]:
    """(the URL without user:password, a Basic Authorization value for them or None)."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    token = base64.b64encode(unquote(userinfo).encode()).decode()
    return urlunsplit(
        (parts.scheme, host, parts.path, parts.query, parts.fragment)
    ), f"Basic {token}"


def _tokens(prompt: Chat | str, p: Sampling) -> int:
    """What a tokens-per-minute limit counts a request as: its prompt (about 4 characters a
    token) and the most it may generate."""
    text = prompt if isinstance(prompt, str) else " ".join(m.get("content", "") for m in prompt)
    return len(text) // 4 + int(p.max_tokens)
