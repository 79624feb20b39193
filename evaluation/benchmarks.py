"""The benchmark registry: a benchmark is data — one YAML file — and its scorer a function only
where lm-evaluation-harness's own does not serve.

A benchmark file (`evaluation/benchmarks/<name>.yaml`, or any folder in `eval.benchmark_dirs`):

    name: gsm8k
    order: 2                      # position in tables and plots
    lm_eval: gsm8k/gsm8k.yaml     # lm-eval's task YAML it starts from (under lm_eval/tasks), or
    task: {...}                   # an lm-eval task config of its own (merged over `lm_eval`'s)
    resolve: false                # resolve lm-eval's `!function` tags when loading its YAML
    builder: null                 # "module:function" (bench, data_dir, fewshot) -> [task configs];
                                  # `task` is merged over each config it builds
    local: {test: test.jsonl}     # split -> file under <eval.data_dir>/<name>/ (hub schema)
    local_optional: {train: train.jsonl}   # used when present (always when fewshot > 0)
    default_fewshot: 0            # the builder's default when eval.num_fewshot does not say
    headlines:                    # summary key <name>/<key> -> metric key in lm-eval's results
      strict: exact_match,strict-match
    lower_is_better: []           # headline keys where smaller is better
    variant_of: null              # a protocol variant of another benchmark: its name (and data
    variant: null                 # folder), and the `eval.variant` that selects it (opencompass)

`eval.tasks` names benchmarks; `eval.variant` (default `lm_eval`) swaps each for its variant of
that name where one exists, so a domain's task list (conf/domain) runs under either protocol. A
variant reports under its own name (`gsm8k_oc/accuracy`): numbers from different prompts and
answer extraction never share a summary key. summary.json, the comparison and the plots read the
headlines from here.

`BENCHMARKS` holds the built-in benchmarks only. `registry_for(eval.benchmark_dirs)` is a job's
registry: the built-ins plus its out-of-tree folders, a new object each call, so one job's
folders never change what another job, or a later report, sees.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.config import typed_section
from core.errors import ConfigError, unknown_option
from core.registry import load_impl

BENCHMARK_DIR = Path(__file__).parent / "benchmarks"


# -- lm-eval's task files and local data: what a benchmark's task configs start from ------------
# (Here, not in evaluation.tasks: the builders and scorers there import this module, never the
# other way round.)
def lm_eval_task_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def lm_eval_yaml(rel: str, resolve: bool) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(lm_eval_task_dir() / rel, resolve_func=resolve)


# -- local data files ----------------------------------------------------------------------------
def local_files(task: str, data_dir: Path, splits: dict[str, str]) -> dict[str, Any]:
    """`dataset_path: json` over `<data_dir>/<task>/<split>.jsonl` files."""
    files = {}
    for split, fname in splits.items():
        path = data_dir / task / fname
        if not path.is_file():
            raise ConfigError(
                f"eval: {path} not found (eval.data_dir holds <task>/{fname} in the hub "
                f"dataset's schema; eval.data_dir=null uses the hub)"
            )
        check_jsonl(path)
        files[split] = str(path)
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}}


def check_jsonl(path: Path) -> None:
    """A malformed line is an error naming file:line before lm-eval sees the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    if not isinstance(json.loads(line), dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    raise ConfigError(f"{path}:{n}: {e}") from None


@dataclass
class Benchmark:
    name: str = "???"
    order: int = 100
    lm_eval: str | None = None
    task: dict[str, Any] = field(default_factory=dict)
    resolve: bool = False
    builder: str | None = None
    local: dict[str, str] = field(default_factory=dict)
    local_optional: dict[str, str] = field(default_factory=dict)
    default_fewshot: int = 0
    headlines: dict[str, str] = field(default_factory=dict)
    lower_is_better: list[str] = field(default_factory=list)
    variant_of: str | None = None
    variant: str | None = None
    source: str = ""  # the file it was read from

    @property
    def data_name(self) -> str:
        """The folder under `eval.data_dir` its files are in: a variant reads its base's data."""
        return self.variant_of or self.name

    def headline_keys(self) -> list[str]:
        return [f"{self.name}/{k}" for k in self.headlines]

    def higher_is_better(self, key: str) -> bool:
        return key.split("/", 1)[1] not in self.lower_is_better

    def task_configs(self, data_dir: Path | None, fewshot: int) -> list[dict[str, Any]]:
        """lm-eval task config dicts for this benchmark (before the run's length settings)."""
        if self.builder:
            build: Callable = load_impl(self.builder, f"benchmark {self.name} builder")
            return [{**cfg, **self.task} for cfg in build(self, data_dir, fewshot)]
        cfg: dict[str, Any] = {}
        if self.lm_eval:
            cfg = lm_eval_yaml(self.lm_eval, self.resolve)
        cfg = {**cfg, **self.task}
        cfg.setdefault("task", self.name)
        if data_dir:
            cfg |= self.local_source(data_dir, fewshot)
        return [cfg]

    def local_source(self, data_dir: Path, fewshot: int) -> dict[str, Any]:
        """`dataset_path: json` over this benchmark's files under `data_dir/<data_name>/`."""
        splits = dict(self.local)
        missing_optional = False
        for split, fname in self.local_optional.items():
            if fewshot or (data_dir / self.data_name / fname).is_file():
                splits[split] = fname
            else:
                missing_optional = True
        out = local_files(self.data_name, data_dir, splits)
        if missing_optional:  # no few-shot source: lm-eval must not look for one
            out |= {"training_split": None, "fewshot_split": None}
        return out


class BenchmarkRegistry:
    """The benchmarks of `folder` (read on first use), plus any added with `add_file` /
    `add_dirs`, which change this registry only: `registry_for` gives a job's own."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._entries: dict[str, Benchmark] | None = None

    def with_dirs(self, folders: list[str] | None) -> BenchmarkRegistry:
        """A new registry: this one's benchmarks plus those of `folders` (a file there replaces
        a benchmark of the same name); this one is left as it is."""
        other = BenchmarkRegistry(self.folder)
        other._entries = dict(self._all())
        other.add_dirs(list(folders or []))
        return other

    def _all(self) -> dict[str, Benchmark]:
        if self._entries is None:
            self._entries = {}
            for path in sorted(self.folder.glob("*.yaml")):
                self.add_file(path)
        return self._entries

    def add_file(self, path: str | Path, replace: bool = False) -> Benchmark:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        bench = typed_section(Benchmark, {**raw, "source": str(path)}, f"benchmark {path}")
        entries = self._all()
        old = entries.get(bench.name)
        if old is not None and not replace and old.source != str(path):
            raise ConfigError(f"benchmark {bench.name!r} is defined twice: {old.source} and {path}")
        entries[bench.name] = bench
        return bench

    def add_dirs(self, folders: list[str]) -> None:
        """Add every `*.yaml` of `folders` to this registry (replacing same-named ones)."""
        for folder in folders or []:
            path = Path(folder).expanduser()
            if not path.is_dir():
                raise ConfigError(f"eval.benchmark_dirs: {folder} is not a folder")
            for f in sorted(path.glob("*.yaml")):
                self.add_file(f, replace=True)

    def remove(self, name: str) -> None:
        self._all().pop(name, None)

    def get(self, name: str) -> Benchmark:
        if name not in self._all():
            raise unknown_option("eval task", name, list(self._all()))
        return self._all()[name]

    def variants(self) -> list[str]:
        """The values `eval.variant` takes: `lm_eval` (the benchmarks as defined) and every
        variant a benchmark file declares."""
        return ["lm_eval", *sorted({b.variant for b in self._all().values() if b.variant})]

    def resolve(self, name: str, variant: str | None) -> Benchmark:
        """The benchmark `eval.tasks` entry `name` runs as under `eval.variant`: its variant of
        that name when it has one, else itself (IFEval has one protocol everywhere)."""
        valid = self.variants()
        if (variant or "lm_eval") not in valid:
            raise unknown_option("eval.variant", str(variant), valid)
        bench = self.get(name)
        if variant in (None, "lm_eval") or bench.variant_of:
            return bench
        for other in self._all().values():
            if other.variant_of == bench.name and other.variant == variant:
                return other
        return bench

    def for_task(self, task: str) -> Benchmark | None:
        """The benchmark an lm-eval task name belongs to: the one it is named after, or whose
        name plus `_` begins it (MATH's `math_algebra`); the longest such name wins, so
        `gsm8k_oc` is not counted as `gsm8k`."""
        owners = [
            b for b in self._all().values() if task == b.name or task.startswith(f"{b.name}_")
        ]
        return max(owners, key=lambda b: len(b.name), default=None)

    def names(self) -> list[str]:
        return [b.name for b in self]

    def __iter__(self) -> Iterator[Benchmark]:
        # A variant sorts just before its base: code that takes the first benchmark whose name
        # begins a task name then finds `gsm8k_oc` for the task gsm8k_oc, not `gsm8k`.
        def key(b: Benchmark) -> tuple:
            return (b.order, b.variant_of or b.name, b.variant_of is None, b.name)

        return iter(sorted(self._all().values(), key=key))

    def __contains__(self, name: str) -> bool:
        return name in self._all()

    def headline_keys(self) -> list[str]:
        return [k for b in self for k in b.headline_keys()]

    def for_headline(self, key: str) -> Benchmark | None:
        name, _, rest = key.partition("/")
        b = self._all().get(name)
        return b if b is not None and rest in b.headlines else None


BENCHMARKS = BenchmarkRegistry(BENCHMARK_DIR)


def registry_for(benchmark_dirs: list[str] | None) -> BenchmarkRegistry:
    """The registry a job with `eval.benchmark_dirs = benchmark_dirs` sees: the built-in
    benchmarks plus every benchmark file in those folders, as a new registry; `BENCHMARKS` is
    never changed. Evaluation uses it for the job's own tasks and headlines; reports rebuild it
    from a job's saved config (its `eval.benchmark_dirs`), so out-of-tree benchmarks keep their
    headline columns in any process. A folder that is not there is a ConfigError."""
    return BENCHMARKS.with_dirs(list(benchmark_dirs or []))
