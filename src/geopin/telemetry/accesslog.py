"""geopin's logs as JSON lines, and the access log: one line per request.

:func:`access_log` takes every field as an explicit keyword, so nothing the request carried
(headers, credentials, the prompt) can reach the line by accident: there is no ``**extra``.
The path is logged without its query string (query strings can carry keys), and the client
only as the network prefix it belongs to, never its full address.

uvicorn's own access log is switched off by :func:`configure_logging`: it would log the
client's full address and the query string.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import IO, Any

ACCESS_LOGGER = "geopin.access"
_MAX_PATH = 512
_MAX_FIELD = 128
# Logger names whose records geopin formats; uvicorn's access logger is silenced instead.
_OWN = ("geopin", "uvicorn", "uvicorn.error")

access_logger = logging.getLogger(ACCESS_LOGGER)


def client_prefix(ip: IPv4Address | IPv6Address | None) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of a client: enough to spot an abusive network,
    not enough to name a person."""
    if ip is None:
        return None
    return _prefix(ip)


@functools.lru_cache(maxsize=4096)
def _prefix(ip: IPv4Address | IPv6Address) -> str:
    if ip.version == 4:
        a, b, c = ip.packed[:3]
        return f"{a}.{b}.{c}.0/24"
    return str(IPv6Network((int.from_bytes(ip.packed[:6], "big") << 80, 48)))


def access_log(
    *,
    method: str,
    path: str,
    status: int,
    duration_s: float,
    decision_id: str | None = None,
    trace_id: str | None = None,
    action: str | None = None,
    client_country: str | None = None,
    client_network: str | None = None,
    endpoint: str | None = None,
    processing_country: str | None = None,
    bytes_in: int | None = None,
    bytes_out: int | None = None,
    tenant: str | None = None,
    failovers: int | None = None,
) -> None:
    """Write one access line (if the access log is on).

    ``client_network`` is the output of :func:`client_prefix`, never an address.
    """
    if not access_logger.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "decision_id": _short(decision_id),
        "trace_id": _short(trace_id),
        "method": _short(method),
        "path": _path(path),
        "action": _short(action),
        "client_country": _short(client_country),
        "client_network": _short(client_network),
        "endpoint": _short(endpoint),
        "processing_country": _short(processing_country),
        "status": int(status),
        "latency_ms": round(duration_s * 1000, 3),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "tenant": _short(tenant),
        "failovers": failovers,
    }
    access_logger.info("request", extra={"geopin_access": fields})


def _path(path: str) -> str:
    path = str(path).split("?", 1)[0].split("#", 1)[0]
    return path[:_MAX_PATH]


def _short(value: str | None) -> str | None:
    return None if value is None else str(value)[:_MAX_FIELD]


# ASCII only: no U+0085 or U+2028 that a reader could take for a line break. Built once:
# json.dumps with options other than the defaults builds a new encoder for every line.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the access fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker process, with several
        }
        access = getattr(record, "geopin_access", None)
        if isinstance(access, dict):
            out.update((k, v) for k, v in access.items() if v is not None)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _LINE_ENCODER.encode(out)


class TextFormatter(logging.Formatter):
    """For a terminal: the usual line, with the access fields as key=value pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        access = getattr(record, "geopin_access", None)
        if isinstance(access, dict):
            line += " " + " ".join(
                f"{k}={json.dumps(v) if isinstance(v, str) else v}"
                for k, v in access.items()
                if v is not None
            )
        return line


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def configure_logging(
    level: str = "info",
    *,
    json: bool = True,
    access: bool = True,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send geopin's (and uvicorn's error) logs to ``stream`` as JSON lines or text.

    Replaces handlers set by an earlier call, so it can run again (a test, a reload). Start
    uvicorn with ``access_log=False, log_config=None`` so it keeps these handlers.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.set_name("geopin")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    for name in _OWN:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "geopin"]:
            logger.removeHandler(old)
        if name == "geopin" or name == "uvicorn":
            logger.addHandler(handler)
            logger.propagate = False
        logger.setLevel(numeric)
    # uvicorn.error propagates to uvicorn; its access log would show full addresses and
    # query strings, so it is silenced whatever uvicorn was told.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    uvicorn_access.disabled = True
    # The access log is INFO: it follows its own switch, not the level of the other logs.
    access_logger.setLevel(logging.INFO if access else logging.CRITICAL + 1)
    access_logger.disabled = not access
    return handler
