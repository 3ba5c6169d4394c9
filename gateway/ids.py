"""Job ids and the clock: what many modules need and none should import the store for."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime

JOB_ID_RE = re.compile(r"^job_[A-Za-z0-9_-]{1,60}\Z")  # \Z: "$" would also match before a final newline

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def utcnow() -> datetime:
    """Now, in UTC, truncated to milliseconds like every stored event time."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_job_id() -> str:
    """``job_`` + a ULID: sortable by creation time, unguessable, safe in URLs."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "job_" + "".join(reversed(chars))

