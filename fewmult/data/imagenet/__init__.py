"""ImageNet (or any image folder in its layout) streamed from disk: decoded and augmented in
``DataLoader`` workers, normalized on the training device, resumable inside an epoch."""

from fewmult.data.imagenet.datamodule import ImageFolderData

__all__ = ["ImageFolderData"]
