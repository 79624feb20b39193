"""Typed schemas of the config groups (`conf/<group>/*.yaml`), checked at start-up.

`core.config.validate` merges each composed section onto its dataclass: a key that is not in the
schema (a typo in a YAML file or an override), a value of the wrong type, or a value out of range
fails before any model loads, naming the key. Scenarios and metrics declare their own schema
(`Scenario.Config`, `Metric.Config`) beside their code; the sections below are the framework's.

A role model (`train.student`, `respond.model`, `metrics.<m>.model`, `eval.model`,
`eval.pairwise.judge`, `eval.pairwise.against`) is `null` (the run's own model), a conf/model name,
or a whole model mapping selected through Hydra: `model@train.student=qwen2.5_0.5b` then
`train.student.path=/ckpt` reaches that role's weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from core.errors import ConfigError


def typed_section(schema: type, node: Any, key: str) -> Any:
    """`node` checked against the dataclass `schema` and returned as an instance of it; an unknown
    key, a wrong type or a value out of range is a ConfigError naming `key.<field>`."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node or {}))
    except ConfigKeyError as e:
        valid = [f.name for f in dataclasses.fields(schema)]
        raise ConfigError(f"unknown key {key}.{e.full_key}; valid: {', '.join(valid)}") from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}.{e.full_key}: {msg}") from None
    except ConfigError as e:
        raise ConfigError(f"{key}.{e}") from None


def check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def one_of(value: Any, key: str, valid: tuple) -> None:
    check(value in valid, key, f"{value!r} is not one of {', '.join(map(str, valid))}")


@dataclass
class GGUFSource:
    package: str = ""
    file: str = ""
    # The file ships in chunks that the package's assemble() joins (engines.models).
    assemble: bool = False


@dataclass
class ModelConfig:
    name: str = "???"
    hf_id: str | None = None
    path: str | None = None
    gguf: GGUFSource | None = None
    revision: str | None = None
    size_b: float | None = None
    family: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    chat_template: str | None = None
    # This model's own engine settings over the job's `engine` (e.g. a judge behind an
    # OpenAI-compatible API: {kind: openai, base_url: ..., served_model: gpt-4-0613}).
    engine: dict[str, Any] | None = None
    # Set by the framework when a role resolves: the config key that picks this model, and the
    # Hydra selection that makes its fields overridable when it was named by a string.
    role: str | None = None
    select: str | None = None

    def __post_init__(self) -> None:
        check(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "in (0, 1]")


@dataclass
class EngineConfig:
    kind: str = "auto"
    dtype: str | None = None
    chunk_size: Any = "auto"  # auto (engines.pool.chunk_size_for) | prompts per engine call
    replicas: Any = "auto"  # vllm: data-parallel replicas; auto = every visible GPU (1 on CPU)
    batch_size: int = 16
    cpu_kv_cache_gib: float | None = 1
    cpu_memory_utilization: float = 0.3
    enforce_eager: bool | None = None
    distributed_executor_backend: str | None = None
    seed: int = 0
    # openai
    base_url: str | None = None
    served_model: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = 8
    timeout_s: float = 600
    retries: int = 6  # per request, on 429 / 5xx / timeouts / malformed answers
    backoff_s: float = 1.0  # the first wait, doubled per retry (the server's Retry-After first)
    max_backoff_s: float = 60.0
    requests_per_minute: float | None = None  # null: no cap
    tokens_per_minute: float | None = None  # prompt (about 4 characters a token) + max_tokens

    def __post_init__(self) -> None:
        one_of(self.kind, "kind", ("auto", "vllm", "hf", "openai"))
        check(
            self.chunk_size == "auto"
            or (isinstance(self.chunk_size, int) and self.chunk_size >= 1),
            "chunk_size",
            "auto or a number >= 1",
        )
        check(
            self.replicas == "auto" or (isinstance(self.replicas, int) and self.replicas >= 1),
            "replicas",
            "auto or a number >= 1",
        )


@dataclass
class DecodingConfig:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 2048

    def __post_init__(self) -> None:
        check(self.temperature >= 0, "temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(self.max_tokens >= 1, "max_tokens", "must be >= 1")


@dataclass
class DataConfig:
    name: str = "???"
    path: str | None = None
    hub_id: str | None = None
    hub_config: str | None = None
    split: str = "train"
    fields: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    shuffle: bool = False


@dataclass
class FilterConfig:
    name: str = "???"
    keep_ratio: float = 1.0
    drop_ifd_above_1: bool = False
    round: int | None = None
    # Equal-size arms (SPEC §9): null | N (a seeded sample of exactly N) | "smallest" (the smallest
    # arm's size among the sweep's values of `equal_across`; pipeline.arms).
    equal_size: int | str | None = None
    equal_across: str = "model"

    def __post_init__(self) -> None:
        check(
            self.equal_size is None
            or self.equal_size == "smallest"
            or (isinstance(self.equal_size, int) and self.equal_size >= 1),
            "equal_size",
            f"must be null, a count >= 1 or smallest, got {self.equal_size!r}",
        )
        check(
            0 < self.keep_ratio <= 1,
            "keep_ratio",
            f"must be in (0, 1], got {self.keep_ratio}",
        )
        check(self.round is None or self.round >= 1, "round", "must be >= 1 or null")


@dataclass
class RespondConfig:
    model: Any = None


@dataclass
class DomainConfig:
    """A paper domain (conf/domain/): its name and whether Evol-Instruct's breadth method joins
    the rotation there (the paper's A.1: Alpaca yes, GSM8K and Code Alpaca no)."""

    name: str = "???"
    evol_breadth: bool = False


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Any = "all-linear"


# Lightning's strategies the train stage builds (training.run.make_strategy) and the learning-rate
# schedules it knows (training.module): checked at start-up, not when training starts.
STRATEGIES = ("auto", "ddp", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload")
SCHEDULERS = ("cosine", "linear")


@dataclass
class TrainConfig:
    name: str = "???"
    student: Any = None
    method: str = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    lr: float = 2.0e-5
    epochs: int = 3
    max_steps: int | None = None
    micro_batch_size: int = 1
    effective_batch_size: int = 1
    cutoff_len: int = 2048
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"
    strategy: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    # A rank other than 0 stops when rank 0 has not beaten for this long (training.ranks).
    follower_timeout_min: float = 30.0
    gradient_checkpointing: bool = False
    save_every_n_steps: int = 0
    save_every_n_minutes: float = 0.0  # > 0: checkpoint by wall clock instead of by steps
    export_dtype: str = "auto"  # auto: the dtype training computed in (training.run.export_dtype)
    resume: bool = True
    keep_checkpoints: bool = False
    chat_template: str | None = None

    def __post_init__(self) -> None:
        one_of(self.method, "method", ("full", "lora"))
        one_of(self.strategy, "strategy", STRATEGIES)
        one_of(self.scheduler, "scheduler", SCHEDULERS)
        one_of(self.export_dtype, "export_dtype", ("auto", "float32", "bfloat16", "float16"))
        check(self.lr > 0, "lr", "must be > 0")
        check(self.follower_timeout_min > 0, "follower_timeout_min", "must be > 0")
        check(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        check(
            self.effective_batch_size >= self.micro_batch_size,
            "effective_batch_size",
            "must be >= train.micro_batch_size",
        )


@dataclass
class PairwiseConfig:
    enabled: bool = False
    instructions: str = "bundled"
    against: Any = None
    # Another arm of this sweep, by the override(s) that tell it apart (e.g. "filter=ifd"): its
    # trained model is `against` (pipeline.arms). The arm itself skips the judge.
    against_arm: str | None = None
    judge: Any = None
    # The prompt each model answers with: null, the response prompt (SPEC §2, as the paper's
    # win rates); a path: your own template with {instruction} and {input_line}.
    answer_template: str | None = None
    limit: int | None = None
    max_tokens: int = 512
    # both: each pair judged twice, positions swapped (position bias cancelled); one: once, this
    # job's answer first, as the paper's code (Evol_Instruct/judge.py).
    orders: str = "both"

    def __post_init__(self) -> None:
        one_of(self.orders, "orders", ("both", "one"))


@dataclass
class EvalConfig:
    name: str = "???"
    tasks: list[str] = field(default_factory=list)
    backend: str = "engine"
    model: Any = None
    data_dir: str | None = None
    limit: int | None = None
    num_fewshot: dict[str, Any] = field(default_factory=dict)
    max_gen_toks: int | None = None
    variant: str = "lm_eval"  # lm_eval | opencompass: which protocol each benchmark runs under
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = True
    code_timeout: float = 10
    benchmark_dirs: list[str] = field(default_factory=list)
    pairwise: PairwiseConfig = field(default_factory=PairwiseConfig)

    def __post_init__(self) -> None:
        one_of(self.backend, "backend", ("engine", "hf"))
        check(self.limit is None or self.limit >= 1, "limit", "must be >= 1 or null")


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "evolvers-study"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    table_rows: int = 100

    def __post_init__(self) -> None:
        one_of(self.name, "name", ("none", "wandb"))


@dataclass
class CalibrationConfig:
    """Temperature calibration before evolving (pipeline.calibration): the evolver's sampling
    temperature is set so its mean top-1 probability over the first `positions` tokens of round
    1's prompts (the first `dev_size` seeds) matches `target`, or `target_model`'s at its own
    generation.evolve temperature (the paper's overconfidence, matched)."""

    enabled: bool = False
    target: float | None = None
    target_model: Any = None  # a conf/model name or mapping (a role)
    positions: int = 5
    dev_size: int = 16
    top_logprobs: int = 20  # the tail beyond these is approximated (pipeline.calibration)
    min_temperature: float = 0.05
    max_temperature: float = 3.0

    def __post_init__(self) -> None:
        check(self.target is None or 0 < self.target < 1, "target", "must be in (0, 1) or null")
        check(
            not self.enabled or (self.target is None) != (self.target_model is None),
            "target",
            "set exactly one of calibration.target and calibration.target_model",
        )
        check(self.positions >= 1, "positions", "must be >= 1")
        check(self.dev_size >= 1, "dev_size", "must be >= 1")
        check(self.top_logprobs >= 2, "top_logprobs", "must be >= 2")
        check(
            0 < self.min_temperature < self.max_temperature,
            "max_temperature",
            "needs 0 < min_temperature < max_temperature",
        )


@dataclass
class ArmsConfig:
    """Another arm's result inside a job (pipeline.arms): `missing: run` computes what the cache
    lacks here; `fail` only reads the cache and names the arm to run first (for sweeps split over
    launchers of different sizes, where this job's resources do not fit the other arm)."""

    missing: str = "run"
    # An artifact name: run this job only through the stages that produce it (what other arms
    # read, e.g. `ranked`), as the sized SLURM launcher's first pass does; null: the whole job.
    produce: str | None = None

    def __post_init__(self) -> None:
        one_of(self.missing, "missing", ("run", "fail"))


@dataclass
class CompareConfig:
    """The end of a multirun (reporting.compare): with `pair`, two arms (each `key=value ...`
    naming its jobs), the verdict of A vs B."""

    pair: list[str] | None = None

    def __post_init__(self) -> None:
        check(
            self.pair is None or len(self.pair) == 2,
            "pair",
            'two arms, e.g. compare.pair=\'["model=a","model=b"]\'',
        )


@dataclass
class ExportConfig:
    """The run's sets as a Hugging Face dataset folder (pipeline.export)."""

    dataset: bool = True  # <run>/dataset/ at the end of every run that made a set
    push: str | None = None  # a Hub repo (org/name) to push it to; needs a token
    private: bool = True  # a new Hub repo is private


# Top-level section -> schema. `scenario` and `metrics.*` are checked against their registries.
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "engine": EngineConfig,
    "data": DataConfig,
    "filter": FilterConfig,
    "respond": RespondConfig,
    "domain": DomainConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "logger": LoggerConfig,
    "calibration": CalibrationConfig,
    "arms": ArmsConfig,
    "compare": CompareConfig,
    "export": ExportConfig,
}
TOP_LEVEL = (
    *SECTIONS,
    "generation",  # each entry (evolve, greedy, ...) is a DecodingConfig
    "scenario",
    "metrics",
    "rounds",
    "stages",
    "seed",
    "cache_dir",
    "models_dir",
    "plugins",  # modules imported at start-up and by reports (core.extensions): stages, ...
)
# Role keys: where a model other than the run's own may be named.
ROLES = (
    "respond.model",
    "scenario.summarizer",
    "train.student",
    "eval.model",
    "eval.pairwise.judge",
    "eval.pairwise.against",
    "calibration.target_model",
)
