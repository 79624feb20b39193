"""`dtype: auto` / `precision: auto`: every branch of the resolver with injected hardware facts,
explicit values winning, and the real model running in the resolved format."""

import logging

import pytest
import torch

from core.errors import ConfigError
from engines.precision import (
    Hardware,
    detect_hardware,
    hardware,
    hardware_summary,
    read_cpu,
    resolve_dtype,
    resolve_precision,
    torch_dtype,
)
from reporting.summary import hardware_facts
from tests.conftest import compose_cfg

H100 = Hardware(cuda=True, cuda_bf16=True, cuda_name="NVIDIA H100")
V100 = Hardware(cuda=True, cuda_bf16=False, cuda_name="Tesla V100")
XEON_BF16 = Hardware(cpu_model="Xeon", cpu_flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
XEON_AMX = Hardware(cpu_model="Xeon", cpu_flags=frozenset({"avx2", "amx_bf16", "amx_tile"}))
EPYC_AVX2 = Hardware(cpu_model="AMD EPYC", cpu_flags=frozenset({"avx2", "fma"}))
APPLE = Hardware(cpu_model="arm", cpu_flags=frozenset())


@pytest.mark.parametrize(
    "hw, dtype, precision",
    [
        (H100, "bfloat16", "bf16-mixed"),
        (V100, "float16", "16-mixed"),
        (XEON_BF16, "bfloat16", "bf16-mixed"),
        (XEON_AMX, "bfloat16", "bf16-mixed"),
        (EPYC_AVX2, "float32", "32-true"),
        (APPLE, "float32", "32-true"),
    ],
)
def test_auto_follows_the_hardware(hw, dtype, precision):
    assert resolve_dtype("auto", hw) == dtype
    assert resolve_dtype(None, hw) == dtype  # an engine's `dtype: null` falls back to auto
    assert resolve_precision("auto", hw) == precision


def test_onednn_isa_cap_turns_native_bf16_off():
    capped = Hardware(cpu_flags=XEON_BF16.cpu_flags, onednn_isa="AVX2")
    assert not capped.cpu_bf16 and "ONEDNN_MAX_CPU_ISA=AVX2" in capped.why_no_cpu_bf16()
    assert resolve_dtype("auto", capped) == "float32"
    assert resolve_precision("auto", capped) == "32-true"
    assert Hardware(cpu_flags=XEON_BF16.cpu_flags, onednn_isa="avx512_core_bf16").cpu_bf16
    assert "avx512_bf16" in EPYC_AVX2.why_no_cpu_bf16()  # names the missing flag
    assert XEON_BF16.why_no_cpu_bf16() is None


def test_explicit_values_win_and_bad_ones_list_the_valid():
    assert resolve_dtype("float32", H100) == "float32"
    assert resolve_dtype("bf16", EPYC_AVX2) == "bfloat16"  # asked for, so given, even if slow
    assert resolve_dtype("FP16", XEON_BF16) == "float16"
    assert resolve_precision("32-true", H100) == "32-true"
    assert resolve_precision("bf16-mixed", EPYC_AVX2) == "bf16-mixed"
    with pytest.raises(ConfigError, match="unknown metrics.ifd.dtype 'int8'.*auto.*bfloat16"):
        resolve_dtype("int8", H100, what="metrics.ifd.dtype")
    with pytest.raises(ConfigError, match="unknown train.precision 'bf17'.*32-true.*auto"):
        resolve_precision("bf17", H100)
    assert torch_dtype("float32") is torch.float32 and torch_dtype("bf16") is torch.bfloat16


def test_read_cpu_parses_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    model, flags = read_cpu(x86)
    assert model == "Intel(R) Xeon(R)" and {"avx2", "avx512_bf16"} <= flags
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert "asimd" in read_cpu(arm)[1]
    assert read_cpu(tmp_path / "missing")[1] == frozenset()


def test_detection_reads_the_isa_cap(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    hw = detect_hardware()
    assert hw.onednn_isa == "AVX2" and not hw.cpu_bf16
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert detect_hardware().onednn_isa is None


def test_decision_is_logged_once_per_process(caplog):
    hardware.cache_clear()
    with caplog.at_level(logging.INFO, logger="engines.precision"):
        first, second = hardware(), hardware()
    assert first is second
    lines = [r.getMessage() for r in caplog.records if r.name == "engines.precision"]
    assert len(lines) == 1 and "dtype auto ->" in lines[0] and "train precision auto" in lines[0]


def test_summary_says_what_ran():
    cfg = compose_cfg()
    s = hardware_facts(cfg, EPYC_AVX2)
    assert s["hardware/engine_dtype"] == "float32" and s["hardware/train_precision"] == "32-true"
    assert s["hardware/cpu_bf16"] is False and s["hardware/ifd_dtype"] == "float32"
    s = hardware_summary(compose_cfg(["engine.dtype=float16", "train.precision=16-mixed"]), H100)
    assert s["hardware/engine_dtype"] == "float16" and s["hardware/train_precision"] == "16-mixed"
    assert hardware_summary(cfg, XEON_BF16)["hardware/engine_dtype"] == "bfloat16"


@pytest.mark.slow
def test_ifd_scorer_and_training_run_in_the_resolved_format(tmp_path, bundled_model_dir):
    """Read back from the loaded model and from the training forward pass, not from config."""
    from core.records import make_record
    from metrics.ifd import IFDScorer
    from tests.conftest import MODELS_DIR
    from training.run import train_sft

    want = resolve_dtype("auto")
    scorer = IFDScorer(bundled_model_dir, dtype=compose_cfg().metrics.ifd.dtype)
    assert scorer.model.dtype == torch_dtype(want)
    scorer.close()

    cfg = compose_cfg(["train=cpu_tiny", "train.max_steps=1", "train.micro_batch_size=2"]).train
    records = [make_record(f"r{i}", f"Say {i}.", "", f"{i}.") for i in range(2)]
    s = train_sft(cfg, compose_cfg().model, records, tmp_path / "train", MODELS_DIR, seed=0)
    assert s["train/precision"] == resolve_precision("auto")
    # bf16-mixed autocasts the matmuls to bf16; 32-true computes in fp32.
    assert s["train/compute_dtype"] == ("bfloat16" if want == "bfloat16" else "float32")


def test_machine_report_names_the_path_taken():
    from engines.__main__ import report

    text = report()
    for field in ("cpu:", "native cpu bf16:", "dtype auto ->", "torch:", "vllm:", "engine auto ->"):
        assert field in text


def test_cuda_detection_counts_only_native_bf16(monkeypatch):
    """Pre-Ampere GPUs emulate bf16: `auto` must give them fp16. Read through NVML where it is
    installed (no CUDA context in the parent), else through torch without emulation."""
    import sys
    import types

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return including_emulation  # what torch says for a V100: only with emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla V100")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    hw = detect_hardware()
    assert hw.cuda and not hw.cuda_bf16 and asked == {"including_emulation": False}
    assert resolve_dtype("auto", hw) == "float16" and resolve_precision("auto", hw) == "16-mixed"

    def fake_nvml(major):
        m = types.ModuleType("pynvml")
        m.nvmlInit = lambda: None
        m.nvmlDeviceGetHandleByIndex = lambda i: i
        m.nvmlDeviceGetCudaComputeCapability = lambda h: (major, 0)
        m.nvmlDeviceGetName = lambda h: b"GPU"
        return m

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(7))
    assert not detect_hardware().cuda_bf16
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(9))
    hw = detect_hardware()
    assert hw.cuda_bf16 and hw.cuda_name == "GPU" and resolve_dtype("auto", hw) == "bfloat16"


def test_lightning_short_precisions_are_accepted():
    assert resolve_precision("bf16", EPYC_AVX2) == "bf16-mixed"
    assert resolve_precision(32, H100) == "32-true" and resolve_precision("16", H100) == "16-mixed"
    assert resolve_precision("transformer-engine", H100) == "transformer-engine"


def test_summary_covers_only_what_the_job_runs():
    s = hardware_facts(compose_cfg(["stages=[evolve,respond]"]), EPYC_AVX2)
    assert "hardware/train_precision" not in s and "hardware/ifd_dtype" not in s
    s = hardware_facts(compose_cfg(["metrics.ifd.enabled=false"]), EPYC_AVX2)
    assert "hardware/ifd_dtype" not in s and s["hardware/train_precision"] == "32-true"
    s = hardware_facts(compose_cfg(["metrics.reward.enabled=true"]), XEON_BF16)
    assert s["hardware/reward_dtype"] == "bfloat16" == s["hardware/ifd_dtype"]
    assert "hardware/engine_dtype" not in hardware_summary(compose_cfg(["engine=openai"]), H100)


def test_a_bad_precision_fails_before_any_work(tmp_path):
    import json

    from pipeline.runner import run_job

    cfg = compose_cfg([f"cache_dir={tmp_path}/cache", "logger=none", "train.precision=bf17"])
    assert run_job(cfg, tmp_path / "run") is None
    err = json.loads((tmp_path / "run" / "summary.json").read_text())["error"]
    assert "train.precision 'bf17'" in err and "32-true" in err
    assert not (tmp_path / "run" / "seeds.jsonl").exists()  # nothing ran
