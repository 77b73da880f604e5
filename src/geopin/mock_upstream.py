"""The mock upstream's public face: ``create_app``, ``serve_in_thread`` and ``python -m``.

The implementation lives in ``geopin.mock``; this module keeps the short import path
(``from geopin.mock_upstream import serve_in_thread``) that tests and benchmarks use.
"""

from geopin.mock import (
    ASGIApp,
    MockOptions,
    MockUpstream,
    RunningServer,
    create_app,
    run,
    serve_in_thread,
)

__all__ = [
    "ASGIApp",
    "MockOptions",
    "MockUpstream",
    "RunningServer",
    "create_app",
    "run",
    "serve_in_thread",
]

if __name__ == "__main__":
    from geopin.mock.command import mock_upstream

    mock_upstream(prog_name="python -m geopin.mock_upstream")
