"""Adapters are found through the entry-point group ``gateway.adapters``, built-ins included.

A plugin package declares ``[project.entry-points."gateway.adapters"] name = "pkg.mod:Class"``
and is found after ``pip install`` with no change to the gateway. A plugin that fails to load
is reported by name and does not take the others down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from adapters.base import Adapter

GROUP = "gateway.adapters"
log = logging.getLogger("gateway.adapters")


@dataclass
class Registry:
    adapters: dict[str, type[Adapter]] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # name -> why it did not load
    origins: dict[str, str] = field(default_factory=dict)  # name -> "module:Class (distribution)"

    def get(self, name: str) -> type[Adapter] | None:
        return self.adapters.get(name)


def load_registry() -> Registry:
    """Every adapter registered under the entry-point group; broken ones listed with the reason."""
    registry = Registry()
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"{ep.value} ({dist.name if dist else '?'})"
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Adapter)):
                raise TypeError(f"{ep.value} is not an adapters.Adapter subclass")
        except Exception as exc:  # a broken plugin must not stop the gateway
            registry.broken[ep.name] = f"{type(exc).__name__}: {exc}"
            log.error("adapter plugin failed to load", extra={"adapter": ep.name, "error": registry.broken[ep.name]})
            continue
        registry.adapters[ep.name] = cls
        registry.origins[ep.name] = origin
    return registry
