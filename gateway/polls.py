"""One poll path: how ``GET /api/jobs/<id>`` is answered, decided here for both the WSGI
shortcut in front of Flask (fastpoll.py) and the Flask view (``api.get_job``).

``from_memory`` answers without reading the database when this process provably knows the
job's current version (relay/fresh.py): a 304 when ``If-None-Match`` names it, a 200 with the
JSON it holds for that version (the bus carried it, or an earlier poll read it). Otherwise
``from_database`` reads the job (and remembers its JSON for the next poll). ``long_poll``
waits for a change first. Each answer is counted once: ``gateway_polls_total{kind,status}``
and ``gateway_poll_reads_total{from}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Response

from gateway.context import Gateway
from gateway.http import etag, etag_of, not_modified, not_modified_headers, tag_matches
from gateway.jobjson import job_text
from gateway.models import Job

#: set in the WSGI environ when the shortcut already asked memory (the view does not ask again)
ASKED_MEMORY = "gateway.polls.asked_memory"


@dataclass(frozen=True)
class Answer:
    """A job read's answer: its status (200, 304, or another for a job just written), ETag and body."""

    status: int
    tag: str
    body: bytes = b""

    def headers(self) -> dict[str, str]:
        """The answer's own headers (the request id, security and CORS headers come on top)."""
        headers = not_modified_headers(self.tag)
        if self.status != 304:
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(self.body))
        return headers

    def response(self) -> Response:
        """The answer as Flask's response."""
        if self.status == 304:
            return not_modified(self.tag)
        return Response(self.body, self.status, self.headers())


def job_answer(job: Job, status: int = 200, text: str | None = None) -> Answer:
    """``job`` as answered to a read (``text``: its JSON, when already encoded)."""
    return Answer(status, etag_of(job), ((text if text is not None else job_text(job)) + "\n").encode())


def from_memory(gw: Gateway, job_id: str, if_none_match: str | None, admit: Callable[[], bool] | None = None) -> Answer | None:
    """The answer to a poll of ``job_id`` given without reading the database, or None (read it).
    ``admit``: asked last, before anything is counted (the shortcut's rate limit); False: None."""
    relay = gw.relay
    version = relay.remembered(job_id)
    if version is None:
        return None
    if not tag_matches(if_none_match, etag(job_id, version)) and relay.body_at(job_id, version) is None:
        return None  # neither a 304 nor a body: not worth the barrier
    if not relay.settle():
        return None
    version = relay.remembered(job_id)
    if version is None:
        return None
    tag = etag(job_id, version)
    if tag_matches(if_none_match, tag):
        answer = Answer(304, tag)
    elif (text := relay.body_at(job_id, version)) is not None:
        answer = Answer(200, tag, (text + "\n").encode())
    else:
        return None
    if admit is not None and not admit():
        return None
    if answer.status == 304:
        relay.answered_from_memory()
    _count(gw, "poll", answer.status, "memory")
    return answer


def from_database(gw: Gateway, job_id: str, if_none_match: str | None) -> Answer | None:
    """The answer to a poll of ``job_id`` from a database read; None when there is no such job."""
    found = gw.relay.read_job(job_id)
    if found is None:
        gw.metrics.count_poll("poll", "404")
        return None
    job, text = found
    answer = Answer(304, etag_of(job)) if tag_matches(if_none_match, etag_of(job)) else job_answer(job, text=text)
    _count(gw, "poll", answer.status, "database")
    return answer


def long_poll(gw: Gateway, job_id: str, if_none_match: str, seconds: float) -> Answer | None:
    """The job once it no longer matches ``if_none_match`` (a 200), or a 304 after ``seconds``;
    None when there is no such job. Answered from the relay's snapshot, as a subscription is."""
    snap = gw.relay.wait_for_change(job_id, if_none_match, seconds)
    if snap is None:
        gw.metrics.count_poll("long_poll", "404")
        return None
    tag = etag(job_id, snap.version)
    answer = Answer(304, tag) if tag_matches(if_none_match, tag) else Answer(200, tag, (snap.text + "\n").encode())
    gw.metrics.count_poll("long_poll", str(answer.status))
    return answer


def _count(gw: Gateway, kind: str, status: int, source: str) -> None:
    gw.metrics.count_poll(kind, str(status))
    gw.metrics.count_poll_read(source)
