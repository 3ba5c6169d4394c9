"""What a request handler reaches: the app's ``Gateway``, its services (gateway/services.py) and
the components ``create_app`` builds from them, each a typed attribute.

``create_app`` (gateway/app.py) builds one ``Gateway`` and keeps it in
``app.extensions["gateway"]``; handlers get it with ``gateway()``. The components receive the
``Services`` only, so none of them imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from gateway.limits import Limits
from gateway.outbox import Outbox
from gateway.relay.relay import Relay
from gateway.services import Services
from gateway.simulator import Simulator
from gateway.watchdog import Watchdog


@dataclass(kw_only=True)
class Gateway(Services):
    """Everything a request handler needs, owned by one app. The components are set by
    ``create_app`` right after the services exist; ``simulator`` only with ``demo = true``."""

    limits: Limits = field(init=False)
    relay: Relay = field(init=False)
    outbox: Outbox = field(init=False)
    watchdog: Watchdog = field(init=False)
    simulator: Simulator | None = None
    alembic_head: str | None = None  # the migration the code expects, read once by /readyz


def gateway() -> Gateway:
    """The current app's Gateway."""
    gw: Gateway = current_app.extensions["gateway"]
    return gw
