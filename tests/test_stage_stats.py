"""A stage's declared `stats` (`<stage>/<key>` in summary.json) are headline numbers like a
metric's: a column of comparison.md, a row of the verdict (on the stage's per-item file, or over
the arms' seeds without one), their direction from `higher_is_better`, printed in the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from core.fields import Stat
from core.stage import STAGES, Stage, StageResult, stat_for_stage
from reporting.compare import compare
from reporting.summary import direction, is_headline, print_summary


class Tally(Stage):
    name = "tally"
    order = 49
    stats = (
        Stat("kept_words", higher_is_better=True, headline=True, of="words"),
        Stat("errors", higher_is_better=False, headline=True),
        Stat("calls"),  # no headline, no direction: a fact, never compared
    )

    def run(self, ctx, inputs):
        return StageResult()


@pytest.fixture
def tally():
    STAGES.add(Tally.name, Tally)
    yield Tally
    STAGES.remove(Tally.name)


def _job(sweep: Path, num: int, model: str, seed: int, summary: dict, words=None) -> Path:
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n- seed={seed}\n")
    if words is not None:  # the stage's per-item file
        (d / "tally").mkdir()
        (d / "tally" / "items.jsonl").write_text(
            "".join(json.dumps({"id": f"i{i}", "words": w}) + "\n" for i, w in enumerate(words))
        )
    (d / "summary.json").write_text(json.dumps({"status": "ok", "rounds": 1, **summary}))
    return d


def _verdict(sweep: Path) -> dict[str, dict]:
    with (sweep / "verdict.csv").open() as f:
        return {r["metric"]: r for r in csv.DictReader(f)}


def test_the_registry_knows_a_stage_stat(tally):
    assert stat_for_stage("tally/errors")[1].higher_is_better is False
    assert direction("tally/kept_words") is True and direction("tally/errors") is False
    assert direction("tally/calls") is None
    assert is_headline("tally/kept_words") and is_headline("tally/errors")
    assert not is_headline("tally/calls") and not is_headline("tally/nope")


def test_stage_stats_are_columns_and_verdict_rows(tmp_path, tally):
    """On the per-item file (`<stage>/items.jsonl`) where it has one, else over seeds; the
    direction decides which arm is better."""
    rng = np.random.default_rng(0)
    sweep = tmp_path / "sweep"
    n = 0
    for model, centre, errors in (("a", 30.0, 1.0), ("b", 10.0, 9.0)):
        for seed in (0, 1, 2):
            words = rng.normal(centre, 2.0, 40)
            summary = {
                "tally/kept_words": float(words.mean()),
                "tally/errors": errors + 0.1 * seed,
                "tally/calls": 5,
            }
            _job(sweep, n, model, seed, summary, words.tolist())
            n += 1
    compare([sweep], quiet=True, pair=("model=a", "model=b"))
    md = (sweep / "comparison.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model | seeds"))
    assert "tally/kept_words" in header and "tally/errors" in header
    assert "tally/calls" not in header
    rows = _verdict(sweep)
    assert rows["tally/kept_words"]["verdict"] == "A better"  # more words, higher is better
    assert (
        rows["tally/kept_words"]["test"] == "permutation"
        and rows["tally/kept_words"]["items"] == "240"
    )
    errors = rows["tally/errors"]  # no per-item file: the arms' three seeds each
    assert errors["test"] == "permutation over seeds" and errors["items"] == "6"
    assert float(errors["diff"]) < 0 and errors["verdict"] in (
        "A better",
        "no detectable difference at 95%",
    )
    assert "tally/calls" not in rows
    assert "tally/errors" in (sweep / "verdict.md").read_text()


def test_a_lower_is_better_stage_stat_names_the_lower_arm(tmp_path, tally):
    """Per-item data where lower is better: the arm with fewer errors wins, and it is bold."""
    rng = np.random.default_rng(1)
    sweep = tmp_path / "sweep"

    class Errors(Stage):
        name = "errs"
        stats = (Stat("rate", higher_is_better=False, headline=True, of="err"),)

    STAGES.add(Errors.name, Errors)
    try:
        for n, (model, p) in enumerate((("a", 0.8), ("b", 0.1))):
            d = sweep / str(n)
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n")
            err = (rng.random(200) < p).astype(float)
            (d / "errs").mkdir()
            (d / "errs" / "items.jsonl").write_text(
                "".join(json.dumps({"id": f"x{i}", "err": e}) + "\n" for i, e in enumerate(err))
            )
            summary = {"status": "ok", "rounds": 1, "errs/rate": float(err.mean())}
            (d / "summary.json").write_text(json.dumps(summary))
        compare([sweep], quiet=True, pair=("model=a", "model=b"))
        row = _verdict(sweep)["errs/rate"]
        assert float(row["diff"]) > 0 and row["verdict"] == "B better"
        table = (sweep / "comparison.md").read_text()
        line_b = next(line for line in table.splitlines() if line.startswith("| 1 |"))
        assert "**" in line_b  # significantly best (the lower rate)
        summary = json.loads((sweep / "1" / "summary.json").read_text())
        from reporting.items import intervals

        ci = intervals(sweep / "1", summary)
        assert ci["errs/rate_ci_low"] < summary["errs/rate"] < ci["errs/rate_ci_high"]
    finally:
        STAGES.remove(Errors.name)


def test_the_printed_summary_shows_a_stage_headline(tmp_path, tally, capsys):
    summary = {
        "model": "m",
        "scenario": "evol_instruct",
        "rounds": 1,
        "tally/kept_words": 12.5,
        "tally/calls": 3,
    }
    print_summary(summary, tmp_path)
    out = capsys.readouterr().out
    assert "tally/kept_words" in out and "12.5" in out and "tally/calls" not in out
