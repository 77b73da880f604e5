"""``geopin serve``: run the router under uvicorn (uvloop, httptools), with geopin's JSON logs
and access log, a graceful drain on SIGTERM and, with ``--workers N``, N processes."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import click
import uvicorn

from geopin.errors import GeopinError, PolicyError
from geopin.proxy.protocol import HttpProtocol
from geopin.settings import Settings, listen_address, load_settings

EXIT_INVALID = 2


@click.command("serve")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings file (YAML). Environment variables GEOPIN_* override it.",
)
@click.option("--listen", default=None, help="host:port to serve on (overrides the settings).")
@click.option(
    "--policy-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Policy directory (overrides the settings).",
)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes.")
def serve(
    config: Path | None, listen: str | None, policy_dir: Path | None, workers: int | None
) -> None:
    """Run the router. Refuses to start (exit 2) on invalid settings, an invalid policy, a bad
    GeoIP database or an out-of-date audit schema."""
    environ = dict(os.environ)
    for name, value in (
        ("GEOPIN_LISTEN", listen),
        ("GEOPIN_POLICY_DIR", policy_dir),
        ("GEOPIN_WORKERS", workers),
    ):
        if value is not None:
            environ[name] = str(value)
    from geopin.app import build_app
    from geopin.proxy.serving import serve as serve_one
    from geopin.proxy.serving import serve_workers
    from geopin.telemetry import Telemetry, configure_logging

    try:  # everything is loaded and checked here, before a socket is opened
        settings = load_settings(config, environ)
        logging_options = _logging_options(settings)
        configure_logging(**logging_options)
        # With several workers each builds its own app and telemetry; the parent only checks.
        quiet = Telemetry.from_settings() if settings.workers > 1 else None
        app = build_app(settings, telemetry=quiet)
    except GeopinError as exc:
        _refuse(exc)
    host, port = listen_address(settings.listen)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": HttpProtocol,  # httptools, a response's writes of one turn in one send
        "access_log": False,  # geopin's own access log replaces it
        "log_config": None,  # keep the handlers configure_logging installed
        "log_level": settings.log_level,
        "server_header": False,
        # uvicorn would otherwise rewrite the peer address from X-Forwarded-For sent by
        # 127.0.0.1; geopin reads forwarding headers itself, from trusted proxies only.
        "proxy_headers": False,
        "timeout_graceful_shutdown": max(int(settings.shutdown_grace_s), 1),
    }
    if settings.workers == 1:
        serve_one(uvicorn.Config(app, **options), settings.shutdown_grace_s)
        return
    # Each worker builds its own app from the same settings file and environment.
    from geopin.app import CONFIG_ENVVAR

    app.runtime.holder.current.resolver.close()
    os.environ.update(environ)
    if config is not None:
        os.environ[CONFIG_ENVVAR] = str(config.resolve())
    metrics_dir = None
    if settings.telemetry.metrics_dir is None:
        # Each worker leaves its series here for whichever worker answers the scrape.
        metrics_dir = tempfile.mkdtemp(prefix="geopin-metrics-")
        os.environ["GEOPIN_TELEMETRY_METRICS_DIR"] = metrics_dir
    try:
        status = serve_workers(
            uvicorn.Config("geopin.app:app_from_environment", factory=True, **options),
            settings.workers,
            settings.shutdown_grace_s,
            logging_options,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if status:
        sys.exit(status)


def _logging_options(settings: Settings) -> dict[str, Any]:
    telemetry = settings.telemetry
    return {
        "level": telemetry.log_level or settings.log_level,
        "json": telemetry.log_format == "json",
        "access": telemetry.access_log,
        "access_flush_s": telemetry.access_log_flush_s,
    }


def _refuse(exc: GeopinError) -> NoReturn:
    if isinstance(exc, PolicyError):
        n = len(exc.problems)
        click.echo(f"geopin serve: invalid policy ({n} problem{'s' * (n != 1)}):", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
    else:
        lines = str(exc).splitlines() or [type(exc).__name__]
        click.echo(f"geopin serve: {lines[0]}", err=True)
        for line in lines[1:]:
            click.echo(f"  {line}", err=True)
    sys.exit(EXIT_INVALID)
