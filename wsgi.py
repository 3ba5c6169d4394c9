"""The WSGI application for gunicorn or any other server: ``gunicorn -k gevent wsgi:app``."""

from gateway.app import create_app

app = create_app()
