"""Sandbox throughput: (function, case) pairs/s through the sandbox vs a bare in-process exec of
the same functions, side by side, for both ways the sandbox runs a batch: one process per program
(the default: no program can touch another's result) and one shared process per batch
(`share_process=True`). Target: >= 0.25 of bare.

    python bench/sandbox.py [--functions 200] [--cases 10]
"""

from __future__ import annotations

import argparse
import time

from core.sandbox import Sandbox

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
    args = ap.parse_args()
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
    for share in (False, True):
        with Sandbox(timeout=5, share_process=share) as sb:
            sb.run(funcs[0], "evaluate", cases[:1])  # start the worker
            t0 = time.perf_counter()
            results = sb.run_batch([(code, "evaluate", cases) for code in funcs])
            boxed = [[r["value"] for r in res.results] for res in results]
            t_box = time.perf_counter() - t0
            isolation = sb.isolation
        assert boxed == bare, "the sandbox computed something else"
        how = "a process per batch" if share else "a process per program"
        print(
            f"  sandbox, {how:22} {pairs / t_box:12,.0f} pairs/s   ratio {t_bare / t_box:.4f}"
            f"   (isolation {isolation}; target >= 0.25)"
        )


if __name__ == "__main__":
    main()
