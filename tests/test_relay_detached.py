"""WebSockets and SSE streams served by the event loop once detached from their request
(gateway/relay/detached.py, ws.py, sse.py): a real app on SQLite, a real socket pair and
gevent's event loop in this process, the WebSocket client side spoken with wsproto. The same
paths under a real gunicorn are covered by tests/test_relay.py."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import get_hub
from wsproto.connection import Connection as Protocol
from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection, Ping, Pong, TextMessage

from gateway.relay.detached import MAX_BACKLOG_BYTES
from gateway.relay.hub import Snapshot, http_chunk, ws_text_frame
from gateway.relay.sse import LAST_CHUNK, RETRY, Stream
from gateway.relay.ws import Connection
from tests.conftest import API_KEY, register
from tests.gwapp import gw_of, make_app
from tests.loadgen import wait_for


def turn_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Run the event loop until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        gevent.sleep(0.005)


class Client:
    """The browser's end of a socket pair: masked frames out, events in, never blocking the loop."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.setblocking(False)
        self.proto = Protocol(ConnectionType.CLIENT)
        self.events: list[Any] = []
        self.raw = bytearray()
        self.eof = False

    def send(self, event: Any) -> None:
        self.sock.sendall(self.proto.send(event))

    def pump(self, keep_raw: bool = False) -> None:
        while not self.eof:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                return
            if keep_raw:
                self.raw += data
            else:
                self.proto.receive_data(data)
                self.events.extend(self.proto.events())

    def next_event(self) -> Any:
        turn_until(lambda: (self.pump(), bool(self.events))[1], "a frame from the server")
        return self.events.pop(0)


@pytest.fixture
def app(sqlite_url: str, tmp_path: Path) -> Any:
    return make_app(sqlite_url, tmp_path, extra_gateway="ws_ping_interval = 0")


@pytest.fixture
def opened(app: Any) -> Iterator[Callable[..., tuple[Connection, Client, list[int]]]]:
    made: list[tuple[socket.socket, socket.socket]] = []

    def open_(sndbuf: int | None = None) -> tuple[Connection, Client, list[int]]:
        server_end, client_end = socket.socketpair()
        made.append((server_end, client_end))
        if sndbuf:
            server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            client_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        server_end.setblocking(False)
        released: list[int] = []
        conn = Connection(gw_of(app).relay, Protocol(ConnectionType.SERVER), server_end)
        conn.detach(get_hub().loop, server_end, lambda: released.append(1))
        return conn, Client(client_end), released

    yield open_
    for pair in made:
        for s in pair:
            s.close()


def test_frames_the_kernel_cannot_take_at_once_arrive_whole_and_in_order(opened: Any) -> None:
    conn, client, _ = opened(sndbuf=4096)
    # frames larger than the buffer: the kernel takes parts of them
    frames = [ws_text_frame(json.dumps({"n": i, "pad": "x" * 20000}).encode()) for i in range(30)]
    for frame in frames:
        conn.write(frame)
    assert conn.backlog, "the test needs frames waiting behind a full socket buffer"
    expected = b"".join(frames)
    turn_until(lambda: (client.pump(keep_raw=True), len(client.raw) >= len(expected))[1], "every frame")
    assert bytes(client.raw) == expected
    assert not conn.closed and conn.backlog is None


def test_a_reader_too_far_behind_is_disconnected_and_releases_its_slot(app: Any, opened: Any) -> None:
    conn, client, released = opened(sndbuf=4096)
    frame = ws_text_frame(b"x" * 8000)
    for _ in range(MAX_BACKLOG_BYTES // len(frame) + 10):
        conn.write(frame)
    assert conn.closed
    turn_until(lambda: (client.pump(keep_raw=True), client.eof)[1], "the server to hang up")
    turn_until(lambda: released == [1], "the connection slot to be released")
    assert conn not in gw_of(app).relay.connections


def test_pings_fragments_and_the_closing_handshake(app: Any, opened: Any) -> None:
    conn, client, released = opened()
    client.send(Ping(payload=b"are you there"))
    assert client.next_event() == Pong(payload=b"are you there")

    # one message in two frames is one message
    client.send(TextMessage(data='{"type": "non', message_finished=False))
    client.send(TextMessage(data='sense"}', message_finished=True))
    event = client.next_event()
    assert json.loads(event.data) == {"type": "error", "job": None, "code": "invalid_message"}

    conn.ping()
    assert isinstance(client.next_event(), Ping)
    client.send(Pong())
    turn_until(lambda: conn.pong_received, "the pong to be read")
    conn.ping()  # answered: not dropped
    assert not conn.closed and isinstance(client.next_event(), Ping)
    conn.ping()  # not answered this time: dropped
    assert conn.closed
    turn_until(lambda: released == [1], "the connection to finish")

    conn, client, released = opened()
    client.send(CloseConnection(code=1000, reason="bye"))
    assert client.next_event() == CloseConnection(code=1000, reason="bye")
    turn_until(lambda: (client.pump(), client.eof)[1], "the server to hang up")
    assert released == [1] and conn not in gw_of(app).relay.connections


def test_a_message_over_the_hard_ceiling_closes_with_1009(opened: Any) -> None:
    conn, client, released = opened()
    for _ in range(20):  # 80 KB in frames of one message: over the 64 KB ceiling before it ends
        client.send(TextMessage(data="x" * 4096, message_finished=False))
    event = client.next_event()
    assert isinstance(event, CloseConnection) and event.code == 1009
    turn_until(lambda: released == [1], "the connection to finish")


def test_subscriptions_end_with_the_connection(app: Any, opened: Any) -> None:
    relay = gw_of(app).relay
    job = register(app.test_client())["job"]
    conn, client, released = opened()
    client.send(TextMessage(data=json.dumps({"type": "subscribe", "job": job["id"], "token": API_KEY})))
    frame = json.loads(client.next_event().data)
    assert frame["type"] == "job" and frame["job"]["id"] == job["id"]
    assert conn in relay.hub.watchers[job["id"]]

    client.sock.close()  # gone without a closing handshake
    turn_until(lambda: released == [1], "the connection to finish")
    assert job["id"] not in relay.hub.watchers and conn not in relay.connections


def test_under_a_threaded_server_the_request_thread_serves_the_socket(app: Any) -> None:
    """No gevent worker (here werkzeug's threaded server): the request's own thread reads the
    socket until it closes; the protocol is the same."""
    import threading

    import websocket
    from werkzeug.serving import make_server

    job = register(app.test_client())["job"]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relay = gw_of(app).relay
    try:
        conn = websocket.create_connection(f"ws://127.0.0.1:{server.server_port}/ws", timeout=10, suppress_origin=True)
        conn.send("not json")
        assert json.loads(conn.recv()) == {"type": "error", "job": None, "code": "invalid_message"}
        conn.send(json.dumps({"type": "subscribe", "job": job["id"], "token": API_KEY}))
        assert json.loads(conn.recv())["job"]["id"] == job["id"]
        conn.send_close(1000, b"bye")
        frame = conn.recv_frame()
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(frame.data[:2], "big") == 1000
        conn.close()
        wait_for(lambda: job["id"] not in relay.hub.watchers, 10, "the subscription to end with the connection")
        assert not relay.connections
    finally:
        server.shutdown()


def test_a_stream_sends_what_arrived_before_its_head_after_it_and_ends_after_complete(app: Any) -> None:
    relay = gw_of(app).relay
    job = register(app.test_client())["job"]
    snap = relay.hub.current(job["id"])
    assert snap is not None
    done = Snapshot({**snap.job, "version": snap.version + 1, "state": "complete"})
    stream = Stream(relay, job["id"], last=-1)
    stream.deliver(done)  # from the hub, before the response head is out
    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    client = Client(client_end)
    try:
        stream.start(get_hub().loop, server_end, b"HTTP/1.1 200 OK\r\n\r\n", snap)
        turn_until(lambda: (client.pump(keep_raw=True), client.eof)[1], "the stream to end")
        assert bytes(client.raw) == b"HTTP/1.1 200 OK\r\n\r\n" + http_chunk(RETRY) + snap.sse_chunk + done.sse_chunk + LAST_CHUNK
        turn_until(lambda: stream not in relay.streams, "the stream to finish")
    finally:
        server_end.close()
        client_end.close()
