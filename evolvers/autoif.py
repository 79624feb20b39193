"""AutoIF (SPEC §3): verifiable instruction-following data in six steps.

1. augment: sample the augmentation prompt N times; bulleted lines become new format constraints
   (cleaned, deduplicated), the seed constraints are appended;
2. verifiers: K replies per constraint, each a JSON object with `func` (Python source defining
   `evaluate(response) -> bool`) and `cases` (`{input, output}` test cases);
3. cross-validate in the sandbox: a case is kept if at least one function agrees with it, a
   function if its accuracy on the kept cases reaches `min_accuracy`, a constraint if a function
   survives;
4. pair each surviving constraint with random user queries: `{instruction: constraint, input:
   query}` records, answered by the respond stage with this scenario's response prompt;
5. verify each response with the constraint's kept functions (the runner's verification hook),
   optionally exporting DPO pairs; `verify_responses=false` keeps every response (the paper);
6. (the runner) equal size: `equal_size_constraints` cuts the constraints (each with all its
   queries) before anything is answered or scored (the paper's 420 constraints x 16 queries);
   `filter.equal_size` cuts the records the filter stage selects.

Steps 1-4 run in `evolve_round`, 5 in `verify`, the cut of step 6 in `cut_constraints`.
Model-written code runs only in the sandbox.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.records import Record, make_record, query_text, read_records
from core.templates import fill, load_template
from engines.base import Chat
from evolvers.base import (
    SCENARIOS,
    TEMPLATE_DIR,
    Generate,
    Scenario,
    ScenarioConfig,
    Verification,
    strip_quotes,
)
from evolvers.ifeval_types import ifeval_overlap
from evolvers.verifiers import (
    COMPILE_ERROR,
    NO_EVALUATE,
    agreement,
    func_key,
    parse_verifier,
    run_programs,
    run_verifiers,
    select_verifiers,
)
from sandbox import SandboxService

log = logging.getLogger(__name__)

METHOD = "autoif"
DATA_DIR = Path(__file__).parent / "data"
SEEDS_FILE = DATA_DIR / "autoif_seeds.txt"
QUERIES_FILE = DATA_DIR / "autoif_queries.jsonl"

_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)])\s+")
DPO_CHOSEN_MIN = 0.5  # SPEC §3.5: chosen responses pass >= half the functions, rejected none


# -- step 1: augmentation ----------------------------------------------------------------------
def read_seed_constraints(path: str | Path) -> list[str]:
    """One constraint per line; blank lines and `#` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (scenario.seeds: one constraint per line)")
    lines = path.read_text(encoding="utf-8").splitlines()
    seeds = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if not seeds:
        raise DataError(f"{path}: no seed constraints (one per line)")
    return seeds


def clean_augmented(text: str) -> tuple[list[str], int]:
    """Constraints from one augmentation reply, and its number of non-blank lines.

    A constraint is a bulleted line ("- ", "* ", "1. "); unbulleted lines are preamble or prose,
    and lines ending with ":" are headers. The bullet and surrounding quotes are stripped."""
    lines = [line for line in text.splitlines() if line.strip()]
    out = []
    for line in lines:
        m = _BULLET.match(line)
        if not m:
            continue
        s = strip_quotes(line[m.end() :].strip())
        if s and not s.endswith(":") and len(s.split()) >= 3:
            out.append(s)
    return out, len(lines)


def norm_text(s: str) -> str:
    """The dedupe key of a constraint or a query: lowercase, single spaces, no final period."""
    return " ".join(s.lower().split()).rstrip(".")


# -- step 4: queries ---------------------------------------------------------------------------
def load_queries(path: str | Path, min_chars: int, max_chars: int) -> tuple[list[str], dict]:
    """First user turns (ShareGPT) or alpaca queries from JSON/JSONL, within the length bounds,
    deduplicated; a malformed line is a DataError naming `file:line`."""
    texts = [query_text(r).strip() for r in read_records(path)]
    seen, out, out_of_bounds = set(), [], 0
    for t in texts:
        if not min_chars <= len(t) <= max_chars:
            out_of_bounds += 1
        elif norm_text(t) not in seen:
            seen.add(norm_text(t))
            out.append(t)
    counts = {
        "queries_loaded": len(texts),
        "queries_out_of_bounds": out_of_bounds,
        "queries_usable": len(out),
    }
    return out, counts


def _path(value: Any, default: Path) -> Path:
    if not value:
        return default
    from hydra.utils import to_absolute_path

    return Path(to_absolute_path(str(Path(str(value)).expanduser())))


class EvolvedRecords(list):
    """What `AutoIF.evolve_round` returns: its records, carrying that call's counts
    (`evolve_counts`) for `AutoIF.counts`, so no count outlives its call on the scenario."""

    def __init__(self, records: list[Record], evolve_counts: dict[str, Any]):
        super().__init__(records)
        self.evolve_counts = evolve_counts


@dataclass
class SandboxConfig:
    timeout: float = 5.0  # seconds per verifier call
    memory_mb: int = 1024
    batch_size: int = 64
    # false: one process per function (no function can touch another's result); true: a batch
    # shares one process, ~25x faster on tiny functions (bench/sandbox.py), for trusted models.
    share_process: bool = False
    # Sandbox workers side by side (sandbox.SandboxPool); 0: one per CPU the process may
    # use (affinity and cgroup quota; at most 16, and no more than free memory holds at
    # memory_mb each). One at the `process` isolation level.
    workers: int = 0

    def __post_init__(self) -> None:
        from core.schemas import check

        check(self.timeout > 0, "scenario.sandbox.timeout", "must be > 0")
        check(self.memory_mb > 0, "scenario.sandbox.memory_mb", "must be > 0")
        check(self.batch_size >= 1, "scenario.sandbox.batch_size", "must be >= 1")
        check(self.workers >= 0, "scenario.sandbox.workers", "must be >= 0 (0: one per core)")


@dataclass
class DPOConfig:
    enabled: bool = False
    samples: int = 4


@dataclass
class AutoIFConfig(ScenarioConfig):
    """The fields of conf/scenario/autoif.yaml (documented there)."""

    seeds: str | None = None
    queries: str | None = None
    seed: int = 0
    n_samples: int = 2
    instructions_per_sample: int = 50
    max_instructions: int | None = 12
    k_verifiers: int = 2
    min_accuracy: float = 0.8
    min_functions: int | None = None
    min_cases: int | None = None
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    queries_per_instruction: int = 2
    query_min_chars: int = 20
    query_max_chars: int = 300
    pass_rate: float = 0.5
    # "at_least": kept when the pass rate >= pass_rate (the project's default, 0.5); "above":
    # kept when it is > pass_rate (upstream AutoIF: any function accepts, pass_rate 0).
    pass_rule: str = "at_least"
    # false: every response is kept unchecked, as the paper ran AutoIF (its concatenation step
    # never calls the verifiers).
    verify_responses: bool = True
    # true: a case whose output is the string "true"/"false" counts as that boolean; false:
    # such a case is dropped, as upstream AutoIF's comparison drops it.
    string_booleans: bool = True
    # null | N | smallest: a seeded sample of N constraints (smallest: the smallest arm's count
    # among the sweep's values of filter.equal_across), each with all its records, before the
    # respond stage.
    equal_size_constraints: int | str | None = None
    dpo: DPOConfig = field(default_factory=DPOConfig)
    max_tokens: dict[str, int | None] = field(
        default_factory=lambda: {"augment": 768, "verifier": 384}
    )
    templates: dict[str, str | None] = field(
        default_factory=lambda: {"augment": None, "verifier": None, "respond": None}
    )

    def __post_init__(self) -> None:
        from core.schemas import check, one_of

        one_of(self.pass_rule, "pass_rule", ("at_least", "above"))
        check(0 <= self.pass_rate <= 1, "pass_rate", "must be in [0, 1]")
        size = self.equal_size_constraints
        check(
            size is None or size == "smallest" or (isinstance(size, int) and size >= 1),
            "equal_size_constraints",
            f"must be null, a count >= 1 or smallest, got {size!r}",
        )
        check(
            self.verify_responses or not self.dpo.enabled,
            "dpo.enabled",
            "DPO pairs are chosen by verification: set scenario.verify_responses=true, or "
            "scenario.dpo.enabled=false",
        )


@SCENARIOS.register()
class AutoIF(Scenario):
    """The AutoIF scenario; the pipeline generates, this class builds prompts and checks code."""

    name = "autoif"
    Config = AutoIFConfig
    max_rounds = 1  # one pass: the runner runs round 1 only

    uses_sandbox = True

    def __init__(self, cfg: AutoIFConfig, sandbox: SandboxService | None = None):
        super().__init__(cfg)
        # The run's sandbox service (its owner closes it; its cache replays a resumed run's
        # verdicts). None: each sandbox step runs in an uncached service of its own.
        self.sandbox = sandbox
        t = cfg.templates
        self.augment_template = load_template(TEMPLATE_DIR, "autoif/augment.txt", t.get("augment"))
        self.verifier_template = load_template(
            TEMPLATE_DIR, "autoif/verifier.txt", t.get("verifier")
        )
        self.respond_template = load_template(TEMPLATE_DIR, "autoif/respond.txt", t.get("respond"))
        self.seeds = read_seed_constraints(_path(cfg.seeds, SEEDS_FILE))
        self.queries_path = _path(cfg.queries, QUERIES_FILE)
        self.seed = cfg.seed
        self._artifacts: dict[str, str] = {}

    def artifacts(self) -> dict[str, str]:
        """The augmentation samples and the verified constraints (JSONL)."""
        return dict(self._artifacts)

    # -- prompts ---------------------------------------------------------------------------------
    def augment_prompt(self) -> Chat:
        text = fill(
            self.augment_template,
            seeds="\n".join(f"- {s}" for s in self.seeds),
            count=str(int(self.cfg.instructions_per_sample)),
        )
        return [{"role": "user", "content": text}]

    def verifier_prompt(self, instruction: str) -> Chat:
        return [{"role": "user", "content": fill(self.verifier_template, instruction=instruction)}]

    def respond_prompt(self, record: Record) -> Chat:
        """The response prompt (runner hook): answer the query, strictly following the
        constraint."""
        text = fill(
            self.respond_template,
            instruction=record["instruction"],
            query=record.get("input") or "",
        )
        return [{"role": "user", "content": text}]

    def evolution_prompt(self, record: Record) -> Chat | None:
        """The prompt that produced a record's constraint: the augmentation prompt for augmented
        constraints, none for seed constraints (confidence and reward skip those)."""
        if record.get("meta", {}).get("instruction_source") == "augment":
            return self.augment_prompt()
        return None

    # -- steps 1-4 -------------------------------------------------------------------------------
    def evolve_round(
        self,
        parents: list[Record],
        round_num: int,
        model_name: str,
        generate: Generate,
        greedy: Generate,
    ) -> list[Record]:
        if parents:
            log.info(
                "autoif: the %d seed records of the data group are not used (constraints come "
                "from scenario.seeds, queries from scenario.queries)",
                len(parents),
            )
        counts: dict[str, Any] = self._seed_overlap()
        queries = self._queries(counts)  # a bad file fails before any model call
        instructions = self._augment(generate, counts)
        kept = self._verifiers(instructions, generate, counts)
        # The same screen on what survived: the evolver's own constraints may restate IFEval's.
        counts["instructions_kept_ifeval_flagged"] = sum(
            ifeval_overlap(x["instruction"]) is not None for x in kept
        )
        records = self._pair_with_queries(kept, queries, model_name, counts)
        counts["records"] = len(records)
        # The columns every scenario shares (summary, comparison tables), at constraint level.
        counts["attempted"] = counts["instructions_checked"]
        counts["parsed"] = counts["instructions_kept"]
        counts["failed"] = counts["attempted"] - counts["parsed"]
        return EvolvedRecords(records, counts)

    def counts(self, records: list[Record]) -> dict[str, Any]:
        """The counts of the `evolve_round` call that returned `records` (they travel with
        them, so two calls never see each other's); records from elsewhere (a copy of the
        list, records read back) are only counted."""
        held = getattr(records, "evolve_counts", None)
        return {**(held or {}), "records": len(records)}

    def _seed_overlap(self) -> dict[str, Any]:
        """Seeds that restate an IFEval instruction type (SPEC §3.1): trained on, they teach the
        test's own instruction types. Counted and listed by type, and warned about."""
        flagged: dict[str, list[str]] = {}
        for s in self.seeds:
            if kind := ifeval_overlap(s):
                flagged.setdefault(kind, []).append(s)
        n = sum(map(len, flagged.values()))
        if n:
            log.warning(
                "autoif: %d of %d seed constraints restate IFEval instruction types (%s); "
                "AutoIF data is evaluated on IFEval (Table 3), so use seeds of another kind "
                "(scenario.seeds; the bundled set has none)",
                n,
                len(self.seeds),
                ", ".join(sorted(flagged)),
            )
        return {"seeds_ifeval_flagged": n, "seeds_ifeval_overlap": flagged}

    def _max_tokens(self, step: str) -> int | None:
        value = self.cfg.max_tokens.get(step)
        return int(value) if value else None

    def _augment(self, generate: Generate, counts: dict) -> list[dict]:
        """Step 1: new constraints (deduplicated, without repeats of seeds), then the seeds;
        at most `max_instructions` of them (a seeded sample) go on to verification."""
        n = int(self.cfg.n_samples)
        prompt = self.augment_prompt()
        ids = [f"aug{j}" for j in range(n)]
        gens = generate([(i, prompt) for i in ids], max_tokens=self._max_tokens("augment"))
        pool: list[dict] = []
        seen = {norm_text(s) for s in self.seeds}
        generated = parsed = 0
        samples = []
        for i in ids:
            lines, nonblank = clean_augmented(gens[i].text)
            generated += nonblank
            parsed += len(lines)
            samples.append({"id": i, "raw": gens[i].text, "parsed": lines})
            for k, s in enumerate(lines):
                if norm_text(s) not in seen:
                    seen.add(norm_text(s))
                    pool.append({"id": f"{i}-{k}", "instruction": s, "source": "augment"})
        new = len(pool)
        pool += [
            {"id": f"seed{k}", "instruction": s, "source": "seed"} for k, s in enumerate(self.seeds)
        ]
        limit = self.cfg.max_instructions
        checked = pool
        if limit and int(limit) < len(pool):
            chosen = set(random.Random(self.seed).sample(range(len(pool)), int(limit)))
            checked = [x for k, x in enumerate(pool) if k in chosen]
        counts.update(
            samples=n,
            samples_truncated=sum(gens[i].finish_reason == "length" for i in ids),
            instructions_generated=generated,
            instructions_parsed=parsed,
            instructions_new=new,
            seeds=len(self.seeds),
            instructions=len(pool),
            instructions_checked=len(checked),
        )
        self._artifacts["autoif_augment.jsonl"] = "".join(json.dumps(s) + "\n" for s in samples)
        return checked

    def _verifiers(self, instructions: list[dict], generate: Generate, counts: dict) -> list[dict]:
        """Steps 2-3: K verifier replies per constraint, parsed and pooled per constraint
        (distinct functions, distinct cases), then cross-validated; returns the kept ones."""
        k_replies = int(self.cfg.k_verifiers)
        items = [
            (f"{x['id']}-v{k}", self.verifier_prompt(x["instruction"]))
            for x in instructions
            for k in range(k_replies)
        ]
        gens = generate(items, max_tokens=self._max_tokens("verifier"))
        failures: Counter = Counter()
        c: Counter = Counter()
        for x in instructions:
            funcs: dict[str, dict] = {}
            cases: dict[tuple[str, bool], None] = {}
            x["replies"] = []
            for k in range(k_replies):
                gen = gens[f"{x['id']}-v{k}"]
                reply = parse_verifier(gen.text, bool(self.cfg.string_booleans))
                c["replies_truncated"] += gen.finish_reason == "length"
                c["cases_parsed"] += len(reply.cases)
                c["cases_bad"] += reply.bad_cases
                c["network_lines_dropped"] += reply.network_lines
                # parsed: a JSON object with a `func` string, whether or not it compiles
                c["functions_parsed"] += reply.failure in (None, NO_EVALUATE, COMPILE_ERROR)
                if reply.failure:
                    failures[reply.failure] += 1
                else:
                    funcs.setdefault(func_key(reply.func), {"func": reply.func})
                cases.update(dict.fromkeys(reply.cases))
                x["replies"].append(
                    {"id": f"{x['id']}-v{k}", "failure": reply.failure, "raw": gen.text}
                )
            x["functions"] = [{"id": f"{x['id']}-f{n}", **f} for n, f in enumerate(funcs.values())]
            x["cases"] = [{"input": i, "output": o} for i, o in cases]
            c["functions_compiled"] += len(x["functions"])
            c["cases_unique"] += len(x["cases"])
        kept = self._cross_validate(instructions, counts)
        counts.update(
            verifier_replies=len(items),
            reply_failures=dict(failures),
            functions_parsed=c["functions_parsed"],
            functions_compiled=c["functions_compiled"],
            cases_parsed=c["cases_parsed"],
            cases_bad=c["cases_bad"],
            cases_unique=c["cases_unique"],
            replies_truncated=c["replies_truncated"],
            network_lines_dropped=c["network_lines_dropped"],
        )
        self._artifacts["autoif_instructions.jsonl"] = "".join(
            json.dumps(x, ensure_ascii=False) + "\n" for x in instructions
        )
        return kept

    def _cross_validate(self, instructions: list[dict], counts: dict) -> list[dict]:
        """Step 3: every function on every case of its constraint, in the sandbox."""
        todo = [x for x in instructions if x["functions"] and x["cases"]]
        items = [
            (f["func"], "evaluate", [[case["input"]] for case in x["cases"]])
            for x in todo
            for f in x["functions"]
        ]
        results = iter(
            run_programs(items, self.cfg.sandbox, "autoif cross-check", self.sandbox, counts)
        )
        min_acc = float(self.cfg.min_accuracy)
        min_funcs = self.cfg.min_functions or 1
        min_cases = self.cfg.min_cases or 1
        dropped: Counter = Counter()
        kept, funcs_kept, cases_kept = [], 0, 0
        for x in instructions:
            if not x["functions"]:
                x["failure"] = "no function"
            elif not x["cases"]:
                x["failure"] = "no case"
            else:
                expected = [case["output"] for case in x["cases"]]
                agree = []
                for f in x["functions"]:
                    res = next(results)
                    agree.append(agreement(res, expected))
                    if not res.ok:
                        f["error"] = res.error
                kf, kc, acc = select_verifiers(agree, min_acc)
                for n, f in enumerate(x["functions"]):
                    f["accuracy"], f["kept"] = acc[n], n in kf
                for n, case in enumerate(x["cases"]):
                    case["kept"] = n in kc
                if not kc:
                    x["failure"] = "no case agreed"
                elif not kf:
                    x["failure"] = "accuracy below min"
                elif len(kf) < min_funcs:
                    x["failure"] = "fewer than min_functions"
                elif len(kc) < min_cases:
                    x["failure"] = "fewer than min_cases"
                else:
                    x["failure"] = None
                    funcs_kept += len(kf)
                    cases_kept += len(kc)
                    kept.append(x)
            if x["failure"]:
                dropped[x["failure"]] += 1
        counts.update(
            instructions_cross_checked=len(todo),
            instructions_kept=len(kept),
            instructions_dropped=dict(dropped),
            functions_kept=funcs_kept,
            cases_kept=cases_kept,
        )
        return kept

    def _queries(self, counts: dict) -> list[str]:
        queries, qcounts = load_queries(
            self.queries_path, int(self.cfg.query_min_chars), int(self.cfg.query_max_chars)
        )
        counts.update(qcounts)
        if not queries:
            raise DataError(
                f"{self.queries_path}: no query of {self.cfg.query_min_chars}-"
                f"{self.cfg.query_max_chars} characters (scenario.queries)"
            )
        return queries

    def _pair_with_queries(
        self, kept: list[dict], queries: list[str], model_name: str, counts: dict
    ) -> list[Record]:
        """Step 4: one record per (kept constraint, query), carrying the kept functions."""
        per = min(int(self.cfg.queries_per_instruction), len(queries))
        counts["queries_per_instruction"] = per
        records = []
        for x in kept:
            # Seeded by the constraint itself: the same constraint gets the same queries in
            # every job (e.g. seed constraints kept by both a small and a large evolver).
            rng = random.Random(f"{self.seed}:{norm_text(x['instruction'])}")
            verifiers = [
                {"id": f["id"], "func": f["func"], "accuracy": f["accuracy"]}
                for f in x["functions"]
                if f["kept"]
            ]
            for q in sorted(rng.sample(range(len(queries)), per)):
                records.append(
                    make_record(
                        f"{x['id']}-q{q}",
                        x["instruction"],
                        queries[q],
                        "",
                        source_id=x["id"],
                        round=1,
                        method=METHOD,
                        model=model_name,
                        parse_ok=True,
                        parent_instruction=None,
                        instruction_source=x["source"],
                        query_id=f"q{q}",
                        verifiers=verifiers,
                        cases_kept=sum(case["kept"] for case in x["cases"]),
                    )
                )
        return records

    # -- step 5 (the runner's verification hook) ------------------------------------------------
    def verify(self, name: str, records: list[Record], generate: Generate) -> Verification | None:
        """Check every response with its constraint's kept functions and keep those accepted by
        at least `pass_rate` of them; with `dpo.enabled`, sample more responses and write chosen /
        rejected pairs to `dpo.jsonl`. Per-response results go to
        `verification.jsonl`. None with `verify_responses=false`: every response is kept."""
        if not self.cfg.verify_responses:
            log.info("autoif: %s: responses kept unchecked (scenario.verify_responses=false)", name)
            return None
        n_samples = self.cfg.dpo.samples if self.cfg.dpo.enabled else 0
        checkable = [r for r in records if r["meta"].get("verifiers")]
        texts: dict[str, list[str]] = {r["id"]: [r["output"]] for r in checkable}
        if n_samples:
            gens = generate(
                [
                    (f"{r['id']}-s{k}", self.respond_prompt(r))
                    for r in checkable
                    for k in range(n_samples)
                ]
            )
            for r in checkable:
                texts[r["id"]] += [gens[f"{r['id']}-s{k}"].text.strip() for k in range(n_samples)]
        sandbox_counts: dict[str, Any] = {}
        accepted = run_verifiers(checkable, texts, self.cfg.sandbox, self.sandbox, sandbox_counts)
        threshold = float(self.cfg.pass_rate)
        rows, kept, pairs = [], [], []
        for r in checkable:
            funcs = r["meta"]["verifiers"]
            # An empty response passes no constraint, whatever the functions say.
            rates = [
                sum(a.values()) / len(funcs) if t.strip() else 0.0
                for a, t in zip(accepted[r["id"]], texts[r["id"]])
            ]
            above = rates[0] > threshold if self.cfg.pass_rule == "above" else None
            passed = above if above is not None else rates[0] >= threshold
            row = {"id": r["id"], "pass_rate": rates[0], "passed": passed}
            row["functions"] = accepted[r["id"]][0]
            if n_samples:
                row["sample_pass_rates"] = rates[1:]
                if pair := dpo_pair(r, texts[r["id"]], rates):
                    pairs.append(pair)
            rows.append(row)
            if row["passed"]:
                kept.append({**r, "meta": {**r["meta"], "pass_rate": rates[0]}})
        files: dict[str, list[dict]] = {"verification.jsonl": rows}
        rates0 = [row["pass_rate"] for row in rows]
        counts: dict[str, Any] = {
            "responses": len(records),
            "responses_verified": len(rows),
            "responses_passed": len(kept),
            "responses_failed": len(rows) - len(kept),
            "responses_empty": sum(not r["output"].strip() for r in checkable),
            "unverifiable": len(records) - len(checkable),  # no verifier in meta: dropped
            "pass_rate_threshold": threshold,
            "pass_rule": self.cfg.pass_rule,
            "pass_rate_mean": sum(rates0) / len(rates0) if rates0 else None,
            **sandbox_counts,
        }
        if n_samples:
            files["dpo.jsonl"] = pairs
            counts.update(dpo_samples=n_samples, dpo_pairs=len(pairs))
        counts["kept"] = len(kept)
        return Verification(kept, counts, files)

    # -- step 6: the constraint-level cut (the runner's, before the respond stage) -----------------
    @staticmethod
    def constraints(records: list[Record]) -> list[str]:
        """The constraints of `records` (their `source_id`s), in record order."""
        return list(dict.fromkeys(r["meta"]["source_id"] for r in records))

    def cut_constraints(self, records: list[Record], size: int) -> list[Record]:
        """The records of a seeded sample of `size` constraints (all of them when there are no
        more), each constraint with every one of its queries, in record order."""
        ids = self.constraints(records)
        if size >= len(ids):
            return list(records)
        chosen = {ids[k] for k in random.Random(self.seed).sample(range(len(ids)), size)}
        return [r for r in records if r["meta"]["source_id"] in chosen]


def dpo_pair(record: Record, texts: list[str], rates: list[float]) -> Record | None:
    """Chosen: the response with the highest pass rate, if >= 0.5 (SPEC §3.5; the greedy one
    first on ties); rejected: the first with pass rate 0. Empty texts are neither. None when
    either is missing."""
    usable = [k for k, t in enumerate(texts) if t.strip()]
    if not usable:
        return None
    best = max(usable, key=lambda k: (rates[k], -k))
    worst = next((k for k in usable if rates[k] == 0), None)
    if rates[best] < DPO_CHOSEN_MIN or worst is None:
        return None
    return {
        "id": record["id"],
        "instruction": record["instruction"],
        "input": record["input"],
        "chosen": texts[best],
        "rejected": texts[worst],
        "meta": {
            "source_id": record["meta"].get("source_id"),
            "chosen_pass_rate": rates[best],
            "rejected_pass_rate": rates[worst],
            "chosen_from": "greedy" if best == 0 else f"sample {best - 1}",
            "rejected_from": "greedy" if worst == 0 else f"sample {worst - 1}",
        },
    }
