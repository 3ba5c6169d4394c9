"""Beacon Jobs: every delivery carries the endpoint's token in ``X-Beacon-Token``; the body is
not signed (``signs_body = False``: docs/adapters.md, "Providers that sign no body").

Body: ``{"delivery": "dlv_1", "task": "task-42", "phase": "running", "at": "2026-11-28T12:00:00Z"}``.
"""

from adapters import Adapter, PayloadError, ProviderEvent
from adapters.base import check_header_token, json_body, utc_from_iso
from gateway.states import State

TOKEN_HEADER = "X-Beacon-Token"
PHASES = {"pending": State.QUEUED, "running": State.PROCESSING, "finished": State.COMPLETE, "crashed": State.FAILED}


class BeaconAdapter(Adapter):
    name = "beacon"
    signs_body = False

    def verify(self, request, secrets):
        check_header_token(request, secrets, TOKEN_HEADER)

    def parse(self, request):
        body = json_body(request)
        if not isinstance(body, dict):
            raise PayloadError("a Beacon delivery is a JSON object")
        delivery, task = body.get("delivery"), body.get("task")
        if not (isinstance(delivery, str) and 0 < len(delivery) <= 255 and isinstance(task, str) and 0 < len(task) <= 255):
            raise PayloadError("delivery and task are required 1-255 character strings")
        phase = body.get("phase") if isinstance(body.get("phase"), str) else ""
        state = PHASES.get(phase)
        error = {"code": "crashed", "message": "The Beacon task crashed."} if state is State.FAILED else None
        return [ProviderEvent(event_id=delivery, external_id=task, occurred_at=utc_from_iso(body.get("at")), state=state,
                              type=f"beacon.{phase}"[:100], error=error)]
