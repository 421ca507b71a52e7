"""``hydra/launcher=gpu_pool``: jobs side by side on free slots (GPU or CPU), each slot's jobs in one process."""
