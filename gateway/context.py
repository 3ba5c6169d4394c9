"""What a request handler reaches: the app's ``Gateway`` (config, sources, store, auth, relay, ...)
and the configured ``Source`` objects, built from the config by ``build_sources``.

``create_app`` (gateway/app.py) builds one ``Gateway`` and keeps it in
``app.extensions["gateway"]``; handlers get it with ``gateway()``. This module imports nothing
of the modules that serve the factory, so every one of them can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from adapters.base import Adapter
from adapters.registry import Registry
from gateway.auth import Auth
from gateway.background import Background
from gateway.config import Config, SourceConfig
from gateway.errors import ConfigError
from gateway.metrics import Metrics
from gateway.store import Store


@dataclass
class Source:
    """A configured source with its adapter instance."""

    config: SourceConfig
    adapter: Adapter

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Gateway:
    """Everything a request handler needs, owned by one app."""

    config: Config
    registry: Registry
    sources: dict[str, Source]
    store: Store
    auth: Auth
    metrics: Metrics
    relay: Any = None
    background: Background = field(default_factory=Background)
    extras: dict[str, Any] = field(default_factory=dict)


def gateway() -> Gateway:
    """The current app's Gateway."""
    return current_app.extensions["gateway"]


def build_sources(config: Config, registry: Registry) -> dict[str, Source]:
    """Instantiate each source's adapter; an unknown or broken adapter is a config error naming the key."""
    sources = {}
    for name, sc in config.sources.items():
        cls = registry.get(sc.adapter)
        if cls is None:
            why = registry.broken.get(sc.adapter)
            installed = ", ".join(sorted(registry.adapters)) or "none"
            detail = f"failed to load ({why})" if why else f"not installed (installed: {installed})"
            raise ConfigError(f"sources.{name}.adapter: adapter {sc.adapter!r} {detail}")
        options = dict(sc.options)
        for key in ("public_url", "api_base", "api_key_env"):
            if getattr(sc, key):
                options[key] = getattr(sc, key)
        allowed = set(cls.options_schema) | {"public_url", "api_base", "api_key_env"}
        for key in sc.options:
            if key not in allowed:
                raise ConfigError(f"sources.{name}.{key}: unknown setting for adapter {sc.adapter!r}")
        try:
            adapter = cls(options, tolerance=config.signature_tolerance)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"sources.{name}: adapter {sc.adapter!r} rejected its options: {exc}") from None
        sources[name] = Source(sc, adapter)
    return sources
