"""Sandbox throughput: (function, case) pairs/s through the sandbox vs a bare in-process exec of
the same functions, side by side: one process per program (the default: no program can touch
another's result) with one worker and with a pool of workers (`SandboxPool`, one per core), and
one shared process per batch (`share_process=True`). Target: >= 0.25 of bare.

It also measures the floor of the default mode: a fork, exit and wait of the worker's own
interpreter (the standard-library modules it preloads imported), which every program pays,
and prints the ratio one worker could reach if nothing else cost anything.

    python bench/sandbox.py [--functions 200] [--cases 10] [--workers 0]
    python bench/sandbox.py --smoke     # every mode at the smallest sizes (seconds)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import print_machine  # noqa: E402

from sandbox import SandboxPool, default_workers  # noqa: E402
from sandbox.worker import PRELOAD  # noqa: E402

# --smoke: a few programs, two workers (the pool's sharing runs); the figures are not meaningful.
SMOKE = {"functions": 6, "cases": 2, "workers": 2}

FLOOR = """
import os, time
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
t = time.perf_counter()
for _ in range(300):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print((time.perf_counter() - t) / 300)
"""


# An interpreter like the worker's before it serves: its own imports and the preloaded modules.
PRELOAD_CODE = f"""
import ctypes, gc, importlib, json, os, platform, pwd, resource, select, signal, socket, struct
import sys, time
for name in {PRELOAD!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
"""


def fork_floor() -> float:
    """Seconds per fork + exit + wait of an interpreter like the worker's."""
    preload = PRELOAD_CODE
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", preload + FLOOR, "{}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[-1])


FUNCS = [
    "def evaluate(response):\n    return response.islower()\n",
    "def evaluate(response):\n    return len(response.split()) <= 20\n",
    "import re\ndef evaluate(response):\n"
    "    return len(re.findall(r'^\\* ', response, re.M)) == 3\n",
    "import json\ndef evaluate(response):\n    try:\n        json.loads(response)\n"
    "        return True\n    except ValueError:\n        return False\n",
    "def evaluate(response):\n    return response.strip().endswith('?')\n",
]
CASES = ["hello world", "Hello World", "* a\n* b\n* c", '{"a": 1}', "is it?", "word " * 30]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", type=int, default=200)
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--workers", type=int, default=0, help="pool size; 0: one per core")
    ap.add_argument("--smoke", action="store_true", help="smallest sizes: checks the bench runs")
    args = ap.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    print_machine("none (programs in the sandbox, no model)", "n/a")
    funcs = [FUNCS[i % len(FUNCS)] + f"\n# variant {i}\n" for i in range(args.functions)]
    cases = [[CASES[k % len(CASES)]] for k in range(args.cases)]
    pairs = args.functions * args.cases

    t0 = time.perf_counter()
    bare = []
    for code in funcs:
        ns: dict = {}
        exec(compile(code, "<bare>", "exec"), ns)
        bare.append([ns["evaluate"](*c) for c in cases])
    t_bare = time.perf_counter() - t0

    print(f"\n{args.functions} functions x {args.cases} cases = {pairs} pairs")
    print(f"  bare in-process exec             {pairs / t_bare:12,.0f} pairs/s")
    workers = args.workers or default_workers(1024)
    modes = [
        ("a process per program, 1 worker", dict(workers=1)),
        (f"a process per program, {workers} workers", dict(workers=workers)),
        ("a process per batch, 1 worker", dict(workers=1, share_process=True)),
    ]
    for how, kw in modes:
        with SandboxPool(timeout=5, **kw) as sb:
            sb.run_batch([(funcs[0], "evaluate", cases[:1])] * sb.workers)  # start the workers
            t0 = time.perf_counter()
            results = sb.run_batch([(code, "evaluate", cases) for code in funcs])
            boxed = [[r["value"] for r in res.results] for res in results]
            t_box = time.perf_counter() - t0
            isolation = sb.isolation
        assert boxed == bare, "the sandbox computed something else"
        print(
            f"  sandbox, {how:34} {pairs / t_box:12,.0f} pairs/s   ratio {t_bare / t_box:.4f}"
            f"   (isolation {isolation}; target >= 0.25)"
        )
    floor = fork_floor()
    per_function = t_bare / args.functions
    print(
        f"\n  floor of a process per program: fork + exit + wait of the worker's interpreter "
        f"{floor * 1e6:,.0f} us\n  vs a bare function with its {args.cases} cases "
        f"{per_function * 1e6:,.0f} us: one worker cannot pass ratio "
        f"{per_function / (per_function + floor):.3f}; a pool of {workers} cannot pass "
        f"{workers * per_function / (per_function + floor):.3f}"
    )


if __name__ == "__main__":
    main()
