"""Hydra entry point: ``python -m fewmult.train [overrides]``.

Composes the config, loads the data, builds the model and trains it with Lightning
(:mod:`fewmult.run.job`), writing the run contract into the Hydra output folder: ``results.json``,
``metrics.csv``, ``layers.csv``, ``checkpoints/`` and ``wandb/``.

Nothing heavy is imported here: Hydra reports a typo in an option, and
:class:`fewmult.preflight.RefuseBeforeFolder` a bad value, before torch and Lightning load.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fewmult.config import CONF_DIR, register_resolvers

register_resolvers()  # before Hydra composes: output folders and the default device use them


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from fewmult.run.job import run_job  # torch and Lightning, once the config has passed its checks

    return run_job(cfg)


if __name__ == "__main__":
    main()
