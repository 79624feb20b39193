"""Auto Evol-Instruct (SPEC §4): one evolving prompt in four steps (methods list, plan, rewrite,
final review); the final section is the evolved instruction and the whole trajectory is kept.

Beyond the paper's reference: the method analysis (each methods-list line summarised into a short
phrase, phrases counted per model) and the optimisation loop of the original Auto Evol-Instruct
(an optimiser reads failed evolutions on a development batch and rewrites the evolving method,
kept only if it lowers the failure rate there).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.records import Record
from core.templates import fill, load_template
from engines.base import Chat, Generation
from evolvers.base import (
    SCENARIOS,
    TEMPLATE_DIR,
    Generate,
    Scenario,
    ScenarioConfig,
    child_id,
    child_record,
    clean_evolution,
    evolve_counts,
)

log = logging.getLogger(__name__)

METHOD = "auto_evol"
# A section header is a line of its own start: optional markdown decoration (`#`, `**`, `>`, `-`),
# an optional "Step N", the header's words as whole words, then a closing `#`/`**`, a colon or the
# end of the line. Words inside an instruction ("planets", "an explanation", "what was rewritten")
# are never headers.
_HEADER = (
    r"^[ \t>*_#-]*(?:step[ \t]*\d+[ \t]*[.:)-]?[ \t]*)?[*_#]*[ \t]*{name}"
    r"(?:[ \t]*[*_#]+[ \t]*:?|[ \t]*:|(?=[ \t]*$))[*_#]*"
)
_SECTIONS = {
    name: re.compile(_HEADER.format(name=words), re.IGNORECASE | re.MULTILINE)
    for name, words in (
        ("methods_list", r"methods?[ \t]+list"),
        ("plan", r"plan"),
        ("rewritten", r"rewritten[ \t]+instruction"),
        ("final", r"finally[ \t]+rewritten[ \t]+instruction"),
    )
}
_IMPROVED = re.compile(r"#?\s*improved\s+method\s*#?\s*:?", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\w\))\s*")


def _last_match(rx: re.Pattern, text: str) -> re.Match | None:
    matches = list(rx.finditer(text))
    return matches[-1] if matches else None


def parse_trajectory(text: str) -> dict[str, str | None]:
    """The four sections of a reply; a missing section is None. The final section starts at the
    last "Finally Rewritten Instruction" header (replies often echo the format first) and runs to
    the end of the reply: nothing inside it is a header, whatever words the instruction uses. The
    other sections are the last of their headers before it."""
    final = _last_match(_SECTIONS["final"], text)
    head = text[: final.start()] if final else text
    found = [(final.start(), final.end(), "final")] if final else []
    for name, rx in _SECTIONS.items():
        m = _last_match(rx, head) if name != "final" else None
        if m:
            found.append((m.start(), m.end(), name))
    found.sort()
    out: dict[str, str | None] = dict.fromkeys(_SECTIONS)
    for k, (_, end, name) in enumerate(found):
        stop = found[k + 1][0] if k + 1 < len(found) else len(text)
        out[name] = text[end:stop].strip()
    return out


def method_lines(methods_list: str | None) -> list[str]:
    """Methods-list lines without headers, bullets or blanks."""
    lines = []
    for line in (methods_list or "").splitlines():
        s = _BULLET.sub("", line).strip().strip("*").strip()
        if not s or s.endswith(":") and len(s.split()) <= 4:
            continue
        lines.append(s)
    return lines


def normalise_phrase(text: str, max_words: int = 8) -> str:
    """The reply's first line, lowercase, without punctuation, at most `max_words` words."""
    first = (text.strip().splitlines() or [""])[0]
    return " ".join(re.sub(r"[^\w\s-]", " ", first.lower()).split()[:max_words])


@dataclass
class AutoEvolInstructConfig(ScenarioConfig):
    analyze_methods: bool = True  # summarise methods-list lines into phrases and count them
    # Who summarises the methods-list lines: null = each arm's own evolver; a conf/model name =
    # one model for every arm (the paper, §3.3: Qwen-2.5-72B-Instruct), so the phrases counted
    # differ only by the trajectories, not by who read them.
    summarizer: Any = None
    top_methods: int = 10
    optimize_steps: int = 0  # >0: rounds of evolving-method optimisation on a dev batch first
    dev_size: int = 8
    # null: the bundled template; a path: your own (same slots)
    templates: dict[str, str | None] = field(
        default_factory=lambda: dict.fromkeys(
            ("evolve", "method", "summarize_method", "optimize", "respond")
        )
    )


@SCENARIOS.register()
class AutoEvolInstruct(Scenario):
    name = "auto_evol_instruct"
    Config = AutoEvolInstructConfig

    def __init__(self, cfg: AutoEvolInstructConfig):
        super().__init__(cfg)
        t = cfg.templates
        self.template = load_template(TEMPLATE_DIR, "auto_evol/evolve.txt", t.get("evolve"))
        self.method = load_template(TEMPLATE_DIR, "auto_evol/method.txt", t.get("method")).strip()
        self.summarize = load_template(
            TEMPLATE_DIR, "auto_evol/summarize_method.txt", t.get("summarize_method")
        )
        self.optimize = load_template(TEMPLATE_DIR, "auto_evol/optimize.txt", t.get("optimize"))
        self.optimized = False
        self.optimization_log: list[dict] = []

    def greedy_role(self) -> tuple[Any, str]:
        return self.cfg.summarizer, "scenario.summarizer"

    def prompt(self, parent: Record, method: str | None = None) -> Chat:
        text = fill(self.template, method=method or self.method, instruction=parent["instruction"])
        return [{"role": "user", "content": text}]

    def evolution_prompt(self, record: Record) -> Chat:
        return self.prompt(
            {"instruction": record["meta"]["parent_instruction"]},
            record["meta"].get("evolving_method"),
        )

    def evolve_round(
        self,
        parents: list[Record],
        round_num: int,
        model_name: str,
        generate: Generate,
        greedy: Generate,
    ) -> list[Record]:
        if not self.optimized:
            self.optimized = True
            if self.cfg.optimize_steps > 0:
                self._optimise(parents, generate)
        ids = [child_id(p, round_num) for p in parents]
        gens = generate([(i, self.prompt(p)) for i, p in zip(ids, parents)])
        records = [self._record(p, round_num, model_name, gens[i], i) for i, p in zip(ids, parents)]
        if self.cfg.analyze_methods:
            self._analyse(records, greedy)
        return records

    def first_prompts(self, seeds: list[Record]) -> list[tuple[str, Chat]]:
        """Round 1's prompts with the initial evolving method (before any optimisation)."""
        return [(child_id(p, 1), self.prompt(p)) for p in seeds]

    def artifacts(self) -> dict[str, str]:
        """The evolving method used (after optimisation, when it ran)."""
        return {"auto_evol_method.txt": self.method + "\n"}

    def _record(
        self, parent: Record, round_num: int, model: str, gen: Generation, rid: str
    ) -> Record:
        traj = parse_trajectory(gen.text)
        trajectory = {k: traj[k] for k in ("methods_list", "plan", "rewritten")}
        return child_record(
            parent,
            clean_evolution(traj["final"] or ""),
            METHOD,
            round_num,
            model,
            gen,
            rid,
            failure="no final section" if traj["final"] is None else None,
            trajectory=trajectory,
            evolving_method=self.method,
        )

    def _analyse(self, records: list[Record], greedy: Generate) -> None:
        items = []
        for r in records:
            for k, line in enumerate(method_lines(r["meta"]["trajectory"]["methods_list"])):
                items.append((f"{r['id']}-m{k}", r, line))
        if not items:
            return
        gens = greedy(
            [
                (i, [{"role": "user", "content": fill(self.summarize, line=line)}])
                for i, _, line in items
            ]
        )
        for i, r, _ in items:
            phrase = normalise_phrase(gens[i].text)
            if phrase:
                r["meta"].setdefault("method_phrases", []).append(phrase)

    def _optimise(self, parents: list[Record], generate: Generate) -> None:
        dev = parents[: self.cfg.dev_size]
        best_rate, failures = self._dev_failures(dev, self.method, "opt0", generate)
        self.optimization_log.append({"step": 0, "failure_rate": best_rate, "kept": True})
        for step in range(1, int(self.cfg.optimize_steps) + 1):
            if not failures:
                break
            shown = "\n\n".join(
                f"Instruction: {p['instruction']}\nReply: {g.text[:600]}\nWhy it failed: {why}"
                for p, g, why in failures[:4]
            )
            prompt = [
                {"role": "user", "content": fill(self.optimize, method=self.method, failures=shown)}
            ]
            reply = generate([(f"opt{step}-optimizer", prompt)])[f"opt{step}-optimizer"].text
            m = _last_match(_IMPROVED, reply)
            candidate = (reply[m.end() :] if m else "").strip()
            if not candidate:
                self.optimization_log.append(
                    {
                        "step": step,
                        "failure_rate": None,
                        "kept": False,
                        "reason": "no improved method in the reply",
                    }
                )
                continue
            rate, cand_failures = self._dev_failures(dev, candidate, f"opt{step}", generate)
            kept = rate < best_rate
            self.optimization_log.append({"step": step, "failure_rate": rate, "kept": kept})
            if kept:
                self.method, best_rate, failures = candidate, rate, cand_failures
        log.info("auto_evol optimisation: %s", self.optimization_log)

    def _dev_failures(self, dev: list[Record], method: str, tag: str, generate: Generate):
        ids = [f"{tag}-{p['id']}" for p in dev]
        gens = generate([(i, self.prompt(p, method)) for i, p in zip(ids, dev)])
        failures = []
        for i, p in zip(ids, dev):
            rec = self._record(p, 1, "", gens[i], i)
            if not rec["meta"]["parse_ok"]:
                failures.append((p, gens[i], rec["meta"]["failure"]))
        return (len(failures) / len(dev) if dev else 0.0), failures

    def counts(self, records: list[Record]) -> dict[str, Any]:
        out = evolve_counts(records)
        phrases = Counter(p for r in records for p in r["meta"].get("method_phrases", []))
        out["method_analysis"] = {
            "lines": sum(
                len(method_lines(r["meta"]["trajectory"]["methods_list"])) for r in records
            ),
            "phrases_distinct": len(phrases),
            "top": [[p, n] for p, n in phrases.most_common(self.cfg.top_methods)],
        }
        if self.optimization_log:
            out["optimization"] = self.optimization_log
        return out
