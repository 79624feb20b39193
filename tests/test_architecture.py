"""The package order and the start-up checks.

Packages form a DAG: {core, sandbox} <- engines <- {evolvers, metrics, training, evaluation} <-
reporting <- pipeline <- run.py. Every import of every module (function-level ones included) is
read from the source and checked against that order; siblings of one layer do not import each
other; and no two files import each other, directly or through others (no file-level cycle, so
no import has to be moved into a function to work).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import ConfigError, ModelUnavailableError
from pipeline.runner import check_config
from tests.conftest import ROOT, compose_cfg

LAYERS = {
    "core": 0,
    "sandbox": 0,
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
    ("engines/vllm_server.py", "open"),  # the server's own log
    ("evaluation/tasks.py", "write_text"),
}
# Folders whose every file may `open` for writing: the sandbox package (cgroup control files,
# the worker's pipes), which writes no output of a run.
PLAIN_OPEN_DIRS = ("sandbox/",)


def _plain_write_allowed(rel: str, call: str) -> bool:
    return (rel, call) in PLAIN_WRITES or (call == "open" and rel.startswith(PLAIN_OPEN_DIRS))


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
            if not _plain_write_allowed(rel, call):
                bad.append(f"{rel}:{line}: {call}")
    assert not bad, "\n".join(bad)


def test_the_order_check_finds_a_wrong_edge(tmp_path):
    """The checker itself: an upward import is seen (also inside a function)."""
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from pipeline.runner import Run\n")
    assert _imports(src) == [(1, "os"), (4, "pipeline")]


# -- file-level import cycles ---------------------------------------------------------------------
def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _project_modules(root: Path, packages: list[str]) -> dict[str, Path]:
    """{dotted module name: file} of run.py and every module of the project's packages."""
    mods = {"run": root / "run.py"} if (root / "run.py").is_file() else {}
    for pkg in packages:
        if (root / pkg).is_dir():
            mods.update((_module_name(root, p), p) for p in sorted((root / pkg).rglob("*.py")))
    return mods


def _targets(node: ast.AST) -> Iterator[str]:
    """The dotted names an import statement may load: `from a.b import c` may be module a.b.c."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        for a in node.names:
            yield f"{node.module}.{a.name}"


def import_graph(root: Path, packages: list[str]) -> dict[str, dict[str, int]]:
    """{module: {module it imports: line}} over the project's own modules, every import read
    (function-level ones too: hiding an import in a function does not remove the cycle). An
    import names the longest project module it reaches (`from core.config import x` is
    core.config, `from core import schemas` is core.schemas)."""
    mods = _project_modules(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(node):
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every group of modules that import each other (a strongly connected component of more
    than one module), each as one cycle through it: [a, b, ..., a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(graph, g) for g in sorted(groups)]


def _cycle_through(graph: dict[str, dict[str, int]], group: list[str]) -> list[str]:
    """A shortest cycle from the group's first module back to it, inside the group."""
    members, start = set(group), group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return [*paths[v], start]
                if w in members and w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return [*group, start]  # not reached: a component always has a cycle


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join([*steps, cycle[-1]])


def test_no_file_imports_itself_through_others():
    """No file-level import cycle: each one named with the line of every import on it."""
    graph = import_graph(ROOT, [p for p in LAYERS if p != "run"])
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(graph, c) for c in cycles)


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    """The checker itself: a -> b -> c -> a, the last import inside a function, and a module
    that is only imported (no cycle) are told apart."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\nimport pkg.d\n")
    (pkg / "b.py").write_text("from pkg import c\n")
    (pkg / "c.py").write_text("def f():\n    from pkg.a import y\n")
    (pkg / "d.py").write_text("import os\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.a"] == {"pkg.b": 1, "pkg.d": 2} and graph["pkg.d"] == {}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert _describe(graph, ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]) == (
        "pkg.a (line 1) -> pkg.b (line 1) -> pkg.c (line 2) -> pkg.a"
    )


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
        check_config(compose_cfg([override]))
        return
    with pytest.raises(ConfigError) as exc:
        check_config(compose_cfg([override]))
    assert message in str(exc.value), str(exc.value)


def test_the_defaults_and_every_preset_pass_the_checks():
    from core.config import options

    check_config(compose_cfg())
    for name in options("experiment"):
        check_config(compose_cfg([f"experiment={name}"]))


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
