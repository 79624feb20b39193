"""What a study costs, on paper: tokens in and out per stage and role, and GPU-hours at stated H100
throughputs, from a composed config's sizes (seeds, rounds, token caps, the models of each role).

Generations are counted at their caps (`generation.*.max_tokens`, the benchmarks' `max_gen_toks`):
an upper bound, as most stop earlier; only the judges, whose templates ask for the answer alone,
are counted at `JUDGE_ANSWER_TOKENS` (`typical=True`: evolutions and responses at
`TYPICAL_OUTPUT_TOKENS`). Prompts are counted at the assumed lengths below. GPU time
is tokens over a per-GPU rate that depends on the model's size (`per_gpu_rate`); model loads,
start-up and idle GPUs are not counted. `compare_to_summary` sets an estimate beside a finished
job's measured `time/<stage>` and `engine/generated_tokens` (summary.json).

    python bench/cost.py experiment=table1_evol      # the study: every job of the preset's sweep
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.config import compose_config, role_model
from core.stage import Resources, stage_order

# Assumed H100 (80 GB, bf16) throughputs, to be checked against measured runs (summary.json's
# time/<stage>, engine/tokens_per_s; training's train/tokens_per_s in the logger).
THROUGHPUT_H100: dict[str, float] = {
    # vLLM output tokens/s of one replica of a ~8B model on one GPU, many sequences in flight
    "decode_8b_per_replica": 2500.0,
    # vLLM output tokens/s of one ~70B replica over a tensor-parallel-8 node
    "decode_70b_per_node": 2000.0,
    # prompt (prefill / forward-pass) tokens/s: ~8B on one GPU, ~70B on a TP-8 node
    "prefill_8b_per_replica": 20000.0,
    "prefill_70b_per_node": 16000.0,
    # full fine-tuning of a ~8B model (ZeRO-3, bf16, cutoff 2048), tokens/s per GPU
    "train_8b_per_gpu": 3000.0,
}
ANCHOR_SMALL_B, ANCHOR_LARGE_B = 8.0, 70.0  # the sizes the rates above are for
GPUS_PER_NODE = 8  # the TP-8 node above, and `train.devices: auto`
# Below ~8B a model is not faster per GPU without bound (batching, kernels, the scheduler):
# its per-GPU rate is at most this multiple of the 8B rate.
MAX_SMALL_MODEL_SPEEDUP = 4.0
LORA_TRAIN_SPEEDUP = 1.5  # no weight gradients or optimizer state for the frozen weights

# Assumed prompt lengths in tokens (chat template included).
INSTRUCTION_TOKENS = 80  # a seed or evolved instruction (Q = instruction + input)
PROMPT_TOKENS: dict[str, int] = {
    "evolve": 170 + INSTRUCTION_TOKENS,  # the in-depth/breadth template around the instruction
    "respond": 40 + INSTRUCTION_TOKENS,  # the response preamble
    "judge": 200 + INSTRUCTION_TOKENS,  # each judge template (complexity, difficulty)
    "reward": 170 + 2 * INSTRUCTION_TOKENS,  # the evolution prompt and the evolved instruction
    "pairwise_answer": 60,  # an AlpacaFarm instruction
    "pairwise_judge": 250,  # the comparison template, before the two answers
    "train_turn": 20 + INSTRUCTION_TOKENS,  # the student's user turn, before the response
}
JUDGE_ANSWER_TOKENS = 16
# Assumed mean lengths of what the caps bound, for the `typical` estimate: an evolved instruction
# (the template asks for 10 to 20 more words) and a response.
TYPICAL_OUTPUT_TOKENS: dict[str, int] = {
    "evolve": 120,
    "respond": 500,
}  # a number or a label (the templates ask for the answer alone)
# Rows of the seed sets where `data.limit` is null (the hub datasets' training splits).
DATASET_ROWS: dict[str, int] = {"alpaca": 52002, "gsm8k": 7473, "code_alpaca": 20022}
# Benchmarks: test items and assumed prompt tokens (few-shot examples included).
EVAL_ITEMS: dict[str, int] = {
    "ifeval": 541,
    "gsm8k": 1319,
    "math": 5000,
    "humaneval": 164,
    "mbpp": 500,
}
EVAL_PROMPT_TOKENS: dict[str, int] = {
    "ifeval": 90,
    "gsm8k": 800,
    "math": 1000,
    "humaneval": 180,
    "mbpp": 650,
}
# Generation caps of the benchmarks that set none in their own files (lm-eval's task definitions:
# IFEval's own 1,280, else lm-eval's default 256).
EVAL_GEN_TOKENS: dict[str, int] = {"ifeval": 1280}
LM_EVAL_DEFAULT_GEN_TOKS = 256
# eval.pairwise.instructions: the bundled set's and AlpacaFarm's sizes (a file: its rows).
PAIRWISE_ITEMS: dict[str, int] = {"bundled": 8, "alpaca_eval": 805}

# Scenarios whose evolve stage is not one generation per item and round.
SCENARIO_NOTES: dict[str, str] = {
    "autoif": "AutoIF's evolve stage (augmenting, verifier replies, queries, the sandbox): "
    "its rows count one generation per seed, and its responses not the 16 queries of "
    "each instruction",
    "auto_evol_instruct": "Auto Evol-Instruct: the method summariser's greedy calls and the "
    "optimisation loop are not counted",
}

COST_STAGES = ("evolve", "respond", "score", "train", "evaluate")


def size_b(model_cfg: Any) -> float | None:
    """Billions of parameters: the model config's `size_b`, else parsed from its name or id
    (`qwen2.5_72b` -> 72, `mixtral_8x7b` -> 56, `smollm2_135m` -> 0.135)."""
    if model_cfg.get("size_b") is not None:
        return float(model_cfg.size_b)
    for text in (model_cfg.get("name"), model_cfg.get("hf_id")):
        if found := parse_size(str(text or "")):
            return found
    return None


def parse_size(name: str) -> float | None:
    name = name.lower()
    if m := re.search(r"(\d+)x(\d+(?:\.\d+)?)b(?![a-z])", name):
        return int(m.group(1)) * float(m.group(2))
    if m := re.search(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z])", name):
        return float(m.group(1)) / (1000.0 if m.group(2) == "m" else 1.0)
    return None


def per_gpu_rate(kind: str, size: float, throughput: dict[str, float] | None = None) -> float:
    """Tokens/s per GPU of a `size`-billion model for `kind` (decode | prefill | train): a power
    law through the ~8B and ~70B anchors (training: per-GPU rate inversely proportional to size),
    at most `MAX_SMALL_MODEL_SPEEDUP` times the 8B rate."""
    t = throughput or THROUGHPUT_H100
    if kind == "train":
        small, exponent = t["train_8b_per_gpu"], 1.0
    else:
        small = t[f"{kind}_8b_per_replica"]
        large = t[f"{kind}_70b_per_node"] / GPUS_PER_NODE
        exponent = math.log(small / large) / math.log(ANCHOR_LARGE_B / ANCHOR_SMALL_B)
    speedup = (ANCHOR_SMALL_B / max(size, 1e-3)) ** exponent
    return small * min(speedup, MAX_SMALL_MODEL_SPEEDUP)


@dataclass
class Row:
    """One stage's work for one role: `calls` model calls (generations, forward passes or
    training sequences) over `tokens_in` prompt tokens and `tokens_out` generated ones."""

    stage: str
    role: str  # the config key of the role (`model`, `respond.model`, `metrics.judge.model`, ...)
    what: str  # the work (`round 1 evolve`, `judge`, `ifd`, `sft`, a benchmark)
    model: str
    size_b: float | None
    gpus: int  # GPUs of one replica (tensor x pipeline parallel), or the training GPUs
    calls: int
    tokens_in: int
    tokens_out: int = 0
    kind: str = "generate"  # generate | forward | train
    api: bool = False  # served by a provider: tokens, no GPUs
    key: str = ""  # what the work depends on: equal keys across jobs are one cached computation
    speedup: float = 1.0  # over full-precision full fine-tuning / generation (LoRA)
    gpu_hours: float | None = None

    def price(self, throughput: dict[str, float] | None = None) -> None:
        if self.api:
            self.gpu_hours = 0.0
            return
        if self.size_b is None:
            self.gpu_hours = None
            return
        if self.kind == "train":
            seconds = self.tokens_in / per_gpu_rate("train", self.size_b, throughput)
        else:
            seconds = self.tokens_in / per_gpu_rate("prefill", self.size_b, throughput)
            seconds += self.tokens_out / per_gpu_rate("decode", self.size_b, throughput)
        self.gpu_hours = seconds / self.speedup / 3600.0


@dataclass
class Estimate:
    """One job's rows; `gpus`: the allocation its largest role needs (what a generation stage
    spreads its replicas over)."""

    label: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the estimate does not model

    @property
    def gpus(self) -> int:
        return max((r.gpus for r in self.rows if not r.api), default=0)

    def stage_rows(self, stage: str) -> list[Row]:
        return [r for r in self.rows if r.stage == stage]

    def gpu_hours(self, stage: str | None = None) -> float:
        rows = self.rows if stage is None else self.stage_rows(stage)
        return sum(r.gpu_hours or 0.0 for r in rows)

    def seconds(self, stage: str, gpus: int | None = None) -> float:
        """Wall seconds of `stage` on `gpus` GPUs (default: the job's allocation): generation
        over every replica that fits (engine.replicas: auto), a single-device forward pass on
        one replica, training on its own GPUs."""
        gpus = gpus or self.gpus
        total = 0.0
        for r in self.stage_rows(stage):
            gpu_s = (r.gpu_hours or 0.0) * 3600.0
            if r.kind == "generate" and r.gpus:
                total += gpu_s / (max(gpus // r.gpus, 1) * r.gpus)
            elif r.gpus:
                total += gpu_s / r.gpus
        return total


# -- the composed config's sizes ------------------------------------------------------------------


def seed_count(cfg: DictConfig) -> int:
    """Seeds the job evolves: `data.limit`, capped by the file's rows where it is local, else the
    hub dataset's (`DATASET_ROWS`)."""
    data = cfg.data
    rows = None
    path = OmegaConf.select(data, "path")
    if path and Path(str(path)).is_file():
        with open(path, encoding="utf-8") as f:
            rows = sum(1 for line in f if line.strip())
    elif data.get("name") in DATASET_ROWS:
        rows = DATASET_ROWS[str(data.name)]
    limit = data.get("limit")
    if limit is None:
        if rows is None:
            raise ValueError(f"data={data.get('name')}: set data.limit (its size is not known)")
        return rows
    return min(int(limit), rows) if rows is not None else int(limit)


def _rounds(cfg: DictConfig) -> int:
    from evolvers.base import SCENARIOS

    cls = SCENARIOS.get(str(cfg.scenario.name)) if str(cfg.scenario.name) in SCENARIOS else None
    cap = getattr(cls, "max_rounds", None)
    return min(int(cfg.rounds), cap) if cap else int(cfg.rounds)


def _model(cfg: DictConfig, key: str) -> DictConfig:
    return role_model(cfg, OmegaConf.select(cfg, key) if key != "model" else None, key)


def _gpus(model_cfg: Any) -> int:
    return int(model_cfg.get("tensor_parallel_size") or 1) * int(
        model_cfg.get("pipeline_parallel_size") or 1
    )


def _api(model_cfg: Any) -> bool:
    engine = model_cfg.get("engine") or {}
    return engine.get("kind") == "openai"


def _key(*parts: Any) -> str:
    def plain(p: Any) -> Any:
        return OmegaConf.to_container(p, resolve=True) if OmegaConf.is_config(p) else p

    return json.dumps([plain(p) for p in parts], sort_keys=True, default=str)


def _stage_roles(cfg: DictConfig) -> dict[str, Resources]:
    """Each selected cost stage's declared resources (the roles it loads)."""
    from core.schemas import typed_section

    out = {}
    names = list(cfg.stages)
    for cls in stage_order():
        if cls.name not in COST_STAGES or not cls.selected(names):
            continue
        key = cls.config_key()
        settings = None
        if cls.Config is not None and not cls.scenario_settings:
            settings = typed_section(cls.Config, cfg.get(key), key)
        out[cls.name] = cls(settings, cfg).resources()
    return out


def _row(stage: str, role: str, what: str, model_cfg: Any, **kw: Any) -> Row:
    return Row(
        stage=stage,
        role=role,
        what=what,
        model=str(model_cfg.get("name")),
        size_b=size_b(model_cfg),
        gpus=0 if _api(model_cfg) else _gpus(model_cfg),
        api=_api(model_cfg),
        **kw,
    )


def estimate(
    cfg: DictConfig,
    label: str = "",
    throughput: dict[str, float] | None = None,
    typical: bool = False,
) -> Estimate:
    """The job's rows per stage and role, priced (see the module docstring). `typical`: the
    evolutions and responses at `TYPICAL_OUTPUT_TOKENS` (where below their caps), not at the
    caps."""
    est = Estimate(label=label)
    scenario = str(cfg.scenario.name)
    if scenario in SCENARIO_NOTES:
        est.notes.append(SCENARIO_NOTES[scenario])
    declared = _stage_roles(cfg)
    seeds, rounds = seed_count(cfg), _rounds(cfg)
    evolve_cap = int(cfg.generation.evolve.max_tokens)
    greedy_cap = int(cfg.generation.greedy.max_tokens)
    evolve_out, response_tokens = evolve_cap, greedy_cap
    if typical:
        evolve_out = min(evolve_cap, TYPICAL_OUTPUT_TOKENS["evolve"])
        response_tokens = min(greedy_cap, TYPICAL_OUTPUT_TOKENS["respond"])
    evolver = _model(cfg, "model")
    evolve_key = _key(
        evolver.name,
        cfg.scenario,
        cfg.data,
        seeds,
        rounds,
        cfg.generation,
        cfg.calibration,
        cfg.seed,
    )
    # Every round evolves each parent once (failures kept or not: an upper bound).
    if "evolve" in declared:
        for r in range(1, rounds + 1):
            est.rows.append(
                _row(
                    "evolve",
                    "model",
                    f"round {r}",
                    evolver,
                    calls=seeds,
                    tokens_in=seeds * PROMPT_TOKENS["evolve"],
                    tokens_out=seeds * evolve_out,
                    key=_key(evolve_key, r),
                )
            )
    # The respond stage answers every round's set; the responses are what the later stages read.
    responder = _model(cfg, "respond.model")
    respond_key = _key(evolve_key, responder.name, greedy_cap)
    if "respond" in declared:
        for r in range(1, rounds + 1):
            est.rows.append(
                _row(
                    "respond",
                    "respond.model",
                    f"round {r}",
                    responder,
                    calls=seeds,
                    tokens_in=seeds * PROMPT_TOKENS["respond"],
                    tokens_out=seeds * response_tokens,
                    key=_key(respond_key, r),
                )
            )
    if "score" in declared:
        est.rows += _score_rows(
            cfg, declared["score"], seeds * rounds, response_tokens, respond_key
        )
    if "train" in declared:
        est.rows += _train_rows(cfg, seeds, response_tokens, respond_key)
    if "evaluate" in declared:
        est.rows += _eval_rows(cfg, declared["evaluate"], respond_key)
    for row in est.rows:
        row.price(throughput)
    return est


def _score_rows(
    cfg: DictConfig, res: Resources, records: int, response_tokens: int, respond_key: str
) -> list[Row]:
    from metrics.base import enabled_metrics

    rows, metrics = [], {m.name: mcfg for m, mcfg in enabled_metrics(cfg.metrics)}
    key = _key(respond_key, cfg.metrics)
    if "judge" in metrics and "metrics.judge.model" in res.models:
        jcfg, judge = metrics["judge"], _model(cfg, "metrics.judge.model")
        for kind in ("complexity", "difficulty"):
            if not getattr(jcfg, kind, True):
                continue
            cap = int(cfg.generation.greedy.max_tokens)
            if (getattr(jcfg, "max_tokens", None) or {}).get(kind) is not None:
                cap = min(cap, int(jcfg.max_tokens[kind]))
            rows.append(
                _row(
                    "score",
                    "metrics.judge.model",
                    f"judge {kind}",
                    judge,
                    calls=records,
                    tokens_in=records * PROMPT_TOKENS["judge"],
                    tokens_out=records * min(cap, JUDGE_ANSWER_TOKENS),
                    key=_key(key, kind),
                )
            )
    if "confidence" in metrics:  # the run's own model, under each evolution prompt
        positions = int(getattr(metrics["confidence"], "positions", 5))
        rows.append(
            _row(
                "score",
                "model",
                "confidence",
                _model(cfg, "model"),
                calls=records,
                tokens_in=records * PROMPT_TOKENS["evolve"],
                tokens_out=records * positions,
                key=_key(key, "confidence"),
            )
        )
    if "ifd" in metrics and "metrics.ifd.model" in res.models:
        cap = int(getattr(metrics["ifd"], "max_length", 2048))
        per = min(INSTRUCTION_TOKENS + response_tokens, cap) + min(response_tokens, cap)
        rows.append(  # two forward passes: X = Q + A, and A alone
            _row(
                "score",
                "metrics.ifd.model",
                "ifd",
                _model(cfg, "metrics.ifd.model"),
                calls=2 * records,
                tokens_in=records * per,
                kind="forward",
                key=_key(key, "ifd"),
            )
        )
    if "reward" in metrics and getattr(metrics["reward"], "model", None):
        name = str(metrics["reward"].model).split("@")[0]
        rows.append(
            Row(
                "score",
                "metrics.reward.model",
                "reward",
                name,
                parse_size(name),
                1,
                calls=records,
                tokens_in=records * PROMPT_TOKENS["reward"],
                kind="forward",
                key=_key(key, "reward"),
            )
        )
    return rows


def train_gpus(train_cfg: Any) -> int:
    devices = train_cfg.get("devices")
    devices = GPUS_PER_NODE if devices in (None, "auto", -1, "-1") else int(devices)
    return devices * int(train_cfg.get("num_nodes") or 1)


def _train_records(cfg: DictConfig, seeds: int) -> int:
    """The records trained on: one round's set (the filter's), at `filter.keep_ratio`."""
    if "filter" not in cfg.stages:
        return seeds
    return int(math.floor(seeds * float(cfg.filter.get("keep_ratio", 1.0))))


def _train_rows(cfg: DictConfig, seeds: int, response_tokens: int, respond_key: str) -> list[Row]:
    t = cfg.train
    student = _model(cfg, "train.student")
    records = _train_records(cfg, seeds)
    per = min(PROMPT_TOKENS["train_turn"] + response_tokens, int(t.cutoff_len))
    sequences = records * int(t.epochs)
    if t.get("max_steps"):  # it ends training first where it is fewer sequences
        sequences = min(sequences, int(t.max_steps) * int(t.effective_batch_size))
    row = Row(
        "train",
        "train.student",
        f"sft ({t.method})",
        str(student.name),
        size_b(student),
        train_gpus(t),
        calls=sequences,
        tokens_in=sequences * per,
        kind="train",
        key=_key(respond_key, cfg.filter, t, student.name, cfg.seed),
    )
    if t.method == "lora":
        row.speedup = LORA_TRAIN_SPEEDUP
    return [row]


def _eval_gen_cap(task: str, variant: str | None, cap: int | None) -> int:
    from evaluation.benchmarks import BENCHMARKS

    own = None
    if task in BENCHMARKS:
        bench = BENCHMARKS.resolve(task, variant)
        own = ((bench.task or {}).get("generation_kwargs") or {}).get("max_gen_toks")
    own = int(own) if own is not None else EVAL_GEN_TOKENS.get(task, LM_EVAL_DEFAULT_GEN_TOKS)
    return min(own, int(cap)) if cap is not None else own


def pairwise_items(pw: Any) -> int:
    source = str(pw.get("instructions") or "bundled")
    if source in PAIRWISE_ITEMS:
        n = PAIRWISE_ITEMS[source]
    elif Path(source).is_file():
        with open(source, encoding="utf-8") as f:
            n = sum(1 for line in f if line.strip())
    else:
        n = PAIRWISE_ITEMS["alpaca_eval"]
    return min(n, int(pw.limit)) if pw.get("limit") is not None else n


def _eval_rows(cfg: DictConfig, res: Resources, respond_key: str) -> list[Row]:
    ev, rows = cfg.eval, []
    key = "eval.model" if ev.get("model") else "train.student"
    student = _model(cfg, key)
    trained = _key(respond_key, cfg.filter, cfg.train, student.name, cfg.seed)
    for task in ev.tasks:
        items = EVAL_ITEMS.get(str(task), 0)
        if ev.get("limit") is not None:
            items = min(items, int(ev.limit)) if items else int(ev.limit)
        out = _eval_gen_cap(str(task), ev.get("variant"), ev.get("max_gen_toks"))
        rows.append(
            _row(
                "evaluate",
                key,
                str(task),
                student,
                calls=items,
                tokens_in=items * EVAL_PROMPT_TOKENS.get(str(task), 500),
                tokens_out=items * out,
                key=_key(trained, ev, task),
            )
        )
    pw = ev.get("pairwise") or {}
    if pw.get("enabled") and "eval.pairwise.judge" in res.models:
        items = pairwise_items(pw)
        cap = int(pw.get("max_tokens") or cfg.generation.greedy.max_tokens)
        against_key = "eval.pairwise.against"
        against = _model(cfg, against_key) if pw.get("against") else _model(cfg, "train.student")
        for role, model_cfg, what in (
            (key, student, "pairwise answers"),
            (against_key, against, "pairwise answers, against"),
        ):
            rows.append(
                _row(
                    "evaluate",
                    role,
                    what,
                    model_cfg,
                    calls=items,
                    tokens_in=items * PROMPT_TOKENS["pairwise_answer"],
                    tokens_out=items * cap,
                    key=_key(trained if role == key else model_cfg.name, pw, what),
                )
            )
        judge = _model(cfg, "eval.pairwise.judge")
        rows.append(  # both answers of each pair, in both orders
            _row(
                "evaluate",
                "eval.pairwise.judge",
                "pairwise judge",
                judge,
                calls=2 * items,
                tokens_in=2 * items * (PROMPT_TOKENS["pairwise_judge"] + 2 * cap),
                tokens_out=2 * items * cap,
                key=_key(trained, pw, "judge"),
            )
        )
    return rows


# -- a study: every job of a sweep --------------------------------------------------------------


def sweep_params(overrides: list[str]) -> dict[str, str]:
    """The preset's `hydra.sweeper.params` for `overrides` (its experiment's sweep)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from core.config import CONF_DIR, register_resolvers

    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        return {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    return {str(k): str(v) for k, v in params.items()}


def jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job `python run.py -m OVERRIDES` runs: the command line's
    sweeps (`model=a,b`) over the preset's `hydra.sweeper.params` (the command line wins)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed, sweeps = [], {}
    for o in parser.parse_overrides(list(overrides)):
        if o.is_sweep_override():
            sweeps[o.get_key_element()] = list(o.sweep_string_iterator())
        else:
            fixed.append(o.input_line)
    preset = sweep_params(fixed)
    for key, value in preset.items():
        if key not in sweeps and not any(f.partition("=")[0] == key for f in fixed):
            (o,) = parser.parse_overrides([f"{key}={value}"])
            sweeps[key] = list(o.sweep_string_iterator()) if o.is_sweep_override() else [value]
    keys = list(sweeps)
    return [
        fixed + [f"{k}={v}" for k, v in zip(keys, values)]
        for values in itertools.product(*(sweeps[k] for k in keys))
    ] or [fixed]


@dataclass
class Study:
    """Every job's estimate; work whose key another job already has is shared (the cache)."""

    estimates: list[Estimate]

    def unique_rows(self) -> list[Row]:
        seen, out = set(), []
        for est in self.estimates:
            for row in est.rows:
                if row.key not in seen:
                    seen.add(row.key)
                    out.append(row)
        return out

    def totals(self) -> dict[str, dict[str, float]]:
        """{stage: tokens_in, tokens_out, gpu_hours}, shared work counted once."""
        out: dict[str, dict[str, float]] = {}
        for row in self.unique_rows():
            t = out.setdefault(row.stage, {"tokens_in": 0, "tokens_out": 0, "gpu_hours": 0.0})
            t["tokens_in"] += row.tokens_in
            t["tokens_out"] += row.tokens_out
            t["gpu_hours"] += row.gpu_hours or 0.0
        return {s: out[s] for s in COST_STAGES if s in out}

    def gpu_hours(self) -> float:
        return sum(t["gpu_hours"] for t in self.totals().values())


def study(
    overrides: list[str], throughput: dict[str, float] | None = None, typical: bool = False
) -> Study:
    return Study(
        [
            estimate(compose_config(j), _label(j, overrides), throughput, typical)
            for j in jobs(overrides)
        ]
    )


def _label(job: list[str], given: list[str]) -> str:
    fixed = {o for o in given if "," not in o.partition("=")[2]}
    return " ".join(o for o in job if o not in fixed) or " ".join(job) or "(defaults)"


# -- measured against estimated -------------------------------------------------------------------


def compare_to_summary(
    estimate: Estimate, summary: dict[str, Any], gpus: int | None = None
) -> list[dict[str, Any]]:
    """Rows of estimated vs measured seconds for each stage with a `time/<stage>` in `summary`
    (a job's summary.json), then the generated tokens where `engine/generated_tokens` is there
    (the estimate's generations of the stages that ran). `gpus`: the job's GPUs (default: what
    its largest role needs)."""
    rows = []
    ran = []
    for stage in COST_STAGES:
        measured = summary.get(f"time/{stage}")
        if measured is None:
            continue
        ran.append(stage)
        est = estimate.seconds(stage, gpus)
        rows.append(
            {
                "stage": stage,
                "what": "seconds",
                "estimated": round(est, 2),
                "measured": float(measured),
                "ratio": round(float(measured) / est, 3) if est else None,
            }
        )
    generated = summary.get("engine/generated_tokens")
    if generated is not None and ran:
        est = sum(r.tokens_out for r in estimate.rows if r.stage in ran)
        rows.append(
            {
                "stage": "+".join(ran),
                "what": "generated tokens",
                "estimated": est,
                "measured": int(generated),
                "ratio": round(int(generated) / est, 3) if est else None,
            }
        )
    return rows


# -- markdown ------------------------------------------------------------------------------------


def _num(n: float) -> str:
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _hours(h: float | None) -> str:
    if h is None:
        return "n/a"
    return f"{h:.1f}" if h >= 1 else ("<0.01" if 0 < h < 0.01 else f"{h:.2f}")


def job_table(est: Estimate) -> str:
    lines = [
        "| stage | role | model | work | GPUs | calls | tokens in | tokens out | GPU-h |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in est.rows:
        gpus = "API" if r.api else str(r.gpus)
        lines.append(
            f"| {r.stage} | {r.role} | {r.model} | {r.what} | {gpus} | {_num(r.calls)} | "
            f"{_num(r.tokens_in)} | {_num(r.tokens_out)} | {_hours(r.gpu_hours)} |"
        )
    return "\n".join(lines)


def study_table(s: Study, typical: Study | None = None) -> str:
    """Per stage: tokens and GPU-hours at the caps, and beside them at typical output lengths."""
    head = "| stage | tokens in | tokens out | GPU-h (H100) |"
    rule = "|---|---:|---:|---:|"
    if typical is not None:
        head += " tokens out, typical | GPU-h, typical |"
        rule += "---:|---:|"
    lines = [head, rule]
    totals = s.totals()
    other = typical.totals() if typical is not None else {}

    def cells(name: str, t: dict, o: dict | None, bold: bool = False) -> str:
        b = "**" if bold else ""
        row = f"| {b}{name}{b} | {b}{_num(t['tokens_in'])}{b} | {b}{_num(t['tokens_out'])}{b} | "
        row += f"{b}{_hours(t['gpu_hours'])}{b} |"
        if o is not None:
            row += f" {b}{_num(o['tokens_out'])}{b} | {b}{_hours(o['gpu_hours'])}{b} |"
        return row

    for stage, t in totals.items():
        lines.append(cells(stage, t, other.get(stage) if typical is not None else None))

    def total(ts: dict) -> dict:
        return {k: sum(t[k] for t in ts.values()) for k in ("tokens_in", "tokens_out", "gpu_hours")}

    n = len(s.estimates)
    name = f"total ({n} job{'s' if n != 1 else ''})"
    lines.append(cells(name, total(totals), total(other) if typical is not None else None, True))
    return "\n".join(lines)


def markdown(s: Study, typical: Study | None = None, per_job: bool = True) -> str:
    parts = ["### The study", "", study_table(s, typical)]
    notes = dict.fromkeys(n for e in s.estimates for n in e.notes)
    parts += [f"\nNot modelled: {n}." for n in notes]
    if per_job:
        for est in s.estimates:
            parts += [
                "",
                f"### {est.label} ({est.gpus} GPUs, {_hours(est.gpu_hours())} GPU-h)",
                "",
                job_table(est),
            ]
    return "\n".join(parts) + "\n"
