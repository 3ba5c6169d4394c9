"""Twilio status callbacks for Messages and Calls (https://www.twilio.com/docs/usage/webhooks/webhooks-security).

Signature: ``X-Twilio-Signature`` = base64(HMAC-SHA1(Auth Token, URL + every POST parameter's
name and value, sorted by name)). The URL is the one Twilio requested, query string included;
behind a proxy set the source's ``public_url`` (``https://gw.example.com/webhooks/twilio``) and
the gateway rebuilds it from that plus the received query string. As Twilio's own validator
does, the URL is tried with and without an explicit port. A request with
``X-Twilio-Webhooks-Signature-Settings: …,algorithm=HMAC_SHA256`` is signed with HMAC-SHA256
instead. With a ``bodySHA256`` query parameter (JSON bodies) the body's SHA-256 hex must match
it and the URL alone is signed.

Twilio signs **no timestamp**, so there is no replay window: a replayed callback derives the
same event id and is answered ``duplicate`` (dedup covers replays).

The body is ``application/x-www-form-urlencoded``, parsed strictly from the raw bytes.
Twilio sends **no event id**: the event id is ``{MessageSid|CallSid}:{status}``, stable across
Twilio's retries. The external id is the ``MessageSid`` / ``CallSid``.

Event time: call callbacks carry ``Timestamp`` (RFC 2822); message callbacks carry none, so
the time the gateway received them is used. Twilio does not promise order: a message's late
``sent`` after ``delivered`` is stale (complete is terminal), but a late ``sent`` arriving after
``undelivered`` opens a next attempt until the message's next news — a limit of a provider
that dates nothing.

Status read (reconciliation): ``GET {api_base}/2010-04-01/Accounts/{AccountSid}/Messages/{sid}.json``
(``/Calls/{sid}.json`` for a ``CA…`` sid), HTTP basic auth with the credentials in
``api_key_env`` written ``user:password`` (``AccountSid:AuthToken``, or an API key
``SK…:secret`` with the ``account_sid`` option); ``api_base`` defaults to
``https://api.twilio.com``. ``status`` maps by the same tables as the callbacks, dated by the
resource's ``date_updated``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from adapters.base import Adapter, DetailsRequest, ProviderEvent, WebhookRequest, api_answer, api_request, as_utc_ms, basic, constant_time_in, form_body, read_event_id
from gateway.errors import PayloadError, SignatureError
from gateway.states import State

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}

Q, P, C, F = State.QUEUED, State.PROCESSING, State.COMPLETE, State.FAILED

#: ``MessageStatus`` -> state (``receiving`` / ``received`` are inbound messages: ignored)
MESSAGE_STATES: Mapping[str, State] = {
    "accepted": Q,
    "scheduled": Q,
    "queued": Q,
    "sending": P,
    "sent": P,  # handed to the carrier; delivered / undelivered follow where receipts exist
    "delivered": C,
    "read": C,
    "partially_delivered": C,  # reached some recipients; the status is in the result
    "undelivered": F,
    "failed": F,
    "canceled": F,
}

#: ``CallStatus`` -> state
CALL_STATES: Mapping[str, State] = {
    "queued": Q,
    "initiated": Q,
    "ringing": P,
    "in-progress": P,
    "answered": P,
    "completed": C,
    "busy": F,
    "no-answer": F,
    "canceled": F,
    "failed": F,
}

#: failing status -> words for the error message; the status (``-`` as ``_``) is the code
FAILURE_WORDS: Mapping[str, str] = {
    "undelivered": "The message could not be delivered",
    "failed": "Twilio could not send it",
    "canceled": "It was canceled",
    "busy": "The line was busy",
    "no-answer": "Nobody answered",
}

MAX_SID = 64
DEFAULT_API_BASE = "https://api.twilio.com"
SID_RE_CHARS = frozenset("0123456789abcdefABCDEF")
URL_SAFE = ":/?#[]@!$&'()*+,;=%~"  # reserved characters and existing escapes stay as they are


class TwilioAdapter(Adapter):
    """Twilio message and call status callbacks."""

    name = "twilio"
    options_schema = {"account_sid": str}

    @classmethod
    def status_table(cls) -> list[tuple[str, str]]:
        return ([(f"message `status` `{status}`", s.value) for status, s in MESSAGE_STATES.items()]
                + [(f"call `status` `{status}`", s.value) for status, s in CALL_STATES.items()])

    def status_request(self, external_id: str, api_key: str | None) -> DetailsRequest | None:
        """``GET /2010-04-01/Accounts/{AccountSid}/Messages/{sid}.json`` (``Calls`` for ``CA…``)."""
        user = (api_key or "").partition(":")[0]
        account = self.options.get("account_sid") or (user if user.startswith("AC") else None)
        resource = "Calls" if external_id.startswith("CA") else "Messages" if external_id[:2] in ("SM", "MM") else None
        if not isinstance(account, str) or resource is None or not _is_sid(account) or not _is_sid(external_id):
            return None
        return api_request(self, DEFAULT_API_BASE, f"/2010-04-01/Accounts/{account}/{resource}/{external_id}.json", basic(api_key))

    def parse_status(self, external_id: str, status: int, body: bytes, read_at: datetime) -> list[ProviderEvent]:
        doc = api_answer("Twilio", status, body)
        word = doc.get("status")
        if doc.get("sid") != external_id or not isinstance(word, str) or not word or len(word) > 40:
            raise PayloadError("the answer is not the message or call asked for, with a status")
        kind, states = ("call", CALL_STATES) if external_id.startswith("CA") else ("message", MESSAGE_STATES)
        state = states.get(word)
        if state is None:
            raise PayloadError(f"unknown {kind} status {word!r}")
        at = read_at
        if isinstance(doc.get("date_updated"), str):
            at = _occurred_at({"Timestamp": doc["date_updated"]}, WebhookRequest(body=b"", headers={}))
        params = {k: str(v) for k, v in (("ErrorCode", doc.get("error_code")), ("ErrorMessage", doc.get("error_message"))) if v not in (None, "")}
        if isinstance(doc.get("duration"), str):
            params["CallDuration"] = doc["duration"]
        return [ProviderEvent(
            event_id=read_event_id(external_id, word, at), external_id=external_id, occurred_at=at, state=state,
            type=f"api.{kind}.{word}", error=_error(kind, word, params) if state is F else None,
            result=_result(kind, external_id, word, params) if state is C else None)]

    @classmethod
    def state_table(cls) -> list[tuple[str, str]]:
        return ([(f"message `MessageStatus={status}`", s.value) for status, s in MESSAGE_STATES.items()]
                + [(f"call `CallStatus={status}`", s.value) for status, s in CALL_STATES.items()])

    def verify(self, request: WebhookRequest, secrets: Sequence[str]) -> None:
        given = request.header(SIGNATURE_HEADER)
        if not given:
            raise SignatureError("missing X-Twilio-Signature header")
        if not request.url:
            raise SignatureError("the URL Twilio signed is unknown; set the source's public_url")
        algorithm = _algorithm(request.header(SETTINGS_HEADER))
        try:
            query = parse_qs(urlsplit(request.url).query)
        except ValueError:
            raise SignatureError("the signed URL is malformed") from None
        if "bodySHA256" in query:
            if not constant_time_in(hashlib.sha256(request.body).hexdigest(), [query["bodySHA256"][0]]):
                raise SignatureError("the body does not match bodySHA256")
            params: list[tuple[str, str]] = []
        else:
            try:
                params = form_body(request)
            except PayloadError:
                raise SignatureError("the body is not a form Twilio could have signed") from None
        try:
            urls = _url_variants(request.url)
        except ValueError:
            raise SignatureError("the signed URL is malformed") from None
        expected = [signature(secret, url, params, algorithm) for secret in secrets for url in urls]
        if not constant_time_in(given.strip().encode("utf-8", "replace"), expected):
            raise SignatureError("no signature matches any active auth token")

    def parse(self, request: WebhookRequest) -> list[ProviderEvent]:
        params = dict(form_body(request))
        if params.get("MessageSid"):
            sid, status, states, kind = params["MessageSid"], params.get("MessageStatus") or params.get("SmsStatus"), MESSAGE_STATES, "message"
        elif params.get("CallSid"):
            sid, status, states, kind = params["CallSid"], params.get("CallStatus"), CALL_STATES, "call"
        else:
            raise PayloadError("neither MessageSid nor CallSid in the callback")
        if len(sid) > MAX_SID or not sid.isascii():
            raise PayloadError("the SID is malformed")
        if not status or len(status) > 40:
            raise PayloadError(f"the {kind} status is missing")
        state = states.get(status)
        return [
            ProviderEvent(
                event_id=f"{sid}:{status}",
                external_id=sid,
                occurred_at=_occurred_at(params, request),
                state=state,
                type=f"{kind}.{status}",
                error=_error(kind, status, params) if state is F else None,
                result=_result(kind, sid, status, params) if state is C else None,
            )
        ]


def signature(secret: str, url: str, params: Sequence[tuple[str, str]], algorithm: str = "HMAC_SHA1") -> bytes:
    """Twilio's signature of a request: base64 HMAC of the URL plus the sorted name+value pairs."""
    by_name: dict[str, set[str]] = {}
    for name, value in params:
        by_name.setdefault(name, set()).add(value)
    signed = url + "".join(name + value for name in sorted(by_name) for value in sorted(by_name[name]))
    mac = hmac.new(secret.encode("utf-8"), signed.encode("utf-8"), ALGORITHMS[algorithm])
    return base64.b64encode(mac.digest())


def _algorithm(settings: str | None) -> str:
    for part in (settings or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            algorithm = value.strip().upper()
            if algorithm not in ALGORITHMS:
                raise SignatureError(f"unsupported signature algorithm {algorithm[:40]!r}")
            return algorithm
    return "HMAC_SHA1"


def _is_sid(value: str) -> bool:
    """Two letters and 32 hex digits: safe in a URL path as it is."""
    return len(value) == 34 and value[:2].isalpha() and value[:2].isascii() and set(value[2:]) <= SID_RE_CHARS


def _url_variants(url: str) -> list[str]:
    """The URL as given, without its port, and with the default port: Twilio signs either.

    Non-ASCII characters are percent-encoded first (UTF-8), as they were on the wire: a
    server may hand over the URL decoded to an IRI."""
    url = quote(url, safe=URL_SAFE)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port  # ValueError for a malformed port
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    bare_host = f"[{host}]" if ":" in host else host
    without = urlunsplit(parts._replace(netloc=prefix + bare_host))
    default = 443 if parts.scheme == "https" else 80
    with_port = urlunsplit(parts._replace(netloc=f"{prefix}{bare_host}:{port or default}"))
    return list(dict.fromkeys([url, without, with_port]))


def _occurred_at(params: Mapping[str, str], request: WebhookRequest) -> datetime:
    stamp = params.get("Timestamp")
    if stamp:
        try:
            dt = parsedate_to_datetime(stamp)
        except (TypeError, ValueError, IndexError, OverflowError):
            raise PayloadError("Timestamp is not an RFC 2822 date") from None
        return as_utc_ms(dt)
    return as_utc_ms(request.received_at or datetime.now(UTC))


def _error(kind: str, status: str, params: Mapping[str, str]) -> dict[str, Any]:
    message = f"{FAILURE_WORDS.get(status, 'It failed')} ({kind} {status})."
    code = params.get("ErrorCode")
    if code:
        detail = params.get("ErrorMessage")
        message += f" Twilio error {code[:10]}" + (f": {detail[:300]}" if detail else "") + "."
    return {"code": status.replace("-", "_"), "message": message, "retryable": True}


def _result(kind: str, sid: str, status: str, params: Mapping[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {"sid": sid, "status": status}
    duration = params.get("CallDuration")
    if kind == "call" and duration and duration.isdigit() and len(duration) < 10:
        result["duration_seconds"] = int(duration)
    return result
