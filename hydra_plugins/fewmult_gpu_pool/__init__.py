"""``hydra/launcher=gpu_pool``: jobs side by side on free slots (GPU or CPU), one process per slot."""
