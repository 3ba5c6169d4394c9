"""Acme Jobs: ``Acme-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{body}">``.

Body: ``{"id": "evt_1", "job": "job-42", "status": "running", "at": 1764331200}``.
"""

import hashlib
import hmac

from adapters import Adapter, PayloadError, ProviderEvent, SignatureError, State, constant_time_in, json_body, utc_from_unix

STATES = {"waiting": State.QUEUED, "running": State.PROCESSING, "done": State.COMPLETE, "error": State.FAILED}


class ExampleAdapter(Adapter):
    name = "example"

    def verify(self, request, secrets):
        fields = dict(p.partition("=")[::2] for p in (request.header("Acme-Signature") or "").split(","))
        t, given = fields.get("t", ""), fields.get("v1", "")
        self.check_timestamp(t if t.isascii() and t.isdigit() else None)
        signed = t.encode() + b"." + request.body
        expected = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
        if not constant_time_in(given.encode("utf-8", "replace"), expected):
            raise SignatureError("no signature matches any active secret")

    def parse(self, request):
        body = json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not isinstance(body.get("job"), str):
            raise PayloadError("id and job are required strings")
        if not body["id"] or not body["job"] or len(body["id"]) > 255 or len(body["job"]) > 255:
            raise PayloadError("id and job must be 1-255 characters")
        status = body.get("status") if isinstance(body.get("status"), str) else ""
        state = STATES.get(status)
        error = {"code": "acme_error", "message": "Acme reported an error."} if state is State.FAILED else None
        return [ProviderEvent(event_id=body["id"], external_id=body["job"], occurred_at=utc_from_unix(body.get("at")),
                              state=state, type=f"acme.{status}"[:100], error=error)]
