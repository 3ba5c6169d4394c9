"""The conformance kit: one test class that proves an adapter keeps the gateway's promises.

An adapter author subclasses ``AdapterConformance`` in a pytest module (named ``Test…`` so
pytest collects it), supplies a signing function and a few sample payloads, and gets the
whole battery::

    from adapters.testing import AdapterConformance
    from gateway.states import State

    class TestAcmeAdapter(AdapterConformance):
        adapter_class = AcmeAdapter
        secrets = ("secret-one", "secret-two")     # two: rotation is part of the battery
        wrong_secret = "not-the-secret"
        samples = [({"id": "evt_1", "job": "j1", "status": "done"}, State.COMPLETE)]

        def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
            return {"Acme-Signature": hmac_hex(secret, f"{timestamp}.".encode() + body),
                    "Acme-Timestamp": str(timestamp)}, "https://gw.example.com/webhooks/acme"

The battery: a valid delivery is accepted; a tampered body, a wrong secret, a stale and a
future timestamp are rejected with ``SignatureError``; either of two rotating secrets is
accepted; ``parse`` is deterministic and returns well-formed events; fuzzed bodies and headers
only ever raise ``SignatureError`` / ``PayloadError``; each sample maps to its stated state.

An adapter with ``signs_body = False`` (a fixed header token or basic auth: see
``adapters.base.Adapter.signs_body``) cannot fail a tampered body or a stale timestamp, so those
are skipped, and what still applies is checked instead: the token is compared in constant time
(``hmac.compare_digest``, e.g. through ``check_header_token``; checked for every adapter), a near miss (one character off,
a prefix, an extension) is refused, a missing header is refused, and rotation works. Its
``sign`` returns the headers carrying the token, whatever the body.

This module needs pytest and hypothesis (the gateway's ``test`` extra); the gateway itself
never imports it.
"""

from __future__ import annotations

import copy
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar
from unittest import mock
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import Adapter, ProviderEvent, WebhookRequest
from gateway.errors import PayloadError, SignatureError
from gateway.states import State

DECLARED = (SignatureError, PayloadError)
RECEIVED_AT = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)

#: any JSON value, nested a little: what a fuzzed field may hold
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
#: each subclass runs the same fuzz methods: a different executor by design
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.differing_executors])


def key_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a JSON document (dict keys and list indexes)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            out.append(prefix + (key,))
            out.extend(key_paths(child, prefix + (key,)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out.append(prefix + (index,))
            out.extend(key_paths(child, prefix + (index,)))
    return out


def mutate(doc: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    """A copy of ``doc`` with the item at ``path`` replaced by ``value``, or deleted."""
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


class AdapterConformance:
    """Subclass as ``Test<Something>``; set the attributes and ``sign``. Not collected by itself."""

    #: the adapter under test, built as ``adapter_class(options, tolerance=tolerance)``
    adapter_class: ClassVar[type[Adapter]]
    options: ClassVar[Mapping[str, Any]] = {}
    tolerance: ClassVar[int] = 300
    #: two active secrets: the battery proves rotation with them
    secrets: ClassVar[tuple[str, str]]
    #: a well-formed secret that is not one of ``secrets``
    wrong_secret: ClassVar[str]
    #: (body, expected state) pairs; a body is bytes, str, or an object ``encode`` serialises.
    #: The expected state is a ``State`` or None (the event maps to no job state).
    samples: ClassVar[Sequence[tuple[Any, State | None]]] = ()
    #: False for providers that sign no timestamp (GitHub, Twilio): dedup covers replays there
    signs_timestamp: ClassVar[bool] = True
    #: "json" or "form": how samples are serialised and fuzzed
    body_format: ClassVar[str] = "json"

    def sign(self, body: bytes, secret: str, timestamp: int) -> tuple[dict[str, str], str]:
        """The headers (and the URL the provider signed) of a delivery of ``body``."""
        raise NotImplementedError

    # -- helpers an author may override ---------------------------------------------------

    def make_adapter(self) -> Adapter:
        return self.adapter_class(dict(self.options), tolerance=self.tolerance)

    def encode(self, body: Any) -> bytes:
        if isinstance(body, bytes):
            return body
        if isinstance(body, str):
            return body.encode("utf-8")
        if self.body_format == "form":
            return urlencode(list(body.items()) if isinstance(body, dict) else body).encode("utf-8")
        return json.dumps(body).encode("utf-8")

    def decode(self, body: bytes) -> Any:
        if self.body_format == "form":
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        return json.loads(body)

    def request(self, body: Any, secret: str | None = None, timestamp: int | None = None) -> WebhookRequest:
        """A signed delivery of ``body``, as the gateway would build it."""
        raw = self.encode(body)
        headers, url = self.sign(raw, secret or self.secrets[0], int(time.time()) if timestamp is None else timestamp)
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        return WebhookRequest(body=raw, headers=headers, url=url, content_type=content_type, received_at=RECEIVED_AT)

    def tamper(self, raw: bytes) -> list[bytes]:
        """Bodies that differ from ``raw`` by a little: each must fail verification."""
        middle = len(raw) // 2
        flipped = raw[:middle] + bytes([raw[middle] ^ 0x01]) + raw[middle + 1:] if raw else b"x"
        return [raw + b" ", flipped, raw[:-1]]

    # -- the battery -----------------------------------------------------------------------

    def _sample_bodies(self) -> list[Any]:
        assert self.samples, "supply at least one sample payload"
        return [body for body, _ in self.samples]

    def test_accepts_valid_delivery(self) -> None:
        adapter = self.make_adapter()
        for body in self._sample_bodies():
            req = self.request(body)
            adapter.verify(req, list(self.secrets))
            events = adapter.parse(req)
            assert events, "a verified sample must give at least one event"

    def _signs_body(self) -> bool:
        return self.adapter_class.signs_body

    def _signs_timestamp(self) -> bool:
        return self.signs_timestamp and self._signs_body()

    def test_rejects_tampered_body(self) -> None:
        if not self._signs_body():
            pytest.skip("signs_body = False: the token does not cover the body (the weaker guarantee, docs/adapters.md)")
        adapter = self.make_adapter()
        for body in self._sample_bodies():
            req = self.request(body)
            for bad in self.tamper(req.body):
                if bad == req.body:
                    continue
                with pytest.raises(SignatureError):
                    adapter.verify(WebhookRequest(bad, req.headers, req.url, req.query, req.content_type, req.received_at), list(self.secrets))

    def test_rejects_wrong_secret(self) -> None:
        adapter = self.make_adapter()
        req = self.request(self._sample_bodies()[0], secret=self.wrong_secret)
        with pytest.raises(SignatureError):
            adapter.verify(req, list(self.secrets))

    def test_rejects_missing_signature_headers(self) -> None:
        adapter = self.make_adapter()
        req = self.request(self._sample_bodies()[0])
        with pytest.raises(SignatureError):
            adapter.verify(WebhookRequest(req.body, {}, req.url), list(self.secrets))

    def test_rejects_stale_timestamp(self) -> None:
        if not self._signs_timestamp():
            pytest.skip("this provider signs no timestamp; replays are caught by dedup on the event id")
        adapter = self.make_adapter()
        req = self.request(self._sample_bodies()[0], timestamp=int(time.time()) - self.tolerance - 30)
        with pytest.raises(SignatureError):
            adapter.verify(req, list(self.secrets))

    def test_rejects_future_timestamp(self) -> None:
        if not self._signs_timestamp():
            pytest.skip("this provider signs no timestamp; replays are caught by dedup on the event id")
        adapter = self.make_adapter()
        req = self.request(self._sample_bodies()[0], timestamp=int(time.time()) + self.tolerance + 30)
        with pytest.raises(SignatureError):
            adapter.verify(req, list(self.secrets))

    def test_accepts_timestamp_within_tolerance(self) -> None:
        if not self._signs_timestamp():
            pytest.skip("this provider signs no timestamp")
        adapter = self.make_adapter()
        for skew in (-self.tolerance + 30, self.tolerance - 30):
            adapter.verify(self.request(self._sample_bodies()[0], timestamp=int(time.time()) + skew), list(self.secrets))

    def test_accepts_either_rotating_secret(self) -> None:
        adapter = self.make_adapter()
        body = self._sample_bodies()[0]
        for secret in self.secrets:
            adapter.verify(self.request(body, secret=secret), list(self.secrets))
        with pytest.raises(SignatureError):  # and a retired secret no longer verifies
            adapter.verify(self.request(body, secret=self.secrets[0]), [self.secrets[1]])

    def test_refuses_a_near_miss_token(self) -> None:
        """A token one character off, cut short or extended is refused like a wrong one."""
        if self._signs_body():
            pytest.skip("signed bodies: a near-miss secret gives an unrelated signature (test_rejects_wrong_secret)")
        adapter = self.make_adapter()
        secret = self.secrets[0]
        near = {secret[:-1], secret + "x", secret[:-1] + chr(ord(secret[-1]) ^ 1), secret.swapcase(), " " + secret + "\x00"} - {secret, ""}
        for token in near:
            with pytest.raises(SignatureError):
                adapter.verify(self.request(self._sample_bodies()[0], secret=token), list(self.secrets))

    def test_compares_in_constant_time(self) -> None:
        """The signature or token is checked with ``hmac.compare_digest`` (never ``==`` or
        ``startswith``), for an accepted and for a refused delivery alike."""
        adapter = self.make_adapter()
        for secret, accepted in ((self.secrets[1], True), (self.wrong_secret, False)):
            with mock.patch.object(hmac, "compare_digest", wraps=hmac.compare_digest) as spy:
                try:
                    adapter.verify(self.request(self._sample_bodies()[0], secret=secret), list(self.secrets))
                    verified = True
                except SignatureError:
                    verified = False
            assert verified is accepted
            assert spy.call_count >= 1, "the signature or token must be compared with hmac.compare_digest"

    def test_parse_is_deterministic(self) -> None:
        adapter = self.make_adapter()
        for body in self._sample_bodies():
            req = self.request(body)
            first, second = adapter.parse(req), self.make_adapter().parse(req)
            assert first == second

    def test_events_are_well_formed(self) -> None:
        adapter = self.make_adapter()
        for body in self._sample_bodies():
            for event in adapter.parse(self.request(body)):
                check_event(event)

    def test_samples_map_to_stated_state(self) -> None:
        adapter = self.make_adapter()
        for body, expected in self.samples:
            events = adapter.parse(self.request(body))
            assert events[-1].state == expected, f"{body!r:.120} gave {events[-1].state}, expected {expected}"

    @FUZZ
    @given(data=st.data())
    def test_fuzzed_fields_raise_only_declared_errors(self, data: st.DataObject) -> None:
        """A signed sample with a field replaced or removed: parse returns events or PayloadError."""
        bodies = self._sample_bodies()
        body = data.draw(st.sampled_from(bodies))
        raw = self.encode(body)
        doc = self.decode(raw)
        paths = key_paths(doc)
        if paths:
            path = data.draw(st.sampled_from(paths))
            delete = data.draw(st.booleans())
            value = data.draw(JSON_VALUES if self.body_format == "json" else st.text(max_size=40))
            doc = mutate(doc, path, value, delete)
        self._verify_then_parse(self.encode(doc))

    @FUZZ
    @given(raw=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
    def test_fuzzed_bodies_raise_only_declared_errors(self, raw: bytes) -> None:
        """Any signed body at all: verify and parse return or raise only the declared errors."""
        self._verify_then_parse(raw)

    @FUZZ
    @given(headers=st.dictionaries(st.text(min_size=1, max_size=30), st.text(max_size=80), max_size=6), data=st.data())
    def test_fuzzed_headers_raise_only_declared_errors(self, headers: dict[str, str], data: st.DataObject) -> None:
        """Random headers, alone or over a valid delivery's: only SignatureError (or acceptance)."""
        adapter = self.make_adapter()
        req = self.request(data.draw(st.sampled_from(self._sample_bodies())))
        merged = dict(req.headers)
        if data.draw(st.booleans()):
            # replace the value of one real header (the signature, timestamp, id…) with noise
            key = data.draw(st.sampled_from(sorted(merged)))
            merged[key] = data.draw(st.text(max_size=120))
        else:
            merged = headers
        fuzzed = WebhookRequest(req.body, merged, req.url, req.query, req.content_type, req.received_at)
        try:
            adapter.verify(fuzzed, list(self.secrets))
        except SignatureError:
            return
        try:
            events = adapter.parse(fuzzed)
        except PayloadError:
            return
        for event in events:
            check_event(event)

    def _verify_then_parse(self, raw: bytes) -> None:
        adapter = self.make_adapter()
        try:
            headers, url = self.sign(raw, self.secrets[0], int(time.time()))
        except Exception:  # the signer (the provider's own code) cannot sign it: nothing to prove
            return
        req = WebhookRequest(raw, headers, url, {}, "", RECEIVED_AT)
        try:
            adapter.verify(req, list(self.secrets))
        except SignatureError:
            return
        try:
            events = adapter.parse(req)
        except PayloadError:
            return
        for event in events:
            check_event(event)


def check_event(event: ProviderEvent) -> None:
    """The invariants every parsed event keeps, whatever the body was."""
    assert isinstance(event, ProviderEvent)
    assert isinstance(event.event_id, str) and 0 < len(event.event_id) <= 255
    assert isinstance(event.external_id, str) and 0 < len(event.external_id) <= 255
    assert isinstance(event.occurred_at, datetime) and event.occurred_at.utcoffset() is not None
    assert event.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]  # a naive time fails here, as it should
    assert event.state is None or isinstance(event.state, State)
    for name in ("progress", "queue", "error", "result"):
        value = getattr(event, name)
        assert value is None or isinstance(value, dict), f"{name} must be a dict"
        if value is not None:
            json.dumps(value, allow_nan=False)  # it goes into job JSON as it is
    if event.error is not None:
        assert isinstance(event.error.get("code"), str) and event.error["code"]
        assert isinstance(event.error.get("message"), str)
        assert isinstance(event.error.get("retryable", True), bool)
    if event.state is not State.FAILED:
        assert event.error is None
    assert event.label is None or (isinstance(event.label, str) and len(event.label) <= 200)
