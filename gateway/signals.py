"""The gateway's signals (blinker, as Flask's own): news for whoever listens, without the sender
knowing who does. Each is sent with the Flask app as sender; connect with ``sender=app``.

- ``job_retried``: ``POST /api/jobs/<id>/retry`` committed a retry; ``job=`` the job as it is now.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

job_retried = _signals.signal("job-retried")
