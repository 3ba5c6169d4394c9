"""The WebSocket handshake is simple-websocket's (through flask-sock), but gateway/relay/ws.py
then takes over the socket with what simple-websocket keeps privately: ``ws.ws.connection``
(wsproto's frame state), ``ws.sock``, ``ws.mode`` and ``ws.connected``, and the
``thread_class`` option that keeps its reader thread from starting. pyproject.toml pins the
versions these hold for; this test breaks, rather than production, if an upgrade moves them."""

from __future__ import annotations

import base64
import os
import socket
import threading

import simple_websocket
from wsproto.connection import Connection as Protocol
from wsproto.connection import ConnectionState

from gateway.relay.ws import _NoReader


def handshake_environ(sock: socket.socket) -> dict[str, object]:
    key = base64.b64encode(os.urandom(16)).decode()
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/ws", "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1", "HTTP_CONNECTION": "Upgrade", "HTTP_UPGRADE": "websocket",
        "HTTP_SEC_WEBSOCKET_KEY": key, "HTTP_SEC_WEBSOCKET_VERSION": "13", "gunicorn.socket": sock,
    }


def test_the_private_attributes_the_relay_takes_over_are_there() -> None:
    server_side, client_side = socket.socketpair()
    started = threading.active_count()
    try:
        ws = simple_websocket.Server(handshake_environ(server_side), ping_interval=None, thread_class=_NoReader)
        assert client_side.recv(4096).startswith(b"HTTP/1.1 101")  # the handshake was answered
        assert ws.mode == "gunicorn"
        assert ws.sock is server_side
        assert isinstance(ws.ws.connection, Protocol) and ws.ws.connection.state == ConnectionState.OPEN
        assert ws.connected is True
        assert threading.active_count() == started  # thread_class: no reader thread was started
    finally:
        server_side.close()
        client_side.close()
