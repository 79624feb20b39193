"""Entry point: `python run.py [group=option ...] [key=value ...]`, or `-m` for a sweep.

Everything it does is named by the composed config (conf/); see README.md.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    from pipeline.runner import run_job

    return run_job(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
    from pipeline.runner import FAILED_JOBS

    if FAILED_JOBS:
        print(f"\n{len(FAILED_JOBS)} job(s) failed:", file=sys.stderr)
        for job in FAILED_JOBS:
            print(f"  {job['dir']}: {job['error']}", file=sys.stderr)
        sys.exit(1)
