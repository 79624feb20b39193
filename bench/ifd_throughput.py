"""IFD scoring throughput: the reference way (three forward passes per record at batch size 1, no
attention mask, HF's own loss) against the project's scorer (two batched passes), same model, same
process.

    python bench/ifd_throughput.py [--n 200] [--threads N]

Prints records/s of each, their ratio, the max relative difference of every score, and achieved
FLOP/s (2 x parameters x tokens/s) against a measured matmul of the same dtype. Targets on a 2-core
CPU: fp32 ratio >= 2 with max relative difference <= 1e-4; bf16 ratio >= 4.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

WORDS = (
    "the model answers each question with care and explains every step of its reasoning so that a "
    "reader can follow the argument from the premises to the conclusion while checking facts "
    "numbers units and sources along the way before giving a short summary at the end"
).split()


def make_records(n: int, seed: int = 0) -> list[dict]:
    from pipeline.config import compose_config
    from pipeline.data import load_seeds

    seeds = load_seeds(compose_config().data, 0)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = seeds[i % len(seeds)]
        words = rng.randint(60, 260)
        answer = " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."
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
def reference(model, tok, records, max_length: int) -> list[dict]:
    from metrics.ifd import ifd_from_losses, tokenise
    from pipeline.records import query_text

    out = []
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
        out.append(
            {
                "loss_a_given_q": l_aq,
                "loss_q": l_q,
                "loss_a": l_a,
                **ifd_from_losses(l_aq, l_q, l_a),
            }
        )
    return out


def matmul_flops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from engines.models import resolve_model_path
    from metrics.ifd import IFDScorer
    from pipeline.config import compose_config

    cfg = compose_config()
    path = resolve_model_path(cfg.model, cfg.models_dir)
    records = make_records(args.n)

    ref_scorer = IFDScorer(path, dtype="float32", max_length=args.max_length)
    model, tok = ref_scorer.model, ref_scorer.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    reference(model, tok, records[:2], args.max_length)  # warm-up
    t0 = time.perf_counter()
    ref = reference(model, tok, records, args.max_length)
    t_ref = time.perf_counter() - t0
    rate_ref = len(records) / t_ref
    ref_scorer.close()

    print(
        f"\n{args.n} records, SmolLM2-135M ({n_params / 1e6:.1f}M parameters), "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  reference: 3 passes x batch 1, fp32   {rate_ref:7.2f} records/s")
    for dtype, target in (("float32", 2.0), ("bfloat16", 4.0)):
        scorer = IFDScorer(path, dtype=dtype, max_length=args.max_length)
        scorer.score(records[:4])  # warm-up
        scorer.tokens_scored = 0
        t0 = time.perf_counter()
        got = scorer.score(records)
        dt = time.perf_counter() - t0
        rate = len(records) / dt
        tok_s = scorer.tokens_scored / dt
        achieved = 2 * n_params * tok_s
        peak = matmul_flops(torch.float32 if dtype == "float32" else torch.bfloat16)
        diffs = {}
        for key in ("loss_a_given_q", "loss_q", "loss_a", "ifd", "ic_ifd"):
            diffs[key] = max(
                abs(g[key] - r[key]) / abs(r[key])
                for g, r in zip(got, ref)
                if g[key] is not None and r[key] is not None
            )
        print(
            f"  project: 2 batched passes, {dtype:<9}    {rate:7.2f} records/s   "
            f"ratio {rate / rate_ref:5.2f}  (target >= {target})"
        )
        print(
            "      max relative difference vs reference: "
            + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        )
        print(
            f"      {tok_s:,.0f} tokens/s = {achieved / 1e9:.1f} GFLOP/s achieved vs "
            f"{peak / 1e9:.1f} GFLOP/s {dtype} matmul ({100 * achieved / peak:.0f}%)"
        )
        scorer.close()


if __name__ == "__main__":
    main()
