"""The default demo (`make demo`), timed per stage from an empty cache: once with the resolved
defaults (`dtype: auto`), once with bf16 forced, side by side; then a rerun of the defaults on the
warm cache.

    python bench/demo_time.py                    # this CPU as it is
    python bench/demo_time.py --isa AVX2         # as on a CPU without native bf16 (oneDNN capped)
    python bench/demo_time.py --modes auto       # skip the forced-bf16 run
    python bench/demo_time.py --smoke            # every mode and the warm rerun, tiny (a minute)

Targets on a 2-core CPU: the default demo <= 8 minutes from an empty cache (model conversion
included) with or without native bf16, and <= 60 s on a warm cache. Without native bf16 a forced
bf16 demo takes hours: `--timeout` ends such a run and the table shows "> timeout".
Each run is a real `python run.py` in a subprocess with its own temporary cache folder.
`--smoke` shrinks every run (two seeds, one round, a few tokens, the hf engine, evolve and report
only) and reuses the converted model, so the script's own paths run in about a minute; its
figures are not the demo's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("evolve", "respond", "score", "filter", "train", "evaluate", "report")
ROWS = (*STAGES, "model_load", "total")
FORCE_BF16 = ["engine.dtype=bfloat16", "metrics.ifd.dtype=bfloat16", "train.precision=bf16-mixed"]
TARGET_COLD_S, TARGET_WARM_S = 8 * 60, 60
SMOKE_OVERRIDES = [
    "data.limit=2",
    "rounds=1",
    "generation.evolve.max_tokens=8",
    "generation.greedy.max_tokens=8",
    "engine=hf",  # starts in seconds; the script's paths do not depend on the engine
    "stages=[evolve,report]",
    "logger=none",
]
SMOKE_TIMEOUT_S = 300


def run_demo(cache: Path, run_dir: Path, overrides: list[str], env: dict, timeout: float) -> dict:
    """One `python run.py` of the demo; its summary.json with the wall-clock seconds added."""
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        f"cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    t0 = time.perf_counter()
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the job shuts its engine processes down
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return {"status": "timeout", "wall": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    summary_path = run_dir / "summary.json"
    if proc.returncode != 0 or not summary_path.is_file():
        tail = log.read_text()[-2000:]
        return {"status": f"failed (exit {proc.returncode})", "wall": wall, "log": tail}
    summary = json.loads(summary_path.read_text())
    return {**summary, "wall": wall}


def fmt(result: dict, row: str) -> str:
    if result.get("status") == "timeout":
        return f"> {result['wall']:.0f}" if row == "total" else "-"
    if result.get("status") != "ok":
        return result.get("status", "?") if row == "total" else "-"
    v = result.get(f"time/{row}")
    return "-" if v is None else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="auto,bf16", help="comma list of auto, bf16")
    ap.add_argument("--isa", default=None, help="ONEDNN_MAX_CPU_ISA for the runs, e.g. AVX2")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument(
        "--bf16-timeout", type=float, default=None, help="seconds for the forced-bf16 run"
    )
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-cache rerun")
    ap.add_argument("--keep", help="a folder to keep the runs in (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="tiny runs: checks the bench runs")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()

    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    if args.isa:
        env["ONEDNN_MAX_CPU_ISA"] = args.isa
    sys.path.insert(0, str(ROOT))
    os.environ.update({k: v for k, v in env.items() if k == "ONEDNN_MAX_CPU_ISA"})
    from _machine import print_machine

    from core.config import compose_config
    from engines.precision import resolve_dtype, resolve_precision

    if args.smoke:
        # The converted model of the shared cache: converting it is the cold demo's cost, not
        # what a smoke run checks.
        models_dir = compose_config().models_dir
        args.overrides = [*SMOKE_OVERRIDES, f"models_dir={models_dir}", *args.overrides]
        args.timeout = min(args.timeout, SMOKE_TIMEOUT_S)
    cfg = compose_config(args.overrides)
    kind = str(cfg.engine.kind)
    engine = f"{kind} (vllm where it imports, else hf)" if kind == "auto" else kind
    print_machine(f"the demo's, {engine}", "per mode (formats below)")
    print(f"auto resolves to: dtype {resolve_dtype('auto')}, training {resolve_precision('auto')}")

    results: dict[str, dict] = {}
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise SystemExit(f"--keep {keep}: the folder is not empty (the runs need empty caches)")
    with tempfile.TemporaryDirectory(prefix="demo-bench-") as scratch:
        tmp = keep or scratch
        for mode in args.modes.split(","):
            overrides = [*args.overrides, *(FORCE_BF16 if mode == "bf16" else [])]
            cache = Path(tmp) / mode / "cache"  # empty: the model is converted again
            print(f"running the demo ({mode}) from an empty cache ...", flush=True)
            limit = args.bf16_timeout if mode == "bf16" and args.bf16_timeout else args.timeout
            results[mode] = run_demo(cache, Path(tmp) / mode / "run", overrides, env, limit)
            if mode == "auto" and not args.no_warm:
                print("rerunning it on the warm cache ...", flush=True)
                results["auto, warm"] = run_demo(
                    cache, Path(tmp) / mode / "rerun", overrides, env, args.timeout
                )
        for name, res in results.items():
            if "log" in res:
                print(f"\n{name} failed; log tail:\n{res['log']}")

    cols = list(results)
    width = max(12, *(len(c) + 2 for c in cols))
    print("\nseconds per stage (model loads counted in their stage and again in model_load)")
    print(f"{'stage':<12}" + "".join(f"{c:>{width}}" for c in cols), end="")
    both = "auto" in results and "bf16" in results
    print(f"{'bf16 / auto':>14}" if both else "")
    for row in ROWS:
        line = f"{row:<12}" + "".join(f"{fmt(results[c], row):>{width}}" for c in cols)
        if both:
            a, b = (results[m].get(f"time/{row}") for m in ("auto", "bf16"))
            line += f"{b / a:>14.2f}" if a and b else f"{'-':>14}"
        print(line)
    print(
        "formats: "
        + "; ".join(
            f"{c}: {results[c].get('engine', '?')} "
            f"{results[c].get('hardware/engine_dtype', '?')} / "
            f"{results[c].get('hardware/train_precision', '?')}"
            for c in cols
        )
    )
    for name, what, limit in (
        ("auto", "default demo from an empty cache", TARGET_COLD_S),
        ("auto, warm", "rerun on a warm cache", TARGET_WARM_S),
    ):
        res = results.get(name, {})
        if res.get("status") == "ok":
            verdict = "met" if res["time/total"] <= limit else "NOT met"
            print(
                f"target: {what} <= {limit} s: {res['time/total']:.0f} s {verdict} "
                f"(process wall clock {res['wall']:.0f} s)"
            )


if __name__ == "__main__":
    main()
