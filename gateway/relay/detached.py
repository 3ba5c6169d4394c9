"""Long-lived client sockets (WebSocket, SSE) served by the event loop once their request is over.

Under gunicorn's gevent worker a request is a greenlet, and a greenlet parked for hours on an
idle socket costs more memory than everything else a watcher holds: its saved C stack, its
Python frames, and the request it came in on (environ, parser, Flask context). So once a
WebSocket's handshake (an SSE stream's headers) is done, the socket is taken from the request
(``take_socket``) and ``Detached`` serves it: gevent's loop watches it for reads, a short-lived
greenlet handles what the client sends, and writes never block. The request then ends, and
with it its greenlet.

Writes are ordered and non-blocking: what the kernel cannot take at once waits in a small
backlog that a write watcher drains, so one slow reader never stalls a fan-out to the others;
a reader more than ``MAX_BACKLOG_BYTES`` behind is disconnected.

Outside the gevent worker (``take_socket`` returns None) a ``Detached`` still writes the same
way but its owner reads in the request's own thread, and a thread drains the backlog.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from gevent import spawn_raw

log = logging.getLogger("gateway.relay")

MAX_BACKLOG_BYTES = 1024 * 1024
RECEIVE_BYTES = 4096
READS_PER_WAKEUP = 16  # then the socket waits for its next turn of the event loop


def take_socket(environ: dict[str, Any], *, dry_run: bool = False) -> tuple[Any, Any] | None:
    """(event loop, non-blocking socket) taken from a request served by gunicorn's gevent worker,
    None under any other server. The request's socket object is left closed with its descriptor
    open, so the server's own close at the end of the request does not end the connection.
    ``dry_run``: only say whether it would work (returns ``(None, None)``)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None
    try:
        from gevent import get_hub, monkey
        from gevent.socket import socket as gevent_socket
    except ImportError:
        return None
    if not monkey.is_module_patched("socket") or not isinstance(sock, gevent_socket):
        return None
    if dry_run:
        return None, None
    plain = monkey.get_original("socket", "socket")
    raw = plain(fileno=sock.detach())
    raw.setblocking(False)
    return get_hub().loop, raw


class Detached:
    """One client socket: ordered non-blocking writes, and (once ``attach``-ed to the event loop)
    a read watcher. Subclasses say what the client's bytes mean (``_received``) and what ending
    releases (``_finished``)."""

    __slots__ = ("backlog", "backlog_bytes", "closed", "ending", "on_close", "raw", "reader", "sock", "writer")

    def __init__(self, sock: Any = None):
        self.sock = sock
        self.raw = getattr(sock, "_sock", sock)  # under gevent: the real non-blocking socket
        self.backlog: deque[bytes] | None = None
        self.backlog_bytes = 0
        self.closed = False
        self.ending = False  # close once the backlog is sent
        self.reader: Any = None
        self.writer: Any = None
        self.on_close: Callable[[], None] | None = None

    # -- the event loop's side ---------------------------------------------------------------------

    def attach(self, loop: Any, sock: Any, on_close: Callable[[], None] | None) -> None:
        """Serve ``sock`` (non-blocking, from ``take_socket``) from ``loop`` from now on;
        ``on_close`` runs once the connection is over."""
        self.sock = self.raw = sock
        self.on_close = on_close
        self.reader = loop.io(sock.fileno(), 1)
        self.reader.start(self._readable)

    def _readable(self) -> None:
        """Event-loop callback: the client sent something (or left); a short-lived greenlet reads."""
        self.reader.stop()
        spawn_raw(self._wakeup)

    def _wakeup(self) -> None:
        try:
            more = self._pump()
        except Exception:  # never leave a socket nobody reads
            log.exception("reading a client socket failed")
            more = False
        if more and not self.closed:
            self.reader.start(self._readable)
        else:
            self.finish()

    def _pump(self) -> bool:
        """Read what the socket has (a bounded amount) and act on it; False once the connection
        is over."""
        for _ in range(READS_PER_WAKEUP):
            if self.closed:
                return False
            try:
                data = self.sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data or not self._received(data):
                return False
        return not self.closed

    def _received(self, data: bytes) -> bool:
        """Act on bytes from the client; False when the connection is to close. This base
        discards them."""
        return True

    def finish(self) -> None:
        """The connection is over: stop watching, close the socket, release what it held (once)."""
        if self.reader is not None:
            self.reader.close()
        if self.writer is not None:
            self.writer.close()
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.closed = True
        self.backlog = None
        self._finished()
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close()

    def _finished(self) -> None:
        """What the subclass releases when the connection is over (called by every ``finish``)."""

    # -- writing ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` on the socket in order, without ever blocking the caller."""
        if self.closed or self.ending or not data:
            return
        if self.backlog is not None:
            self.backlog.append(data)
            self.backlog_bytes += len(data)
            if self.backlog_bytes > MAX_BACKLOG_BYTES:
                log.info("client reads too slowly; disconnecting")
                self.abort()
            return
        try:
            sent = self.raw.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self.backlog = deque([data[sent:]])
            self.backlog_bytes = len(data) - sent
            if self.reader is not None:
                if self.writer is None:
                    self.writer = self.reader.loop.io(self.sock.fileno(), 2)
                self.writer.start(self._writable)
            else:
                threading.Thread(target=self._drain, name="gateway-relay-drain", daemon=True).start()

    def end(self, data: bytes) -> None:
        """Write ``data`` last, then close once it is sent."""
        self.write(data)
        self.ending = True
        if self.backlog is None and not self.closed and self.reader is not None:
            self.abort(flush=True)

    def _writable(self) -> None:
        """Event-loop callback: the kernel takes more; send the backlog without blocking."""
        backlog = self.backlog
        while backlog:
            chunk = backlog[0]
            try:
                sent = self.sock.send(chunk)
            except BlockingIOError:
                return
            except OSError:
                self.abort()
                break
            self.backlog_bytes -= sent
            if sent < len(chunk):
                backlog[0] = chunk[sent:]
                return
            backlog.popleft()
        if self.backlog is backlog:
            self.backlog = None
        self.writer.stop()
        if self.ending and not self.closed:
            self.abort(flush=True)

    def _drain(self) -> None:
        """The backlog's own thread (blocking sends), when not attached to the event loop."""
        try:
            while self.backlog:
                chunk = self.backlog.popleft()
                self.backlog_bytes -= len(chunk)
                self.sock.sendall(chunk)
            self.backlog = None
        except OSError:
            self.abort()

    def abort(self, flush: bool = False) -> None:
        """Drop the connection (``flush``: after what the kernel holds is sent); the reader
        notices and finishes."""
        if self.closed:
            return
        self.closed = True
        self.backlog = None
        if self.writer is not None:
            self.writer.stop()
        try:
            self.raw.shutdown(socket.SHUT_WR if flush else socket.SHUT_RDWR)
        except OSError:
            pass
        if flush and self.reader is not None:
            spawn_raw(self.finish)  # the peer may never close its side
