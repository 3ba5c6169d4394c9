"""The services every part of the gateway is built from: config, the configured sources with their
adapters, store, auth, metrics and the background runner.

``Services`` is what the components (relay, outbox, watchdog, simulator, limits) receive; the
app's ``Gateway`` (gateway/context.py) is these services plus those components. Nothing here
imports a component, so every component can import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.base import Adapter
from adapters.registry import Registry
from gateway.auth import Auth
from gateway.background import Background
from gateway.config import COMMON_SOURCE_KEYS, Config, SourceConfig, did_you_mean
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


@dataclass(kw_only=True)
class Services:
    """The shared services of one app."""

    config: Config
    registry: Registry
    sources: dict[str, Source]
    store: Store
    auth: Auth
    metrics: Metrics
    background: Background = field(default_factory=Background)


def build_sources(config: Config, registry: Registry) -> dict[str, Source]:
    """Instantiate each source's adapter; an unknown or broken adapter is a config error naming the key."""
    sources = {}
    for name, sc in config.sources.items():
        cls = registry.get(sc.adapter)
        if cls is None:
            why = registry.broken.get(sc.adapter)
            installed = ", ".join(sorted(registry.adapters)) or "none"
            hint = did_you_mean(sc.adapter, registry.adapters)
            detail = f"failed to load ({why})" if why else f"not installed{hint} (installed: {installed})"
            raise ConfigError(f"sources.{name}.adapter: adapter {sc.adapter!r} {detail}")
        options = dict(sc.options)
        for key in ("public_url", "api_base", "api_key_env"):
            if getattr(sc, key):
                options[key] = getattr(sc, key)
        allowed = set(cls.options_schema) | {"public_url", "api_base", "api_key_env"}
        for key in sc.options:
            if key not in allowed:
                hint = did_you_mean(key, allowed | set(COMMON_SOURCE_KEYS))
                raise ConfigError(f"sources.{name}.{key}: unknown setting for adapter {sc.adapter!r}{hint}")
        try:
            adapter = cls(options, tolerance=config.signature_tolerance)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"sources.{name}: adapter {sc.adapter!r} rejected its options: {exc}") from None
        sources[name] = Source(sc, adapter)
    return sources
