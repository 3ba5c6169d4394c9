"""The support console (contract section 11): server-rendered pages at /console/ for people on
support, signed in with an API key. ``auth`` holds the blueprint, sign-in, sessions and CSRF;
``views`` the pages."""

from __future__ import annotations

from gateway.console import views
from gateway.console.auth import bp

__all__ = ["bp", "views"]
