"""SFT with Lightning on the real bundled model: the prompt mask, overfitting, export, LoRA,
resume, DeepSpeed strategy construction, and bad input."""

import csv
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from core.errors import ConfigError, DataError
from core.records import make_record
from engines.precision import Hardware, resolve_precision
from tests.conftest import MODELS_DIR, compose_cfg
from training.data import IGNORE, collate, encode_all, encode_record, ensure_chat_template
from training.run import make_strategy, train_sft

RECORDS = [
    make_record(f"t{i}", q, "", a)
    for i, (q, a) in enumerate(
        [
            ("What is the capital of France?", "The capital of France is Paris."),
            ("Name a primary colour.", "Red is a primary colour."),
            ("What is 3 plus 4?", "3 plus 4 equals 7."),
            ("Translate 'cat' into Spanish.", "In Spanish, 'cat' is 'gato'."),
            ("Which planet is called the red planet?", "Mars is called the red planet."),
            ("How many legs does a spider have?", "A spider has eight legs."),
            ("What gas do plants absorb?", "Plants absorb carbon dioxide."),
            ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
        ]
    )
]


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir):
    from engines.hf import load_tokenizer

    return load_tokenizer(bundled_model_dir, padding_side="right")


@pytest.mark.slow
def test_prompt_mask_token_by_token(tokenizer):
    rec = make_record("m", "Say hi.", "to Bob", "Hi Bob!")
    enc, status = encode_record(tokenizer, rec, 512)
    assert status == "kept"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi.\nto Bob"}], tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert enc.input_ids[:n_prompt] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for k, (tid, lab) in enumerate(zip(enc.input_ids, enc.labels)):
        assert lab == (IGNORE if k < n_prompt else tid), k
    assert tokenizer.decode([t for t in enc.labels if t != IGNORE]) == "Hi Bob!<|im_end|>\n"
    short, _ = encode_record(tokenizer, make_record("s", "Hi", "", "Yo"), 512)
    batch = collate([enc, short], tokenizer.pad_token_id)
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == IGNORE).all()
    assert (batch["labels"][1, : len(short.input_ids)] == torch.tensor(short.labels)).all()


@pytest.mark.slow
def test_truncation_and_dropping_are_counted(tokenizer):
    recs = [
        make_record("a", "Q", "", "word " * 400),
        make_record("b", "Q", "", ""),
        make_record("c", "long " * 300, "", "A"),
        RECORDS[0],
    ]
    examples, stats = encode_all(tokenizer, recs, 128)
    assert stats.as_dict() == {
        "kept": 1,
        "truncated": 1,
        "dropped_empty_output": 1,
        "dropped_prompt_too_long": 1,
    }
    assert len(examples) == 2 and all(len(e.input_ids) <= 128 for e in examples)
    with pytest.raises(DataError, match="no usable example"):
        encode_all(tokenizer, recs[1:3], 128)


@pytest.mark.slow
@pytest.mark.parametrize("student", ["llama3_8b_base", "llama3.2_3b_base", "mistral_7b_base"])
def test_base_students_chat_templates_give_a_clean_prompt_answer_boundary(
    student, bundled_model_dir
):
    """The chat templates of base students without one of their own (conf/model/*_base.yaml),
    rendered by a real tokenizer: the prompt is a prefix of prompt + answer, only the answer is
    learned, and the answer's turn ends with the end-of-turn token the template writes."""
    from core.config import load_model_config
    from engines.hf import load_tokenizer

    tok = load_tokenizer(bundled_model_dir, padding_side="right")
    tok.chat_template = None
    ensure_chat_template(tok, load_model_config(student, "train.student").chat_template)
    enc, status = encode_record(tok, make_record("m", "Say hi.", "", "Hi Bob!"), 512)
    assert status == "kept"
    learned = tok.decode([t for t in enc.labels if t != IGNORE])
    assert learned.strip().startswith("Hi Bob!") and learned.strip() != "Hi Bob!"  # + end of turn
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Say hi."}], tokenize=False, add_generation_prompt=True
    )
    assert "Say hi." in prompt and "Hi Bob!" not in prompt and "\\n" not in prompt


def test_missing_chat_template_is_a_clear_error():
    class Tok:
        chat_template = None

    with pytest.raises(ConfigError, match="train.chat_template"):
        ensure_chat_template(Tok(), None)
    tok = Tok()
    ensure_chat_template(tok, "{{ messages }}")
    assert tok.chat_template == "{{ messages }}"


def test_deepspeed_configs_compose_and_build():
    from pytorch_lightning.strategies import DeepSpeedStrategy

    expected = {
        "zero2": (2, False),
        "zero3": (3, False),
        "zero3_offload": (3, True),
        "paper": (3, False),
        "qwen25_lora": (3, False),
    }
    for name, (stage, offload) in expected.items():
        cfg = compose_cfg([f"train={name}"]).train
        s = make_strategy(cfg.strategy, require_gpu=False)
        assert isinstance(s, DeepSpeedStrategy), name
        zero = s.config["zero_optimization"]
        assert zero["stage"] == stage
        assert ("offload_optimizer" in zero) == offload
    paper = compose_cfg(["train=paper"]).train
    assert (
        paper.lr,
        paper.epochs,
        paper.scheduler,
        paper.warmup_ratio,
        paper.cutoff_len,
        paper.effective_batch_size,
    ) == (2e-5, 3, "cosine", 0.03, 2048, 64)
    # The paper trained in bf16 on A100-class GPUs: `auto` resolves to that there.
    a100 = Hardware(cuda=True, cuda_bf16=True, cuda_name="NVIDIA A100-SXM4-80GB")
    assert resolve_precision(paper.precision, a100) == "bf16-mixed"
    assert compose_cfg(["train=qwen25_small"]).train.lr == 1e-5
    assert compose_cfg(["train=qwen25_mid"]).train.lr == 7e-6
    lora = compose_cfg(["train=qwen25_lora"]).train
    assert lora.method == "lora" and lora.lora.r == 8 and lora.lr == 5e-5
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs CUDA GPUs.*train=full"):
            make_strategy("deepspeed_stage_3")
    with pytest.raises(ConfigError, match="valid: .*deepspeed_stage_2"):
        make_strategy("fsdp9")


def _train_cfg(**over):
    cfg = compose_cfg(["train=cpu_tiny"]).train
    return OmegaConf.merge(cfg, over)


def _losses(out_dir, version=0):
    with open(out_dir / "logs" / f"version_{version}" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def _mean_loss(model_dir, tokenizer, records):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    examples, _ = encode_all(tokenizer, records, 512)
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.slow
def test_overfit_export_and_resume(tmp_path, tokenizer, bundled_model_dir):
    student = compose_cfg().model
    # The bundled model memorises these 8 records within a few steps (loss ~1.2 -> ~0.04 by step 5).
    cfg = _train_cfg(
        max_steps=6,
        micro_batch_size=8,
        effective_batch_size=8,
        lr=1e-4,
        save_every_n_steps=3,
        keep_checkpoints=True,
    )
    out = tmp_path / "train"
    s = train_sft(cfg, student, RECORDS, out, MODELS_DIR, seed=0)
    losses = _losses(out)
    assert s["train/steps"] == 6 and len(losses) == 6
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.ckpt"]  # one copy only
    assert losses[-1] <= 0.5 * losses[0], losses
    assert _mean_loss(out / "hf", tokenizer, RECORDS) < _mean_loss(
        bundled_model_dir, tokenizer, RECORDS
    )
    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["data_sha256"] == s["train/data_sha256"] and cfg_json["train"]["max_steps"] == 6

    # The export loads and generates, with its chat template.
    from engines.base import Sampling
    from engines.hf import HFEngine

    eng = HFEngine(str(out / "hf"), dtype="float32")
    gen = eng.generate(
        [[{"role": "user", "content": RECORDS[0]["instruction"]}]], Sampling(max_tokens=12)
    )[0]
    assert gen.text.strip() and "Paris" in gen.text

    # Resume: a later run with more steps continues from checkpoints/last.ckpt.
    more = train_sft(OmegaConf.merge(cfg, {"max_steps": 7}), student, RECORDS, out, MODELS_DIR, 0)
    assert more["train/resumed_from_step"] == 6 and more["train/steps"] == 7
    assert len(_losses(out, version=1)) == 1 and len(_losses(out)) == 6  # earlier logs kept


@pytest.mark.slow
def test_lora_trains_adapters_only_and_merges(tmp_path, tokenizer, bundled_model_dir):
    from transformers import AutoModelForCausalLM

    from training.module import SFTModule

    cfg = _train_cfg(
        method="lora",
        max_steps=6,
        micro_batch_size=8,
        effective_batch_size=8,
        lr=1e-3,
        precision="32-true",
        keep_checkpoints=True,
    )
    module = SFTModule(bundled_model_dir, cfg)
    module.configure_model()
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    out = tmp_path / "lora"
    train_sft(cfg, compose_cfg().model, RECORDS, out, MODELS_DIR, seed=0)
    base = AutoModelForCausalLM.from_pretrained(bundled_model_dir, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32).eval()
    assert not any("lora" in k for k in merged.state_dict())
    changed = [
        k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])
    ]
    assert changed and all(("proj" in k) for k in changed)  # only layers LoRA adapted

    # The merged export computes what the adapter model computes.
    from peft import PeftModel

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    peft_model = SFTModule(bundled_model_dir, cfg)
    peft_model.configure_model()
    peft_model.load_state_dict(ckpt["state_dict"])
    assert isinstance(peft_model.model, PeftModel)
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        a = peft_model.model.eval()(input_ids=ids).logits
        b = merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_train_stage_on_a_file_and_cache(tmp_path, bundled_model_dir):
    from pipeline.runner import Run

    f = tmp_path / "sft.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    over = [
        f"cache_dir={tmp_path / 'cache'}",
        f"models_dir={MODELS_DIR}",
        "stages=[train]",
        "data=file",
        f"data.path={f}",
        "train.max_steps=2",
    ]
    s = Run(compose_cfg(over), tmp_path / "run").run()
    assert s["train/steps"] == 2 and s["train/kept"] == 8 and s["train/zero_stage"] == 0
    assert (tmp_path / "run" / "train" / "hf" / "config.json").is_file()
    assert not (tmp_path / "run" / "train" / "checkpoints").exists()  # keep_checkpoints=false
    again = Run(compose_cfg(over), tmp_path / "again").run()  # cached: no second training
    assert again["train/data_sha256"] == s["train/data_sha256"]
    assert (tmp_path / "again" / "train").resolve() == (tmp_path / "run" / "train").resolve()


def _enc(n):
    from training.data import Encoded

    return Encoded(input_ids=list(range(n + 1)), labels=[IGNORE] + list(range(n)))


def test_loss_scale_undoes_every_division():
    from training.module import loss_scale

    assert loss_scale(4, 1, deepspeed=False) == 4  # Lightning divides by accumulate
    assert loss_scale(4, 8, deepspeed=False) == 32  # DDP averages over ranks
    assert loss_scale(4, 8, deepspeed=True) == 128  # DeepSpeed divides by accumulate again


def test_window_sampler_groups_steps_and_shards_ranks(monkeypatch):
    """Each optimizer step's micro-batches (accumulate per rank x ranks) carry the step's total
    target tokens; ranks take disjoint micro-batches of the same steps; seeded by epoch."""
    from training.data import WindowBatchSampler

    tokens = [3, 5, 7, 11, 13, 17, 19, 23, 29, 31]
    one = WindowBatchSampler(tokens, micro_batch=2, accumulate=2, seed=0)
    batches = list(one)
    assert len(batches) == len(one) == 5
    assert sorted(i for b in batches for i, _ in b) == list(range(10))
    steps = [batches[0:2], batches[2:4], batches[4:5]]
    for step in steps:
        total = sum(tokens[i] for b in step for i, _ in b)
        assert {t for b in step for _, t in b} == {total}
    assert list(one) == batches  # the same epoch, the same order
    # Lightning sets the epoch at each epoch's start through the loader: a new order.
    from lightning_fabric.utilities.data import _set_sampler_epoch

    from training.data import make_loader

    loader = make_loader([_enc(n) for n in tokens], 2, 0, seed=0, accumulate=2)
    first = [b["input_ids"].tolist() for b in loader]
    _set_sampler_epoch(loader, 1)
    assert [b["input_ids"].tolist() for b in loader] != first
    _set_sampler_epoch(loader, 0)
    assert [b["input_ids"].tolist() for b in loader] == first
    # DeepSpeed's steps: whole steps only, the epoch's incomplete last step dropped.
    whole = list(WindowBatchSampler(tokens, micro_batch=2, accumulate=2, seed=0, whole_steps=True))
    assert whole == batches[:4]

    per_rank = {}
    for rank in (0, 1):
        monkeypatch.setattr(WindowBatchSampler, "_rank_world", staticmethod(lambda r=rank: (r, 2)))
        per_rank[rank] = list(WindowBatchSampler(tokens, 1, 2, seed=0))
    assert len(per_rank[0]) == len(per_rank[1]) == 5  # every rank steps as often
    seen = [i for r in (0, 1) for b in per_rank[r] for i, _ in b]
    assert sorted(seen) == list(range(10))
    for k in range(0, 5, 2):  # a step: two micro-batches on each rank, one total
        step = per_rank[0][k : k + 2] + per_rank[1][k : k + 2]
        assert len({t for b in step for _, t in b}) == 1
        assert step[0][0][1] == sum(tokens[i] for b in step for i, _ in b)


@pytest.mark.slow
def test_step_loss_is_the_token_mean_of_the_whole_step(tokenizer, hf_engine):
    """Two micro-batches of different lengths, accumulated: what is back-propagated sums to the
    mean over every target token of the step (one big batch's HF loss), not the mean of the
    two micro-batch means."""
    from training.data import collate, target_tokens
    from training.module import step_loss

    records = [RECORDS[0], make_record("long", "Tell me a story.", "", "Once upon a time " * 12)]
    examples, _ = encode_all(tokenizer, records, 512)
    total = sum(target_tokens(e) for e in examples)
    pad = tokenizer.pad_token_id
    model = hf_engine.model
    with torch.no_grad():
        losses, means = [], []
        for e in examples:  # accumulate=2: Lightning divides each loss by 2
            loss, mean, _ = step_loss(model, collate([(e, total)], pad), scale=2)
            losses.append(loss / 2)
            means.append(mean)
        whole = model(**collate(examples, pad)).loss
    assert sum(losses).item() == pytest.approx(whole.item(), rel=1e-5)
    assert abs((means[0] + means[1]).item() / 2 - whole.item()) > 1e-3  # not the mean of means


def test_deepspeed_is_told_the_micro_batch_size():
    """Lightning's DeepSpeed strategy reads the micro-batch size off the loader's batch sampler
    unless told; ours batches by optimizer step (found by the GPU check: every ZeRO run failed
    with "'WindowBatchSampler' object has no attribute 'batch_size'")."""
    from training.data import WindowBatchSampler

    for name in ("deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload"):
        s = make_strategy(name, require_gpu=False, micro_batch_size=4)
        assert s.config["train_micro_batch_size_per_gpu"] == 4
    assert WindowBatchSampler([3, 5, 7], micro_batch=2, accumulate=1, seed=0).batch_size == 2


def test_optimizer_offload_uses_deepspeed_cpu_adam(monkeypatch):
    """With ZeRO's optimizer offload DeepSpeed refuses a torch optimizer
    (zero_force_ds_cpu_optimizer): the same AdamW update comes from DeepSpeed's CPU Adam. (Its
    C++ op takes a minute to build: the GPU check runs the real one; here its constructor is
    recorded.)"""
    import deepspeed.ops.adam as ds_adam

    from training.module import make_optimizer

    made = {}

    class CPUAdam(torch.optim.AdamW):
        def __init__(self, params, lr, weight_decay, adamw_mode):
            made.update(lr=lr, weight_decay=weight_decay, adamw_mode=adamw_mode)
            super().__init__(params, lr=lr, weight_decay=weight_decay)

    monkeypatch.setattr(ds_adam, "DeepSpeedCPUAdam", CPUAdam)
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert type(make_optimizer(params, 1e-3, 0.1, offload=True)) is CPUAdam
    assert made == {"lr": 1e-3, "weight_decay": 0.1, "adamw_mode": True}
    assert type(make_optimizer(params, 1e-3, 0.1, offload=False)) is torch.optim.AdamW


ZERO3_LOAD = """
import os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
import deepspeed, torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
deepspeed.init_distributed(dist_backend="gloo")
from training.module import SFTModule
path = sys.argv[1]
module = SFTModule(path, OmegaConf.create({"method": "full"}), zero_stage=3)
config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}
module._trainer = type("T", (), {"strategy": type("S", (), {"config": config})()})()
with deepspeed.zero.Init(config_dict_or_path=config):  # what Lightning wraps configure_model in
    module.configure_model()
params = dict(module.model.named_parameters())
assert all(p.numel() == 0 for p in params.values()), "parameters are partitioned"
saved = load_file(os.path.join(path, "model.safetensors"))
with deepspeed.zero.GatheredParameters(list(params.values())):
    for name, p in params.items():
        assert torch.equal(p.data, saved[name]), name
print("LOADED", len(params))
"""


def _tiny_llama(path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


@pytest.mark.heavy
@pytest.mark.slow
def test_zero3_loads_the_checkpoint_into_partitioned_parameters(tmp_path):
    """Under ZeRO-3 Lightning calls configure_model inside deepspeed.zero.Init: each parameter
    is created empty on its rank. A plain from_pretrained then fails ("index 2 is out of bounds
    for dimension 0 with size 0", seen on an H100 and here); the student must load shard by
    shard through transformers' DeepSpeed integration, with the checkpoint's weights.
    DeepSpeed's CPU accelerator on gloo runs this without a GPU."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    model = _tiny_llama(tmp_path / "model")
    script = tmp_path / "zero3_load.py"
    script.write_text(ZERO3_LOAD)
    port = str(29500 + os.getpid() % 1000)
    p = subprocess.run(
        [sys.executable, str(script), model, port],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert "LOADED 21" in p.stdout, p.stdout[-2000:] + p.stderr[-4000:]


def test_export_is_collective_and_written_by_rank_zero_only(tmp_path):
    """Every rank calls export_hf: a ZeRO checkpoint is saved by all ranks together (Lightning's
    save ends in a barrier, so a rank-0-only call hangs), then only rank 0 writes hf/ while the
    others wait at a barrier."""
    from training.run import export_hf

    calls = []

    class Strategy:
        def barrier(self, name=None):
            calls.append(("barrier", name))

    class Trainer:
        is_global_zero = False
        strategy = Strategy()

        def save_checkpoint(self, path):
            calls.append(("save", path.name))

    export_hf(Trainer(), object(), object(), tmp_path / "hf", stage=3)
    assert calls == [("save", "final_zero"), ("barrier", "export_hf")]
    assert not (tmp_path / "hf").exists()


@pytest.mark.heavy
@pytest.mark.slow
def test_two_process_ddp_through_the_train_stage(tmp_path, bundled_model_dir):
    """`train.devices=2` on the CPU: Lightning re-runs run.py as rank 1 (gloo). Rank 1 waits for
    rank 0's records, trains with it and stops; rank 0 alone exports, reports and writes
    summary.json (before, rank 1 re-ran every stage, reported and overwrote it)."""
    from tests.conftest import run_cli

    data = tmp_path / "sft.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"Say {i} in words.", "output": f"It is {i}, in words."})
            + "\n"
            for i in range(8)
        )
    )
    run = tmp_path / "run"
    proc = run_cli(
        [
            "stages=[train,report]",
            "data=file",
            f"data.path={data}",
            "train=cpu_tiny",
            "train.strategy=ddp",
            "train.devices=2",
            "train.max_steps=1",
            "train.micro_batch_size=2",
            "train.effective_batch_size=4",
            "train.cutoff_len=64",
            "engine=hf",
            "logger=none",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            f"hydra.run.dir={run}",
        ]
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["train/steps"] == 1
    assert summary["train/strategy"] == "ddp" and summary["status"] == "ok"
    logs = {p.name: p.read_text() for p in run.glob("*.log")}
    rank1 = logs.pop("train_ddp_process_1.log")  # Lightning names the child's Hydra job
    assert "rank 1: waiting for rank 0" in rank1 and "GLOBAL_RANK: 1, MEMBER: 2/2" in rank1
    assert "exported" not in rank1 and "report" not in rank1
    leader = logs["run.log"]
    assert leader.count("train: exported") == 1
    assert json.loads((run / ".ranks" / "leader.json").read_text())["state"] == "done"
    assert (run / "train" / "hf" / "config.json").is_file() and (run / "report.md").is_file()
