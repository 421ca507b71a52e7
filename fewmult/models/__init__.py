"""The papers' architectures, built from their own notation."""

from fewmult.models.papernet import PaperNet, parse_arch

__all__ = ["PaperNet", "parse_arch"]
