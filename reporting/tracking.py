"""Weights & Biases tracking: one run per Hydra job, always finished (also when the job fails).

`group` is the sweep (multirun) or experiment, `config` the resolved Hydra config; per-round
metrics are logged with a `round` key, sample tables of evolved instructions per round, training
curves through Lightning's WandbLogger on the same run, and summary.json as the run summary.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.dist import is_leader
from core.records import Record
from core.redact import redact

log = logging.getLogger(__name__)


class Tracker:
    """No-op unless logger=wandb."""

    def __init__(
        self, cfg: DictConfig, run_dir: Path, group: str | None = None, name: str | None = None
    ):
        self.run = None
        self.cfg = cfg.get("logger") or {"name": "none"}
        if self.cfg.get("name") != "wandb" or not is_leader():
            return
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        from reporting.summary import hardware_facts

        # URLs redacted: a key in engine.base_url must not reach W&B.
        config = redact(OmegaConf.to_container(cfg, resolve=True))
        # The formats `auto` resolved to on this machine: runs on different hardware differ here.
        config["hardware"] = {k.split("/", 1)[1]: v for k, v in hardware_facts(cfg).items()}
        self.run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.get("entity"),
            group=self.cfg.get("group") or group,
            name=name,
            tags=list(self.cfg.get("tags") or []),
            config=config,
            dir=str(run_dir),
            reinit="finish_previous",
            # One W&B run per run folder: a job requeued after preemption (same folder,
            # core.config.launch_folder) or rerun in it continues its run, not a new one.
            id=run_id(run_dir),
            resume="allow",
        )
        log.info("wandb: run %s (%s) in %s", self.run.id, os.environ["WANDB_MODE"], self.run.dir)

    @property
    def active(self) -> bool:
        return self.run is not None

    def log_set(
        self, name: str, metrics: dict[str, Any], records: list[Record], scores: dict
    ) -> None:
        if not self.active:
            return
        from reporting.summary import flatten

        flat: dict[str, Any] = {}
        flatten("", metrics, flat)
        payload = {
            k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if name.startswith("round_"):
            payload["round"] = int(name.split("_")[1])
        payload[f"samples/{name}"] = self._table(records, scores)
        self.run.log(payload)

    def _table(self, records: list[Record], scores: dict):
        import wandb

        from metrics.base import sample_fields

        fields = sample_fields()  # every registered metric's per-record fields
        cols = ["id", "round", "method", "parent", "instruction", "output", *fields]
        table = wandb.Table(columns=cols)
        for r in records[: int(self.cfg.get("table_rows", 100))]:
            m, s = r.get("meta", {}), scores.get(r["id"], {})
            table.add_data(
                r["id"],
                m.get("round"),
                m.get("method"),
                m.get("parent_instruction"),
                r["instruction"],
                r.get("output", ""),
                *(s.get(f) for f in fields),
            )
        return table

    def lightning_logger(self):
        if not self.active:
            return None
        from pytorch_lightning.loggers import WandbLogger

        return WandbLogger(experiment=self.run)

    def finish(self, summary: dict | None, failed: bool = False) -> None:
        if not self.active:
            return
        if summary:
            self.run.summary.update(summary)
        self.run.finish(exit_code=1 if failed else 0)
        self.run = None


def run_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: a digest of its absolute path."""
    import hashlib

    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:20]


def sweep_group(sweep_dir: str) -> str:
    """The W&B group of a multirun's jobs (and of its verdict)."""
    return "sweep-" + str(sweep_dir).strip("/").replace("/", "-")


def log_verdict(config: Any, out_dir: Path) -> None:
    """The verdict (verdict.csv) as a W&B table, with its forest plot, in a run of its own
    (job type `verdict`) in the sweep's group; nothing unless logger=wandb."""
    lg = config.get("logger") or {}
    if lg.get("name") != "wandb" or not is_leader():
        return
    import csv

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    out_dir = Path(out_dir)
    with (out_dir / "verdict.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    run = wandb.init(
        project=lg.get("project"),
        entity=lg.get("entity"),
        group=lg.get("group") or sweep_group(config.hydra.sweep.dir),
        name="verdict",
        job_type="verdict",
        config={"compare": {"pair": list(config.compare.pair)}},
        dir=str(out_dir),
        reinit="finish_previous",
    )
    try:
        payload: dict[str, Any] = {"verdict": wandb.Table(columns=rows[0], data=rows[1:])}
        plot = out_dir / "plots" / "forest_verdict.png"
        if plot.is_file():
            payload["verdict_forest"] = wandb.Image(str(plot))
        run.log(payload)
    finally:
        run.finish()
