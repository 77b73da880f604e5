"""A mock model API upstream that says which region served each answer."""

from geopin.mock.app import ASGIApp, MockOptions, MockUpstream, create_app
from geopin.mock.server import RunningServer, run, serve_in_thread

__all__ = [
    "ASGIApp",
    "MockOptions",
    "MockUpstream",
    "RunningServer",
    "create_app",
    "run",
    "serve_in_thread",
]
