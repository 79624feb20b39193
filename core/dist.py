"""Which process of a multi-process launch this is, before any process group exists.

Multi-GPU training starts one process per device: Lightning's own launcher re-runs `run.py` with
LOCAL_RANK / NODE_RANK set, torchrun sets RANK, and SLURM (one task per GPU, as Lightning requires
there) sets SLURM_PROCID in each task. Only rank 0 (the leader) generates, evaluates and reports;
the others join training (pipeline.ranks)."""

from __future__ import annotations

import os


def launch_rank() -> int:
    """This process's global rank: torch.distributed's once a process group exists, else what
    the launcher set; 0 in a plain single-process run."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    local, node = int(env.get("LOCAL_RANK", "0") or 0), int(env.get("NODE_RANK", "0") or 0)
    # Lightning's children: a node's processes are numbered from 0 on each node; any non-zero
    # part is a non-leader, which is all callers need.
    return local + node * 1_000_000 if (local or node) else 0


def is_leader() -> bool:
    return launch_rank() == 0


def launch_token() -> str:
    """What tells this launch from an earlier one in the same run directory: the SLURM job (and
    its requeue count) or the torchrun run; empty for Lightning's own children, which start
    after the leader has published what they need."""
    env = os.environ
    if "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_RESTART_COUNT', '0')}"
    if "TORCHELASTIC_RUN_ID" in env:
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return ""
