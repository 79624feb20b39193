"""GPU memory between stages: what one model leaves behind is freed before the next loads.

vLLM sizes its KV cache from `gpu_memory_utilization` x the device's total memory and refuses to
start when less than that is free, so a scorer's weights still held by Python's garbage or by
PyTorch's caching allocator stop the next engine. Freeing means dropping the references (the
caller's part), collecting the cycles that still hold tensors, and handing the allocator's cached
blocks (and CUDA IPC handles of worker processes) back to the driver."""

from __future__ import annotations

import gc


def _cuda():
    """torch.cuda where a GPU is visible, else None (torch is not imported for that alone)."""
    try:
        import torch
    except ImportError:
        return None
    try:
        return torch.cuda if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA install: nothing to free
        return None


def free_gpu_memory() -> None:
    """Collect garbage and return cached GPU memory to the driver; on CPU, only the collection."""
    gc.collect()
    cuda = _cuda()
    if cuda is None:
        return
    cuda.empty_cache()
    cuda.ipc_collect()


def gpu_memory_report() -> dict[str, dict[str, int]]:
    """{"cuda:<i>": {"free": bytes, "total": bytes}} for each visible device; {} without CUDA."""
    cuda = _cuda()
    if cuda is None:
        return {}
    out = {}
    for i in range(cuda.device_count()):
        free, total = cuda.mem_get_info(i)
        out[f"cuda:{i}"] = {"free": int(free), "total": int(total)}
    return out
