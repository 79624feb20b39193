"""`dtype: auto` and `precision: auto`: the number format the hardware runs fast, decided once per
process from what the machine reports, and logged in one line.

- CUDA: bfloat16 where the GPU supports it, else float16 (training: bf16-mixed / 16-mixed).
- CPU with native bf16 (`avx512_bf16` or `amx_bf16`): bfloat16 (training: bf16-mixed).
- any other CPU: float32 (training: 32-true). Without those instructions a bf16 matmul is emulated,
  about 100x slower than fp32 (AVX2-only x86, most laptops, Apple silicon).

An explicit value in config always wins. `ONEDNN_MAX_CPU_ISA` below AVX512_CORE_BF16 (e.g. `AVX2`)
counts as "no native bf16", because oneDNN then emulates bf16 even where the CPU has it: that is how
the slow path is reproduced on a machine with AVX-512 BF16.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.errors import unknown_option

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
}
# What Lightning's Trainer(precision=...) accepts, besides `auto`, and its short forms.
PRECISIONS = (
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
)
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
# oneDNN ISA caps under which bf16 kernels still run natively (oneDNN's `dnnl_cpu_isa_t` names).
ONEDNN_BF16_ISAS = (
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "ALL",
    "DEFAULT",
)


@dataclass(frozen=True)
class Hardware:
    """What decides `auto`; tests build one by hand instead of reading the machine."""

    cuda: bool = False
    cuda_bf16: bool = False
    cuda_name: str | None = None
    cpu_model: str = ""
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    onednn_isa: str | None = None  # ONEDNN_MAX_CPU_ISA, if set

    @property
    def isa_capped(self) -> bool:
        return bool(self.onednn_isa) and self.onednn_isa.upper() not in ONEDNN_BF16_ISAS

    @property
    def cpu_bf16(self) -> bool:
        """bf16 matmuls run natively on this CPU (not emulated)."""
        return bool(set(BF16_CPU_FLAGS) & self.cpu_flags) and not self.isa_capped

    def why_no_cpu_bf16(self) -> str | None:
        """None where bf16 is native, else the reason in words (names the missing CPU flag)."""
        if self.cpu_bf16:
            return None
        if set(BF16_CPU_FLAGS) & self.cpu_flags:
            return f"ONEDNN_MAX_CPU_ISA={self.onednn_isa} disables the CPU's native bf16"
        return f"the CPU has no {' or '.join(BF16_CPU_FLAGS)} (bf16 would be emulated)"

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def describe(self) -> str:
        if self.cuda:
            return f"CUDA {self.cuda_name or 'GPU'} ({'bf16' if self.cuda_bf16 else 'no bf16'})"
        flags = [f for f in BF16_CPU_FLAGS if f in self.cpu_flags]
        return f"CPU {self.cpu_model or platform.machine()} ({', '.join(flags) or 'no bf16 flags'})"


def read_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (x86 `flags`, Arm `Features`); empty where unknown."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def _cuda_facts() -> tuple[bool, bool, str | None]:
    """(CUDA usable, native bf16 on its first visible GPU, its name).

    Read through NVML where it is installed (it comes with vLLM's CUDA build), so that this check
    does not create a CUDA context in the parent process before vLLM starts its workers. bf16 is
    native from compute capability 8.0 (Ampere) on; torch's `is_bf16_supported()` would also say
    yes for older GPUs, where it is emulated."""
    import torch

    if not torch.cuda.is_available():
        return False, False, None
    try:
        import pynvml

        pynvml.nvmlInit()
        first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        index = int(first) if first.isdigit() else 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        major, _ = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        return True, major >= 8, name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # no NVML (or a UUID in CUDA_VISIBLE_DEVICES): ask torch
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return True, bf16, torch.cuda.get_device_name(0)


def detect_hardware() -> Hardware:
    """The facts of this machine (uncached: `hardware()` is the once-per-process view)."""
    cuda, cuda_bf16, cuda_name = _cuda_facts()
    model, flags = read_cpu()
    return Hardware(
        cuda=cuda,
        cuda_bf16=cuda_bf16,
        cuda_name=cuda_name,
        cpu_model=model,
        cpu_flags=flags,
        onednn_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
    )


@lru_cache(maxsize=1)
def hardware() -> Hardware:
    hw = detect_hardware()
    log.info(
        "precision: dtype auto -> %s, train precision auto -> %s on %s%s",
        auto_dtype(hw),
        auto_precision(hw),
        hw.describe(),
        f" [{why}]" if not hw.cuda and (why := hw.why_no_cpu_bf16()) else "",
    )
    return hw


def auto_dtype(hw: Hardware) -> str:
    if hw.cuda:
        return "bfloat16" if hw.cuda_bf16 else "float16"
    return "bfloat16" if hw.cpu_bf16 else "float32"


def auto_precision(hw: Hardware) -> str:
    if hw.cuda:
        return "bf16-mixed" if hw.cuda_bf16 else "16-mixed"
    return "bf16-mixed" if hw.cpu_bf16 else "32-true"


def resolve_dtype(value: Any, hw: Hardware | None = None, what: str = "dtype") -> str:
    """`auto` (or null) -> the hardware's choice; anything else is checked and normalised."""
    name = "auto" if value is None else str(value).strip().lower()
    if name == "auto":
        return auto_dtype(hw or hardware())
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise unknown_option(what, value, ("auto", *DTYPES))
    return name


def resolve_precision(value: Any, hw: Hardware | None = None) -> str:
    """Lightning's `precision` for training: `auto` -> the hardware's choice."""
    name = "auto" if value is None else str(value).strip().lower()
    if name == "auto":
        return auto_precision(hw or hardware())
    name = PRECISION_ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise unknown_option("train.precision", value, ("auto", *PRECISIONS))
    return name


def hardware_summary(
    cfg: Any, hw: Hardware | None = None, dtypes: dict[str, tuple[Any, str]] | None = None
) -> dict[str, Any]:
    """`hardware/*` for summary.json and the W&B config: what runs where, in which format, for the
    stages the config runs. Computed before any work, so a bad dtype or precision fails first.
    `dtypes` adds `hardware/<name>` for other models of the job: {name: (value, config key)}."""
    hw = hw or hardware()
    engine_cfg, model_cfg = cfg.get("engine") or {}, cfg.get("model") or {}
    stages = set(cfg.get("stages") or ())
    out: dict[str, Any] = {
        "hardware/device": hw.describe(),
        "hardware/cpu_bf16": hw.cpu_bf16,
        "hardware/cuda_bf16": hw.cuda_bf16,
    }
    if engine_cfg.get("kind") != "openai":  # a server's format is the server's business
        out["hardware/engine_dtype"] = resolve_dtype(
            engine_cfg.get("dtype") or model_cfg.get("dtype"), hw, what="engine.dtype"
        )
    for name, (value, what) in (dtypes or {}).items():
        out[f"hardware/{name}"] = resolve_dtype(value, hw, what=what)
    train = cfg.get("train")
    if train and (not stages or "train" in stages):
        out["hardware/train_precision"] = resolve_precision(train.get("precision"), hw)
    if hw.onednn_isa:
        out["hardware/onednn_max_cpu_isa"] = hw.onednn_isa
    return out


def torch_dtype(value: Any):
    """The torch dtype for a config value (`auto` resolved)."""
    import torch

    return getattr(torch, resolve_dtype(value))
