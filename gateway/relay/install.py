"""Wiring the relay into an app: ``init_app`` builds this process's ``Relay`` and registers its
transports (``/ws``, the SSE route) and periodic work (resync, prune)."""

from __future__ import annotations

from flask import Flask

from gateway.relay.relay import Relay
from gateway.relay.sse import bp as sse_bp
from gateway.relay.ws import init_ws
from gateway.services import Services


def init_app(app: Flask, gw: Services) -> Relay:
    """The app's relay; sets ``gw.store.bus`` and registers ``/ws``, the SSE route and the resync."""
    relay = Relay(gw, gw.config.bus)
    gw.background.on_stop.append(relay.stop)
    gw.store.bus = relay.bus
    app.register_blueprint(sse_bp)
    init_ws(app, relay)
    if gw.config.resync_interval:
        gw.background.every(gw.config.resync_interval, "relay-resync")(relay.resync)
    prune = getattr(relay.bus, "prune", None)
    if prune is not None:
        gw.background.every(60, "relay-prune")(prune)
    return relay
