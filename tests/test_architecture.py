"""The package order and the start-up checks.

Packages form a DAG: core <- engines <- {evolvers, metrics, training, evaluation} <- reporting <-
pipeline <- run.py. Every import of every module (function-level ones included) is read from the
source and checked against that order; siblings of one layer do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.errors import ConfigError, ModelUnavailableError
from pipeline.runner import _check_config
from tests.conftest import ROOT, compose_cfg

LAYERS = {
    "core": 0,
    "engines": 1,
    "evolvers": 2,
    "metrics": 2,
    "training": 2,
    "evaluation": 2,
    "reporting": 3,
    "pipeline": 4,
    "run": 5,
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def _modules() -> list[tuple[str, Path]]:
    mods = [("run", ROOT / "run.py")]
    for pkg in LAYERS:
        if pkg != "run":
            mods += [(pkg, p) for p in sorted((ROOT / pkg).rglob("*.py"))]
    return mods


def test_packages_import_only_downwards():
    bad = []
    for pkg, path in _modules():
        for line, target in _imports(path):
            if target in LAYERS and target != pkg and LAYERS[target] >= LAYERS[pkg]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {pkg} imports {target}")
    assert not bad, "\n".join(bad)


# Writes that may stay plain: a lock file (its content is never read), a server's log, nltk's
# tmp-then-rename, and the sandbox's cgroup control files (kernel interfaces, written in place).
PLAIN_WRITES = {
    ("core/cache.py", "open"),
    ("core/sandbox.py", "open"),
    ("engines/vllm_server.py", "open"),  # the server's own log
    ("evaluation/tasks.py", "write_text"),
}


def _plain_writes(path: Path) -> list[tuple[int, str]]:
    """Calls that write a file in place: `.write_text(...)`, `.write_bytes(...)`,
    `open(..., "w"/"a")` / `.open("w")`, `.savefig(path)`, `.to_csv(path)`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name in ("write_text", "write_bytes", "to_csv"):
            out.append((node.lineno, name))
        elif name == "savefig" and node.args and not _is_buffer(node.args[0]):
            out.append((node.lineno, name))
        elif name == "open":
            modes = [a.value for a in node.args if isinstance(a, ast.Constant)]
            modes += [k.value.value for k in node.keywords if k.arg == "mode"]
            if any(isinstance(m, str) and m[:1] in "wa" for m in modes):
                out.append((node.lineno, name))
    return out


def _is_buffer(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id in ("buf", "buffer")


def test_outputs_are_written_atomically():
    """A run's files are written whole or not at all (core.records' atomic writers): no module
    writes a file in place (issue: samples, artifacts, comparison and plots were)."""
    bad = []
    for _, path in _modules():
        rel = str(path.relative_to(ROOT))
        if rel == "core/records.py":  # the atomic writers themselves
            continue
        for line, call in _plain_writes(path):
            if (rel, call) not in PLAIN_WRITES:
                bad.append(f"{rel}:{line}: {call}")
    assert not bad, "\n".join(bad)


def test_the_order_check_finds_a_wrong_edge(tmp_path):
    """The checker itself: an upward import is seen (also inside a function)."""
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from pipeline.runner import Run\n")
    assert _imports(src) == [(1, "os"), (4, "pipeline")]


# -- start-up validation: a bad value fails before any model loads, naming its key ---------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("filter.keep_ratio=2", "filter.keep_ratio: must be in (0, 1], got 2.0"),
        ("+metrics.ifd.forme=loss", "unknown key metrics.ifd.forme; valid: enabled, impl, model"),
        ("metrics.ifd.form=logits", "metrics.ifd.form: 'logits' is not one of loss, ppl"),
        ("+metrics.nope.enabled=true", "unknown metric 'nope'; valid: confidence, diversity"),
        (
            "+scenario.methodz=[deepen]",
            "unknown key scenario.methodz; valid: name, impl, keep_failed, methods",
        ),
        ("scenario.use_breadth=maybe", "scenario.use_breadth: Value 'maybe'"),
        ("generation.evolve.top_p=0", "generation.evolve.top_p: must be in (0, 1]"),
        ("engine.kind=tpu", "engine.kind: 'tpu' is not one of auto, vllm, hf, openai"),
        ("+train.lrr=1", "unknown key train.lrr"),
        ("+data.feilds=1", "unknown key data.feilds"),
        ("+roundz=3", "unknown top-level config key 'roundz'"),
        ("+arms.missin=fail", "unknown key arms.missin"),
        ("arms.missing=skip", "arms.missing: 'skip' is not one of run, fail"),
        ("train.student.dtype=float8", "unknown train.student.dtype 'float8'; valid: auto"),
        ("+model@metrics.ifd.model=qwen2.5_7b", None),
        ("metrics.judge.model=qwen9", "unknown model for metrics.judge.model 'qwen9'"),
        ("filter.name=best", "unknown filter 'best'; valid: ic_ifd, ifd, instruction_loss"),
        ("+rund=2", "unknown top-level config key 'rund'"),
    ],
)
def test_bad_values_fail_at_start_up_with_their_key(override, message):
    if message is None:  # a good value among the bad ones: the check is not just "any override"
        _check_config(compose_cfg([override]))
        return
    with pytest.raises(ConfigError) as exc:
        _check_config(compose_cfg([override]))
    assert message in str(exc.value), str(exc.value)


def test_the_defaults_and_every_preset_pass_the_checks():
    from core.config import options

    _check_config(compose_cfg())
    for name in options("experiment"):
        _check_config(compose_cfg([f"experiment={name}"]))


def test_role_models_take_overrides_and_name_their_key_when_weights_are_missing(tmp_path):
    from core.config import role_model
    from engines.models import resolve_model_path

    # Selected through Hydra: the role's own fields are overridable.
    cfg = compose_cfg(["model@train.student=qwen2.5_0.5b", f"train.student.path={tmp_path}"])
    student = role_model(cfg, cfg.train.student, "train.student")
    assert student.name == "qwen2.5_0.5b" and student.path == str(tmp_path)
    with pytest.raises(ModelUnavailableError, match=r"train\.student\.path="):
        resolve_model_path(student, tmp_path)  # no config.json in that folder
    # Named by a string: the error says how to select it and point it at local weights.
    cfg = compose_cfg(["metrics.ifd.model=qwen2.5_7b"])
    scorer = role_model(cfg, cfg.metrics.ifd.model, "metrics.ifd.model")
    assert scorer.select == "+model@metrics.ifd.model=qwen2.5_7b"
    cfg = compose_cfg(["+model@metrics.ifd.model=qwen2.5_7b", "metrics.ifd.model.dtype=float32"])
    assert role_model(cfg, cfg.metrics.ifd.model, "metrics.ifd.model").dtype == "float32"
    # null: the run's own model, under the key `model`.
    assert role_model(cfg, None, "respond.model").name == cfg.model.name
