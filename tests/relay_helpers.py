"""Real clients for the relay tests: a WebSocket watcher, an SSE reader, signed webhooks."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
import websocket

from tests.signing import STANDARD_SECRET, iso_now, standard_body, standard_headers


def post_webhook(base: str, external_id: str, state: str, source: str = "worker", offset_ms: int = 0, **fields: Any) -> requests.Response:
    """A Standard Webhooks delivery signed with the library's own signer."""
    body = standard_body(external_id, state, occurred_at=iso_now(offset_ms), **fields)
    r = requests.post(f"{base}/webhooks/{source}", data=body, headers=standard_headers(STANDARD_SECRET, body), timeout=10)
    assert r.status_code == 200, r.text
    return r


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


class Watcher:
    """A websocket-client connection whose frames a background thread collects."""

    def __init__(self, base: str, **kw: Any):
        kw.setdefault("suppress_origin", True)  # not a browser: no Origin header
        self.ws = websocket.create_connection(ws_url(base), timeout=10, **kw)
        self.frames: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                data = self.ws.recv()
                if not data:
                    break
                self.frames.put(json.loads(data))
        except Exception:
            pass
        finally:
            self.closed.set()

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            self.ws.send(json.dumps(message))
        elif isinstance(message, bytes):
            self.ws.send_binary(message)
        else:
            self.ws.send(message)

    def subscribe(self, job: str, token: str, since: int | None = None) -> None:
        msg: dict[str, Any] = {"type": "subscribe", "job": job, "token": token}
        if since is not None:
            msg["since"] = since
        self.send(msg)

    def next(self, timeout: float = 10) -> dict[str, Any]:
        frame = self.frames.get(timeout=timeout)
        self.seen.append(frame)
        return frame

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
        """The first frame (from now) that satisfies ``pred``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching frame within {timeout}s; seen {self.seen[-5:]}")
            try:
                frame = self.next(left)
            except queue.Empty:
                continue
            if pred(frame):
                return frame

    def wait_for_all(self, *preds: Callable[[dict[str, Any]], bool], timeout: float = 15) -> list[dict[str, Any]]:
        """One frame for each predicate, in whatever order they arrive (changes committed together
        reach a watcher in no promised order); fails after ``timeout``."""
        found: list[dict[str, Any] | None] = [None] * len(preds)
        deadline = time.monotonic() + timeout
        while any(f is None for f in found):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [i for i, f in enumerate(found) if f is None]
                raise AssertionError(f"predicates {missing} unmatched within {timeout}s; seen {self.seen[-5:]}")
            try:
                frame = self.next(left)
            except queue.Empty:
                continue
            for i, pred in enumerate(preds):
                if found[i] is None and pred(frame):
                    found[i] = frame
        return [f for f in found if f is not None]

    def nothing_within(self, seconds: float) -> list[dict[str, Any]]:
        """Frames that arrive within ``seconds`` (for "nothing else was sent" checks)."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.next(left))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def job_frame(job_id: str, **expect: Any) -> Callable[[dict[str, Any]], bool]:
    """A predicate: a ``job`` frame for ``job_id`` whose job has every given key/value."""

    def pred(frame: dict[str, Any]) -> bool:
        if frame.get("type") != "job" or frame["job"]["id"] != job_id:
            return False
        return all(_get(frame["job"], k) == v for k, v in expect.items())

    return pred


def _get(job: dict[str, Any], key: str) -> Any:
    value: Any = job
    for part in key.split("__"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class SSEReader:
    """A streaming ``requests`` reader of ``text/event-stream``, parsed per the HTML spec."""

    def __init__(self, base: str, job_id: str, token: str, last_event_id: str | None = None):
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(f"{base}/api/jobs/{job_id}/stream", params={"token": token}, headers=headers, stream=True, timeout=(5, 60))
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.comments: list[str] = []
        self.retry: int | None = None
        self.ended = threading.Event()
        if self.response.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.ended.set()

    def _read(self) -> None:
        event: dict[str, Any] = {}
        try:
            for line in self.response.iter_lines(decode_unicode=True, chunk_size=1):
                if line == "":
                    if "data" in event:
                        event["json"] = json.loads(event["data"])
                        self.events.put(event)
                    event = {}
                elif line.startswith(":"):
                    self.comments.append(line)
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "retry":
                        self.retry = int(value)
                    else:
                        event[name] = event.get(name, "") + value if name == "data" and "data" in event else value
        except Exception:
            pass
        finally:
            self.ended.set()

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if pred(event):
                return event
        raise AssertionError(f"no matching SSE event within {timeout}s")

    def close(self) -> None:
        self.response.close()
