"""Reading a JSON array of records must be linear in its size (Alpaca: 52K records; ShareGPT).

Times `core.records.read_records` on arrays of N and 8N records, beside the earlier way of naming
each item's line (counting newlines from the file's start for every item, quadratic), and prints
the side-by-side ratios: time(8N) / time(N) is about 8 for a linear reader.

    .venv/bin/python bench/read_records.py [--n 3000]   (--n 6500: Alpaca's 52K at 8N)
    .venv/bin/python bench/read_records.py --plain [--alpaca 52002] [--sharegpt-mb 200]

`--plain`: a generated Alpaca JSON (52K records) and a ShareGPT JSONL of about 200 MB, each read by
`read_records` (which also checks every record and names file:line on errors) beside a plain
`json.load` / line loop of the same file; target: read_records at >= 0.5 of the plain speed.

    .venv/bin/python bench/read_records.py --smoke   (both of the above, at the smallest sizes)

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

from _machine import print_machine  # noqa: E402

from core.records import read_records  # noqa: E402

# --smoke: both comparisons on files of a few hundred records; the figures are not meaningful.
SMOKE = {"n": 50, "alpaca": 200, "sharegpt_mb": 1}


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


def plain_json(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return len(json.load(f))


def plain_jsonl(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip() and json.loads(line) is not None)


def side_by_side(alpaca: int, sharegpt_mb: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        a = Path(d) / "alpaca.json"
        rows = [
            {"instruction": f"Question {i}: " + "word " * 20, "input": "", "output": "answer " * 40}
            for i in range(alpaca)
        ]
        a.write_text(json.dumps(rows, indent=2))
        del rows
        g = Path(d) / "sharegpt.jsonl"
        turn = "a sentence of a conversation " * 30
        with g.open("w", encoding="utf-8") as f:
            i = 0
            while f.tell() < sharegpt_mb * 2**20:
                conv = [{"from": "human", "value": f"{i} {turn}"}, {"from": "gpt", "value": turn}]
                f.write(json.dumps({"id": str(i), "conversations": conv}) + "\n")
                i += 1
        print(f"{'file':<34}{'plain':>10}{'read_records':>14}{'plain / ours':>14}")
        for path, plain in ((a, plain_json), (g, plain_jsonl)):
            t_plain = timed(plain, path)
            t_ours = timed(lambda p: sum(1 for _ in read_records(p)), path)
            size = path.stat().st_size / 2**20
            name = f"{path.name} ({size:.0f} MB)"
            print(f"{name:<34}{t_plain:>9.2f}s{t_ours:>13.2f}s{t_plain / t_ours:>14.2f}")
        print("target: plain / ours >= 0.5")


def linear(n: int) -> None:
    rows = [
        {"instruction": f"Question {i}: " + "word " * 20, "input": "", "output": "answer " * 40}
        for i in range(8 * n)
    ]
    with tempfile.TemporaryDirectory() as d:
        small, big = Path(d) / "small.json", Path(d) / "big.json"
        small.write_text(json.dumps(rows[:n], indent=2))
        big.write_text(json.dumps(rows, indent=2))
        now = [timed(lambda p: sum(1 for _ in read_records(p)), p) for p in (small, big)]
        old = [timed(quadratic, p) for p in (small, big)]
    print(f"{'reader':<22}{'N=' + str(n):>12}{'8N':>12}{'8N / N':>10}")
    print(f"{'read_records (now)':<22}{now[0]:>11.2f}s{now[1]:>11.2f}s{now[1] / now[0]:>10.1f}")
    print(f"{'quadratic (before)':<22}{old[0]:>11.2f}s{old[1]:>11.2f}s{old[1] / old[0]:>10.1f}")
    print(f"at 8N, before / now: {old[1] / now[1]:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="records in the small file (8x in the big)")
    ap.add_argument("--plain", action="store_true", help="beside json.load / a line loop")
    ap.add_argument("--alpaca", type=int, default=52002)
    ap.add_argument("--sharegpt-mb", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="both comparisons, smallest sizes")
    args = ap.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    print_machine("none (reading files, no model)", "n/a")
    if args.smoke:
        linear(args.n)
        side_by_side(args.alpaca, args.sharegpt_mb)
    elif args.plain:
        side_by_side(args.alpaca, args.sharegpt_mb)
    else:
        linear(args.n)


if __name__ == "__main__":
    main()
