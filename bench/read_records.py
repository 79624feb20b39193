"""Reading a JSON array of records must be linear in its size (Alpaca: 52K records; ShareGPT).

Times `core.records.read_records` on arrays of N and 8N records, beside the earlier way of naming
each item's line (counting newlines from the file's start for every item, quadratic), and prints
the side-by-side ratios: time(8N) / time(N) is about 8 for a linear reader.

    .venv/bin/python bench/read_records.py [--n 3000]   (--n 6500: Alpaca's 52K at 8N)

Measured on a 2-core Xeon, --n 6500: read_records 0.03 s / 0.25 s (8N/N 8.5); the quadratic
numbering 4.1 s / 302 s (8N/N 74); at 52K records, 1223x.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.records import read_records  # noqa: E402


def quadratic(path: Path) -> int:
    """The earlier line numbering: text.count from 0 for every item."""
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    for _ in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        _, end = decoder.raw_decode(text, pos)
        text.count("\n", 0, pos)
        pos = end
    return len(data)


def timed(fn, path: Path) -> float:
    t0 = time.perf_counter()
    fn(path)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000, help="records in the small file (8x in the big)")
    args = ap.parse_args()
    rows = [
        {"instruction": f"Question {i}: " + "word " * 20, "input": "", "output": "answer " * 40}
        for i in range(8 * args.n)
    ]
    with tempfile.TemporaryDirectory() as d:
        small, big = Path(d) / "small.json", Path(d) / "big.json"
        small.write_text(json.dumps(rows[: args.n], indent=2))
        big.write_text(json.dumps(rows, indent=2))
        now = [timed(lambda p: sum(1 for _ in read_records(p)), p) for p in (small, big)]
        old = [timed(quadratic, p) for p in (small, big)]
    print(f"{'reader':<22}{'N=' + str(args.n):>12}{'8N':>12}{'8N / N':>10}")
    print(f"{'read_records (now)':<22}{now[0]:>11.2f}s{now[1]:>11.2f}s{now[1] / now[0]:>10.1f}")
    print(f"{'quadratic (before)':<22}{old[0]:>11.2f}s{old[1]:>11.2f}s{old[1] / old[0]:>10.1f}")
    print(f"at 8N, before / now: {old[1] / now[1]:.1f}x")


if __name__ == "__main__":
    main()
