"""One training job: what ``python -m fewmult.train`` runs once Hydra has composed and checked the config."""
