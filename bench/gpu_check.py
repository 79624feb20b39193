"""The GPU check: every path that only a CUDA machine runs, each printed as PASS/FAIL/SKIP with
its numbers. Sized for one GPU in a few minutes (docs/paper.md).

    python bench/gpu_check.py                         # the bundled model (materialised once)
    python bench/gpu_check.py --model DIR             # any HF checkpoint
    python bench/gpu_check.py --tokenizer DIR         # a random-init small Llama, that tokenizer
                                                      # (machines without the bundled GGUF)
    python bench/gpu_check.py --only zero3,lora --out results/
    python bench/gpu_check.py --smoke                 # the checks that run on a CPU, tiny sizes:
                                                      # the script's own paths, not the GPU's

Checks (each in its own process, with its own time limit):
  env            torch / CUDA / library versions and the GPU
  generate       transformers generation on CUDA (engines.hf), bf16
  ifd            the IFD scorer on CUDA: bf16 against fp32, and device_map=auto against one device
  prompt_logprobs  IFD from the vLLM engine's prompt log-probabilities against transformers
  train_bf16     a Lightning bf16-mixed full fine-tune (training.run.train_sft), export, reload
  zero2 / zero3  the same under DeepSpeed ZeRO-2 / ZeRO-3 (partitioned load, consolidated export)
  zero3_offload  ZeRO-3 with optimizer and parameter offload (DeepSpeed's CPU Adam)
  lora           LoRA, merged on export; lora_zero3: LoRA under ZeRO-3
  memory_between free GPU memory at the start, after the IFD scorer closes and after a ZeRO-3
                 fine-tune returns (engines.memory): what the next stage's vLLM finds free
  stop_tokens    a fine-tuned export stops at its template's turn end: generation_config's first
                 eos id, and CUDA generation from the export ends there or at the token cap
  ddp_sweep      2-GPU DDP training inside a sweep job (`run.py -m ... train.devices=2`): both
                 ranks in the job's folder (SKIP with fewer than 2 GPUs)
  ifd_replicas   IFD from the data-parallel vLLM server (engine.replicas=2) against transformers
                 (SKIP without vLLM or 2 GPUs)
A train check passes when the reloaded export's loss on the training records is lower than the
initial model's: the export holds the trained weights.
`--smoke` runs SMOKE_CHECKS (or --only) with a few records, tokens and steps, on the shared cache's
converted model; without CUDA the env check then passes as a dry run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRAIN_CHECKS = {
    "train_bf16": ["train=full"],
    "zero2": ["train=zero2"],
    "zero3": ["train=zero3"],
    "zero3_offload": ["train=zero3_offload"],
    "lora": ["train=lora"],
    "lora_zero3": ["train=lora", "train.strategy=deepspeed_stage_3"],
}
CHECKS = [
    "env",
    "generate",
    "ifd",
    "prompt_logprobs",
    *TRAIN_CHECKS,
    "memory_between",
    "stop_tokens",
    "ddp_sweep",
    "ifd_replicas",
]
# With --before DIR (a folder holding an earlier `training/` package): ZeRO-3 through that code,
# to show what the fix changed. It is expected to fail there.
BEFORE_CHECK = "zero3_before"
TIMEOUTS = {
    "env": 60,
    "generate": 120,
    "ifd": 180,
    "prompt_logprobs": 240,
    "stop_tokens": 420,
    "ddp_sweep": 420,
    "ifd_replicas": 420,
}
TRAIN_TIMEOUT = 300
SMOKE_RUN = False  # --smoke: set in main(); without CUDA the env check is then a dry run
# --smoke: what runs on a CPU in about a minute: one train check runs check_train's every step
# (the others differ in config only), prompt_logprobs starts vLLM, DeepSpeed needs CUDA; --only
# picks others.
SMOKE_CHECKS = ["env", "generate", "ifd", "train_bf16"]
# The sizes of the checks; --smoke replaces them with SMOKE_SIZES (in every check's process).
SIZES = {"records": 32, "gen_tokens": 64, "max_length": 512, "steps": 4, "batch": 4}
SMOKE_SIZES = {"records": 4, "gen_tokens": 8, "max_length": 128, "steps": 2, "batch": 2}


def records(n: int | None = None) -> list[dict]:
    """The bundled seed instructions with a made-up answer each: something to fit and to score."""
    from core.records import read_records

    n = SIZES["records"] if n is None else n

    seeds = list(read_records(ROOT / "core" / "data" / "seeds" / "tiny.jsonl"))
    out = []
    for i in range(n):
        s = seeds[i % len(seeds)]
        words = s["instruction"].rstrip(".?!").split()
        answer = (
            f"Here is a short answer about {' '.join(words[-3:]).lower()}. "
            f"First, {' '.join(reversed(words)).lower()}. Second, keep it simple. "
            f"That is all there is to item {i}."
        )
        out.append({**s, "id": f"g{i}", "output": answer})
    return out


def random_model(tokenizer_dir: str, out: Path) -> str:
    """A 4-layer Llama in SmolLM2's shape with random weights (larger init than HF's default, so
    the distributions are peaked as a trained model's are), beside the given tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return str(out)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.08,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def prepare_model(args: argparse.Namespace, work: Path) -> str:
    if args.model:
        return args.model
    if args.tokenizer:
        return random_model(args.tokenizer, work / "random_model")
    from core.config import compose_config
    from engines.models import resolve_model_path

    # A smoke run shares the converted model of the user's cache; a GPU check keeps to its
    # scratch folder.
    cache = [] if args.smoke else [f"cache_dir={work / 'cache'}"]
    cfg = compose_config(["model=smollm2_135m", *cache])
    return resolve_model_path(cfg.model, cfg.models_dir)


# ---------------------------------------------------------------- the checks (one per process)


def check_env(model: str, work: Path) -> dict:
    import importlib.metadata as md

    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    out["gpus"] = torch.cuda.device_count()
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    for name in ("transformers", "pytorch-lightning", "deepspeed", "peft", "vllm", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["ok"] = torch.cuda.is_available()
    if SMOKE_RUN and not out["ok"]:
        out.update(ok=True, dry_run="no CUDA: --smoke checks the script's paths on this CPU")
    return out


def check_generate(model: str, work: Path) -> dict:
    from engines.base import Sampling
    from engines.hf import HFEngine

    eng = HFEngine(model, dtype="bfloat16", batch_size=8)
    prompts = [
        [{"role": "user", "content": r["instruction"]}] for r in records(min(8, SIZES["records"]))
    ]
    eng.generate(prompts[:1], Sampling(max_tokens=4))  # warm-up
    t0 = time.perf_counter()
    gens = eng.generate(prompts, Sampling(max_tokens=SIZES["gen_tokens"], seed=0))
    dt = time.perf_counter() - t0
    tokens = sum(g.num_tokens for g in gens)
    return {
        "ok": all(g.num_tokens > 0 for g in gens) and eng.device == _device(),
        "device": eng.device,
        "tokens": tokens,
        "tokens_per_s": round(tokens / dt, 1),
    }


def _ifd(model: str, dtype: str, device_map: str | None = None) -> list[float]:
    from metrics.ifd import IFDScorer

    sc = IFDScorer(model, dtype=dtype, device_map=device_map, max_length=SIZES["max_length"])
    rows = sc.score(records())
    sc.close()
    return [r["loss_a_given_q"] for r in rows] + [r["loss_a"] for r in rows]


def _rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-9) for x, y in zip(a, b))


def check_ifd(model: str, work: Path) -> dict:
    t0 = time.perf_counter()
    fp32 = _ifd(model, "float32")
    t1 = time.perf_counter()
    bf16 = _ifd(model, "bfloat16")
    t2 = time.perf_counter()
    sharded = _ifd(model, "bfloat16", device_map="auto")
    bf16_rel, map_rel = _rel(bf16, fp32), _rel(sharded, bf16)
    return {
        # bf16 rounds the logits: a few percent on single losses is bf16's own precision.
        "ok": bf16_rel < 0.05 and map_rel < 1e-3,
        "max_rel_bf16_vs_fp32": round(bf16_rel, 5),
        "max_rel_device_map_vs_one_device": round(map_rel, 6),
        "fp32_s": round(t1 - t0, 1),
        "bf16_s": round(t2 - t1, 1),
    }


def check_prompt_logprobs(model: str, work: Path) -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skip": "vllm is not installed here"}
    return prompt_logprobs_match(model)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the check itself


def prompt_logprobs_match(model: str) -> dict:
    """IFD's losses from the vLLM engine's prompt log-probabilities against transformers'."""
    from engines.vllm_engine import VLLMEngine
    from metrics.ifd import EngineIFDScorer, IFDScorer

    recs = records()
    length = SIZES["max_length"]
    ref = IFDScorer(model, dtype="float32", max_length=length).score(recs)
    engine = VLLMEngine(model, dtype="float32", max_model_len=2 * length)
    t0 = time.perf_counter()
    got = EngineIFDScorer(model, engine, max_length=length).score(recs)
    dt = time.perf_counter() - t0
    engine.close()
    keys = ("loss_a_given_q", "loss_q", "loss_a", "ifd")
    rel = _rel([g[k] for g in got for k in keys], [r[k] for r in ref for k in keys])
    return {"ok": rel < 1e-3, "max_rel_vs_transformers": rel, "vllm_s": round(dt, 1)}


def _mean_loss(model_dir: str, recs: list[dict]) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from engines.hf import load_tokenizer
    from metrics.ifd import _token_losses, pad_id_for, tokenise

    tok = load_tokenizer(model_dir)
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(_device()).eval()
    seqs = [tokenise(tok, r["instruction"], r["output"], 256).x for r in recs]
    with torch.inference_mode():
        losses = _token_losses(m, seqs, pad_id_for(tok), _device())
    return float(torch.cat([x.float() for x in losses]).mean())


def check_train(name: str, model: str, work: Path) -> dict:
    import torch
    from omegaconf import OmegaConf

    from core.config import compose_config
    from training.run import train_sft

    cfg = compose_config(
        [
            *TRAIN_CHECKS[name],
            f"cache_dir={work / 'cache'}",
            f"train.max_steps={SIZES['steps']}",
            f"train.micro_batch_size={SIZES['batch']}",
            f"train.effective_batch_size={2 * SIZES['batch']}",
            "train.cutoff_len=256",
            "train.lr=1e-3",
            "train.warmup_ratio=0",
            "train.precision=bf16-mixed",
            "train.devices=1",
        ]
    )
    student = OmegaConf.create({"name": "gpu_check", "path": model})
    recs = records()
    before = _mean_loss(model, recs)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    out = work / name
    t0 = time.perf_counter()
    summary = train_sft(cfg.train, student, recs, out, str(work / "models"), seed=0)
    dt = time.perf_counter() - t0
    after = _mean_loss(str(out / "hf"), recs)
    return {
        "ok": after < before and summary["train/steps"] == SIZES["steps"],
        "strategy": summary["train/strategy"],
        "steps": summary["train/steps"],
        "compute_dtype": summary["train/compute_dtype"],
        "loss_before": round(before, 4),
        "loss_after_reload": round(after, 4),
        "train_s": round(dt, 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
    }


def _free_gib() -> float | None:
    from engines.memory import gpu_memory_report

    free = [d["free"] for d in gpu_memory_report().values()]
    return round(min(free) / 2**30, 2) if free else None


def check_memory_between(model: str, work: Path) -> dict:
    """What a stage leaves on the GPU for the next: the IFD scorer closed, then a ZeRO-3 (or,
    without DeepSpeed, a plain bf16) fine-tune returned."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return {"skip": "no CUDA"}
    start = _free_gib()
    _ifd(model, "bfloat16")
    after_ifd = _free_gib()
    name = "zero3" if importlib.util.find_spec("deepspeed") else "train_bf16"
    trained = check_train(name, model, work / "memory")
    after_train = _free_gib()
    lost = max(start - after_ifd, start - after_train)
    return {
        "ok": lost < 1.0 and trained["ok"],  # under 1 GiB: the CUDA context and kernels
        "free_gib_start": start,
        "free_gib_after_ifd": after_ifd,
        f"free_gib_after_{name}": after_train,
        "lost_gib": round(lost, 2),
    }


def check_stop_tokens(model: str, work: Path) -> dict:
    """The export of a fine-tune stops where its template ends a turn."""
    import json as _json

    from engines.base import Sampling
    from engines.hf import HFEngine, load_tokenizer
    from engines.turns import turn_end_token

    trained = check_train("train_bf16", model, work / "stops")
    export = work / "stops" / "train_bf16" / "hf"
    tok = load_tokenizer(str(export))
    turn, turn_id = turn_end_token(tok)
    eos = _json.loads((export / "generation_config.json").read_text())["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    dtype = "bfloat16" if _device() == "cuda" else "float32"  # a --smoke run on a plain CPU
    eng = HFEngine(str(export), dtype=dtype, batch_size=8)
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in records(8)]
    cap = SIZES["gen_tokens"]
    gens = eng.generate(prompts, Sampling(max_tokens=cap, seed=0))
    ended = sum(g.num_tokens < cap for g in gens)
    return {
        "ok": trained["ok"] and eos[0] == turn_id and tok.eos_token == turn,
        "turn_end": turn,
        "eos_ids": eos,
        "stopped_before_cap": f"{ended}/{len(gens)}",
        "device": eng.device,
    }


def check_ddp_sweep(model: str, work: Path) -> dict:
    import torch

    if torch.cuda.device_count() < 2:
        return {"skip": f"{torch.cuda.device_count()} GPU(s); 2 needed"}
    data = work / "ddp" / "sft.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in records()))
    sweep = work / "ddp" / "multirun"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        "seed=0",
        "stages=[train]",
        "data=file",
        f"data.path={data}",
        "+model@train.student=smollm2_135m",
        f"train.student.path={model}",
        "train=full",
        "train.strategy=ddp",
        "train.devices=2",
        f"train.max_steps={SIZES['steps']}",
        "train.cutoff_len=256",
        "train.follower_timeout_min=3",
        "engine=hf",
        "logger=none",
        f"cache_dir={work / 'ddp' / 'cache'}",
        f"hydra.sweep.dir={sweep}/" + "${now:%H-%M-%S-%f}",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT)
    folders = list(sweep.iterdir()) if sweep.is_dir() else []
    jobs = list(sweep.glob("*/0/summary.json"))
    summary = json.loads(jobs[0].read_text()) if jobs else {}
    return {
        "ok": p.returncode == 0 and len(folders) == 1 and summary.get("train/world_size") == 2,
        "sweep_folders": len(folders),
        "world_size": summary.get("train/world_size"),
        "rc": p.returncode,
        **({"error": (p.stderr or p.stdout)[-1500:]} if p.returncode else {}),
    }


def check_ifd_replicas(model: str, work: Path) -> dict:
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        return {"skip": "vllm is not installed here"}
    if torch.cuda.device_count() < 2:
        return {"skip": f"{torch.cuda.device_count()} GPU(s); 2 needed"}
    from engines.vllm_server import VLLMServerEngine
    from metrics.ifd import EngineIFDScorer, IFDScorer

    recs, length = records(), SIZES["max_length"]
    ref = IFDScorer(model, dtype="float32", max_length=length).score(recs)
    engine = VLLMServerEngine(model, replicas=2, dtype="float32", max_model_len=2 * length)
    try:
        got = EngineIFDScorer(model, engine, max_length=length).score(recs)
    finally:
        engine.close()
    keys = ("loss_a_given_q", "loss_q", "loss_a", "ifd")
    rel = _rel([g[k] for g in got for k in keys], [r[k] for r in ref for k in keys])
    return {"ok": rel < 1e-3, "max_rel_vs_transformers": rel}


def run_one(check: str, model: str, work: Path, before: str | None = None) -> dict:
    if check == BEFORE_CHECK:
        sys.path.insert(0, before)  # its `training` package shadows this one
        TRAIN_CHECKS[check] = TRAIN_CHECKS["zero3"]
    if check in TRAIN_CHECKS:
        return check_train(check, model, work)
    return globals()[f"check_{check}"](model, work)


# ---------------------------------------------------------------- the driver


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="an HF checkpoint directory (default: the bundled model)")
    ap.add_argument("--tokenizer", help="a tokenizer directory: check on a random-init small Llama")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(CHECKS)}")
    ap.add_argument("--out", help="a folder for gpu_check.json")
    ap.add_argument("--work", help="a scratch folder (default: a temp dir)")
    ap.add_argument("--before", help="a folder with an earlier training/ package (zero3_before)")
    ap.add_argument("--smoke", action="store_true", help="CPU-runnable checks, tiny sizes")
    ap.add_argument("--run", help=argparse.SUPPRESS)  # one check, in this process
    args = ap.parse_args()
    if args.smoke:
        global SMOKE_RUN
        SMOKE_RUN = True
        SIZES.update(SMOKE_SIZES)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
    if args.run:
        res = run_one(args.run, args.model, work, args.before)
        print("RESULT " + json.dumps(res))
        return 0
    checks = args.only.split(",") if args.only else list(SMOKE_CHECKS if args.smoke else CHECKS)
    if args.before and BEFORE_CHECK not in checks:
        checks.append(BEFORE_CHECK)
    unknown = [c for c in checks if c not in [*CHECKS, BEFORE_CHECK]]
    if unknown:
        ap.error(f"unknown check(s) {unknown}; valid: {', '.join(CHECKS)}")
    from _machine import print_machine

    print_machine("hf and vllm (per check)", "bfloat16 (fp32 references)")
    model = prepare_model(args, work)
    print(f"model: {model}\nwork: {work}", flush=True)
    results = {}
    for check in checks:
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--run", check, "--model", model, "--work", str(work)]
        if args.before:
            cmd += ["--before", str(Path(args.before).resolve())]
        if args.smoke:
            cmd.append("--smoke")
        limit = TIMEOUTS.get(check, TRAIN_TIMEOUT)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT)
            line = next((x for x in p.stdout.splitlines()[::-1] if x.startswith("RESULT ")), None)
            if line:
                res = json.loads(line[len("RESULT ") :])
            else:
                tail = (p.stderr or p.stdout).strip().splitlines()[-25:]
                res = {"ok": False, "error": "\n".join(tail)}
        except subprocess.TimeoutExpired:
            res = {"ok": False, "error": f"no result within {limit}s"}
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        status = "SKIP" if "skip" in res else ("PASS" if res.get("ok") else "FAIL")
        res["status"] = status
        results[check] = res
        shown = {k: v for k, v in res.items() if k not in ("ok", "status", "error")}
        print(f"{status:4}  {check:16} {json.dumps(shown)}", flush=True)
        if "error" in res:
            print("      " + res["error"].replace("\n", "\n      "), flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(results, indent=1))
    if args.smoke and not args.work:
        shutil.rmtree(work, ignore_errors=True)  # a smoke run's checkpoints are of no use after
    failed = [c for c, r in results.items() if r["status"] == "FAIL"]
    print(
        f"\n{len(results) - len(failed)}/{len(results)} passed or skipped"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
