"""The support console (contract section 11): server-rendered pages at /console/ for people on
support, signed in with an API key. ``auth`` holds sign-in, sessions and CSRF; ``views`` the pages."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="../templates")

from gateway.console import auth, views  # noqa: E402,F401  (routes attach to bp)
