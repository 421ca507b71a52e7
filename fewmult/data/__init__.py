"""Datasets served as tensors that live on the training device."""

from fewmult.data.datamodule import TensorDataModule
from fewmult.data.splits import Splits

__all__ = ["Splits", "TensorDataModule"]
