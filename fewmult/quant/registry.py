"""Name -> quantizer class, as timm's model registry: ``register``, ``create``, ``list``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from fewmult.errors import UserError

_REGISTRY: dict[str, tuple[type[nn.Module], dict]] = {}

Q = TypeVar("Q", bound=type[nn.Module])


def register_quantizer(name: str, **defaults) -> Callable[[Q], Q]:
    """Class decorator: make the quantizer available as ``name`` (with fixed default kwargs)."""

    def add(cls: Q) -> Q:
        if name in _REGISTRY:
            raise ValueError(f"quantizer {name!r} is registered twice")
        _REGISTRY[name] = (cls, defaults)
        return cls

    return add


def list_quantizers(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _entry(name: str) -> tuple[type[nn.Module], dict]:
    if name not in _REGISTRY:
        raise UserError(f"unknown quantizer {name!r}; registered: {', '.join(list_quantizers())}.")
    return _REGISTRY[name]


def quantizer_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (its class attributes state what it needs)."""
    return _entry(name)[0]


def create_quantizer(name: str, **kwargs) -> nn.Module:
    """A new quantizer instance; ``kwargs`` override the registered defaults."""
    cls, defaults = _entry(name)
    return cls(**{**defaults, **kwargs})
