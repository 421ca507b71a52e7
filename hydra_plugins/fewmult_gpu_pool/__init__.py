"""``hydra/launcher=gpu_pool``: one fresh process per job, bound to a free slot (GPU or CPU)."""
