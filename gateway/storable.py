"""The one check that a parsed value can be stored: no lone surrogate, no NUL character.

JSON may escape any UTF-16 code unit (``"\\ud800"``), so a parsed string can hold a surrogate
that no UTF-8 column (SQLite or PostgreSQL) can encode; PostgreSQL text and jsonb also refuse
NUL. Every path that stores what a client or provider sent runs this after parsing, so such a
value is a 400 ``unstorable_value`` before any write, on both databases.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from gateway.errors import BadRequest

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MESSAGE = "the request holds a value the database cannot store (a lone UTF-16 surrogate or a NUL character)"


def is_storable(value: Any) -> bool:
    """True when no string in ``value`` (keys included, at any depth, dataclass fields too) holds
    a surrogate or NUL. Reads in place: nothing is copied."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return True


def require_storable(value: Any) -> None:
    """Raise BadRequest (400 ``unstorable_value``) unless ``value`` can be stored."""
    if not is_storable(value):
        raise BadRequest(MESSAGE, code="unstorable_value")
