"""IFD scoring throughput: the reference way (three forward passes per record at batch size 1, no
attention mask, HF's own loss) against the project's scorer (two batched passes), same model, same
process.

    python bench/ifd_throughput.py [--n 200] [--threads N]
    python bench/ifd_throughput.py --smoke     # every path at the smallest sizes (seconds)

Prints the machine, records/s of each, their ratio, the max relative difference of every score,
achieved FLOP/s (2 x parameters x tokens/s) against a measured matmul of the same dtype, and the
ceiling: the best ratio any scorer that runs the project's tokens could reach at that matmul's
peak. Targets on a 2-core CPU: fp32 ratio >= 2 with max relative difference <= 1e-4; bf16 ratio
>= 4.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from _machine import print_machine

# --smoke: a few short records and a small matmul; the figures are not meaningful, the paths run.
SMOKE = {"n": 4, "max_length": 256, "chunk": 2, "matmul_n": 256, "words": (10, 30)}

WORDS = (
    "the model answers each question with care and explains every step of its reasoning so that a "
    "reader can follow the argument from the premises to the conclusion while checking facts "
    "numbers units and sources along the way before giving a short summary at the end"
).split()


def make_records(n: int, seed: int = 0, words: tuple[int, int] = (60, 260)) -> list[dict]:
    from core.config import compose_config
    from core.data import load_seeds

    seeds = load_seeds(compose_config().data, 0)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = seeds[i % len(seeds)]
        k = rng.randint(*words)
        answer = " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."
        out.append(
            {
                "id": f"b{i}",
                "instruction": s["instruction"],
                "input": s["input"],
                "output": answer,
                "meta": {},
            }
        )
    return out


@torch.inference_mode()
def reference(model, tok, records, max_length: int) -> tuple[list[dict], int]:
    """Three passes per record at batch size 1 with HF's own loss; returns scores and tokens run."""
    from core.records import query_text
    from metrics.ifd import ifd_from_losses, tokenise

    out, tokens = [], 0
    for r in records:
        t = tokenise(tok, query_text(r), r["output"], max_length)
        x = torch.tensor([t.x])
        lab = x.clone()
        lab[0, : t.n_q] = -100
        l_aq = model(input_ids=x, labels=lab).loss.item()
        q = torch.tensor([t.x[: t.n_q]])
        l_q = model(input_ids=q, labels=q).loss.item()
        a = torch.tensor([t.a])
        l_a = model(input_ids=a, labels=a).loss.item()
        tokens += len(t.x) + t.n_q + len(t.a)
        out.append(
            {
                "loss_a_given_q": l_aq,
                "loss_q": l_q,
                "loss_a": l_a,
                **ifd_from_losses(l_aq, l_q, l_a),
            }
        )
    return out, tokens


def matmul_flops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best of three timings of an n x n matmul: the machine's practical peak for the dtype."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


SCORES = ("loss_a_given_q", "loss_q", "loss_a", "ifd", "ic_ifd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=100, help="records per interleaved timing slice")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--matmul-n", type=int, default=2048, help="side of the peak-FLOP/s matmul")
    ap.add_argument("--smoke", action="store_true", help="smallest sizes: checks the bench runs")
    args = ap.parse_args()
    args.words = (60, 260)
    if args.smoke:
        vars(args).update(SMOKE)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.config import compose_config
    from engines.models import resolve_model_path
    from metrics.ifd import IFDScorer

    print_machine("transformers (the reference and IFDScorer)", "float32 and bfloat16")
    cfg = compose_config()
    path = resolve_model_path(cfg.model, cfg.models_dir)
    records = make_records(args.n, words=args.words)

    # The reference: the model as transformers loads it by default, in fp32.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    scorers = {
        dtype: IFDScorer(path, dtype=dtype, max_length=args.max_length)
        for dtype in ("float32", "bfloat16")
    }
    reference(model, tok, records[:2], args.max_length)  # warm-up
    for scorer in scorers.values():
        scorer.score(records[:4])  # warm-up (and the loss kernel's compilation)
        scorer.tokens_scored = 0

    # Interleaved slices, so drift in the machine's speed hits every contender alike.
    ref, ref_tokens, t_ref = [], 0, 0.0
    got: dict[str, list[dict]] = {d: [] for d in scorers}
    took = dict.fromkeys(scorers, 0.0)
    for start in range(0, len(records), args.chunk):
        part = records[start : start + args.chunk]
        t0 = time.perf_counter()
        scores, tokens = reference(model, tok, part, args.max_length)
        t_ref += time.perf_counter() - t0
        ref += scores
        ref_tokens += tokens
        for dtype, scorer in scorers.items():
            t0 = time.perf_counter()
            got[dtype] += scorer.score(part)
            took[dtype] += time.perf_counter() - t0

    peaks = {
        d: matmul_flops(torch.float32 if d == "float32" else torch.bfloat16, args.matmul_n)
        for d in scorers
    }
    rate_ref = len(records) / t_ref
    ref_flops = 2 * n_params * ref_tokens / t_ref
    print(
        f"\n{args.n} records, SmolLM2-135M ({n_params / 1e6:.1f}M parameters), "
        f"{torch.get_num_threads()} threads, timed in interleaved slices of {args.chunk}"
    )
    print(
        f"  reference: 3 passes x batch 1, fp32      {rate_ref:7.2f} records/s   "
        f"{ref_flops / 1e9:.1f} GFLOP/s = {100 * ref_flops / peaks['float32']:.0f}% of the "
        f"fp32 matmul ({peaks['float32'] / 1e9:.1f} GFLOP/s)"
    )
    for dtype, target in (("float32", 2.0), ("bfloat16", 4.0)):
        scorer = scorers[dtype]
        rate = len(records) / took[dtype]
        achieved = 2 * n_params * scorer.tokens_scored / took[dtype]
        diffs = {
            key: max(
                abs(g[key] - r[key]) / abs(r[key])
                for g, r in zip(got[dtype], ref)
                if g[key] is not None and r[key] is not None
            )
            for key in SCORES
        }
        print(
            f"  project: 2 batched passes, {dtype:<9}    {rate:7.2f} records/s   "
            f"ratio {rate / rate_ref:5.2f}  (target >= {target})"
        )
        print(
            "      max relative difference vs reference: "
            + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        )
        print(
            f"      {scorer.tokens_scored / took[dtype]:,.0f} tokens/s = {achieved / 1e9:.1f} "
            f"GFLOP/s achieved vs {peaks[dtype] / 1e9:.1f} GFLOP/s {dtype} matmul "
            f"({100 * achieved / peaks[dtype]:.0f}%)"
        )
        # The ceiling: every scorer must run at least its own tokens through the model; at the
        # matmul peak of its dtype, the best ratio any exact two-pass scorer can reach is this.
        ceiling = (ref_tokens / scorer.tokens_scored) * peaks[dtype] / ref_flops
        print(
            f"      ceiling: {ref_tokens / scorer.tokens_scored:.2f}x fewer tokens than the "
            f"reference x {peaks[dtype] / ref_flops:.2f}x headroom to the {dtype} matmul peak "
            f"= ratio <= {ceiling:.2f}"
        )


if __name__ == "__main__":
    main()
