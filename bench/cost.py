"""What a study costs, on paper (reporting.cost): the table for a config's overrides, as markdown.

    python bench/cost.py experiment=table1_evol                  # Table 1: every job of its sweep
    python bench/cost.py experiment=paper model=qwen2.5_0.5b,qwen2.5_72b data=alpaca
    python bench/cost.py experiment=table1_evol --summary-only   # the study's rows alone
    python bench/cost.py experiment=table1_evol --compare outputs/.../summary.json

A comma list (`model=a,b`) is a sweep, as with `run.py -m`; the preset's own sweep
(`hydra.sweeper.params`) is expanded too. `--compare` sets the first job's estimate beside a
finished job's measured times (summary.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a script run as `python bench/cost.py` from a plain checkout
    sys.path.insert(0, str(ROOT))

from reporting.cost import compare_to_summary, markdown, study  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="config overrides, as for run.py")
    ap.add_argument("--summary-only", action="store_true", help="the study's rows, no job tables")
    ap.add_argument("--caps-only", action="store_true", help="no typical-length columns")
    ap.add_argument("--compare", type=Path, help="a job's summary.json: estimated vs measured")
    ap.add_argument("--gpus", type=int, default=None, help="the measured job's GPUs")
    args = ap.parse_args(argv)
    s = study(args.overrides)
    typical = None if args.caps_only else study(args.overrides, typical=True)
    print(markdown(s, typical, per_job=not args.summary_only), end="")
    if args.compare:
        rows = compare_to_summary(s.estimates[0], json.loads(args.compare.read_text()), args.gpus)
        print("\n### Estimated vs measured\n")
        print("| stage | what | estimated | measured | measured / estimated |")
        print("|---|---|---:|---:|---:|")
        for r in rows:
            cells = (r["stage"], r["what"], r["estimated"], r["measured"], r["ratio"])
            print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
