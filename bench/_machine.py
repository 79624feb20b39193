"""The machine a benchmark ran on, printed beside its figures: a speed figure means nothing
without the CPU, its cores, native bf16 or not, and the engine and number format it measured.

The facts are `python -m engines`'s own (engines.__main__.machine), so a benchmark and the
tests' machine report never disagree about what this machine is.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a script run as `python bench/x.py` from a plain checkout
    sys.path.insert(0, str(ROOT))

PREFIX = "machine: "


def machine_line(engine: str, dtype: str) -> str:
    """One line: `machine: cpu: ..., N cores; native cpu bf16: ...; ...; engine: E; dtype: D`."""
    from engines.__main__ import machine

    return PREFIX + "; ".join([*machine(), f"engine: {engine}", f"dtype: {dtype}"])


def print_machine(engine: str, dtype: str) -> None:
    print(machine_line(engine, dtype), flush=True)
