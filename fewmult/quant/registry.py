"""Name -> class registries, as timm's model registry: ``register``, ``create``, ``list``.

One for weight quantizers (``register_quantizer``, ``create_quantizer``, ``list_quantizers``), one
for activation quantizers (``register_activation``, ``create_activation``, ``list_activations``);
the tests are parametrized over both, so a newly registered class is tested at once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from fewmult.errors import UserError

Q = TypeVar("Q", bound=type[nn.Module])


class Registry:
    """Classes by name, each with fixed default keyword arguments (an alias is a name with defaults)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[type[nn.Module], dict]] = {}

    def register(self, name: str, **defaults) -> Callable[[Q], Q]:
        """Class decorator: make the class available as ``name`` (with fixed default kwargs)."""

        def add(cls: Q) -> Q:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = (cls, defaults)
            return cls

        return add

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def entry(self, name: str) -> tuple[type[nn.Module], dict]:
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}.")
        return self._entries[name]

    def create(self, name: str, **kwargs) -> nn.Module:
        """A new instance; ``kwargs`` override the registered defaults."""
        cls, defaults = self.entry(name)
        return cls(**{**defaults, **kwargs})


QUANTIZERS = Registry("quantizer")
ACTIVATIONS = Registry("activation")

register_quantizer = QUANTIZERS.register
list_quantizers = QUANTIZERS.names
create_quantizer = QUANTIZERS.create
register_activation = ACTIVATIONS.register
list_activations = ACTIVATIONS.names
create_activation = ACTIVATIONS.create


def quantizer_class(name: str) -> type[nn.Module]:
    """The weight quantizer class registered as ``name`` (its class attributes state what it needs)."""
    return QUANTIZERS.entry(name)[0]
