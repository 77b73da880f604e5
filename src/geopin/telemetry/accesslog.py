"""geopin's logs as JSON lines, and the access log: one line per request.

:func:`access_log` takes every field as an explicit keyword, so nothing the request carried
(headers, credentials, the prompt) can reach the line by accident: there is no ``**extra``.
The path is logged without its query string (query strings can carry keys), and the client
only as the network prefix it belongs to, never its full address.

uvicorn's own access log is switched off by :func:`configure_logging`: it would log the
client's full address and the query string.

Access lines may be written in batches (``access_flush_s``): a write to the log's stream per
request costs the request path a system call, so lines wait in memory until a batch of
``_BATCH_BYTES`` is ready or ``access_flush_s`` has passed, and are flushed when the handler
closes (a clean exit, SIGTERM included). A process killed outright loses at most that much of
its access log; the audit trail, committed before each request is forwarded, loses nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from json.encoder import encode_basestring_ascii
from typing import IO, Any

ACCESS_LOGGER = "geopin.access"
_MAX_PATH = 512
_MAX_FIELD = 128
# Logger names whose records geopin formats; uvicorn's access logger is silenced instead.
_OWN = ("geopin", "uvicorn", "uvicorn.error")

access_logger = logging.getLogger(ACCESS_LOGGER)
_access: BatchingHandler | None = None  # where access lines go; None: the access log is off


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
    handler = _access
    if handler is None:
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
    # Formatted here and handed to the handler as a line: no LogRecord, no handler lock, no
    # caller lookup, which cost more than the line itself.
    try:
        line = handler.formatter.format_access(fields)  # type: ignore[union-attr]
    except Exception:
        logging.getLogger(__name__).exception("access line not written")
        return
    handler.add_line(line)


def access_log_enabled() -> bool:
    return _access is not None


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
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _LINE_ENCODER.encode(out)

    def format_access(self, fields: dict[str, Any]) -> str:
        """An access line: what ``format`` writes for a record of the access logger, and its
        non-null fields. Written out directly (the keys are geopin's own, every value is
        encoded as JSON): a third of what the encoder took for the whole object."""
        parts = [_ACCESS_HEAD, _now_iso(), _ACCESS_PID, str(os.getpid())]
        for key, value in fields.items():
            if value is not None:
                parts.append(_ACCESS_KEYS[key])
                parts.append(_json_scalar(value))
        parts.append("}")
        return "".join(parts)


_ACCESS_HEAD = '{"time":"'
_ACCESS_PID = f'","level":"info","logger":"{ACCESS_LOGGER}","message":"request","pid":'
_ACCESS_KEYS = {key: f',"{key}":' for key in (
    "decision_id", "trace_id", "method", "path", "action", "client_country", "client_network",
    "endpoint", "processing_country", "status", "latency_ms", "bytes_in", "bytes_out", "tenant",
    "failovers",
)}  # fmt: skip


def _json_scalar(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int or kind is float:
        return repr(value)
    return _LINE_ENCODER.encode(value)


class TextFormatter(logging.Formatter):
    """For a terminal: the usual line, with the access fields as key=value pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format_access(self, fields: dict[str, Any]) -> str:
        record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "request", (), None)
        return (
            self.format(record)
            + " "
            + " ".join(
                f"{k}={json.dumps(v) if isinstance(v, str) else v}"
                for k, v in fields.items()
                if v is not None
            )
        )


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes its lines in batches: when ``batch_bytes`` are waiting,
    ``interval_s`` after the first of them (a timer thread), on :meth:`flush` and on close;
    with ``interval_s`` 0, each line at once.

    A line is formatted by the caller and appended to a queue (:meth:`add_line`), without the
    handler lock that ``logging`` takes around every emit: the request path never waits for
    the thread that writes, nor wakes it more than once per batch."""

    def __init__(self, stream: IO[str], *, interval_s: float, batch_bytes: int) -> None:
        super().__init__(stream)
        self.interval_s = interval_s
        self.batch_bytes = batch_bytes
        self._lines: deque[str] = deque()
        self._size = 0  # approximate: only decides when the caller writes a full batch
        self._waiting = threading.Event()  # set from the first line of a batch to its write
        self._stop = threading.Event()
        self._io = threading.Lock()  # one write at a time, in line order
        self._timer: threading.Thread | None = None
        if interval_s > 0:
            self._timer = threading.Thread(target=self._run, name="geopin-access-log", daemon=True)
            self._timer.start()

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add_line(line)

    def add_line(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line) + 1
        if self._timer is None or self._size >= self.batch_bytes or self._stop.is_set():
            self._write()
        elif not self._waiting.is_set():
            self._waiting.set()  # the timer counts from the first waiting line

    def _write(self) -> None:
        with self._io:
            lines = self._lines
            taken = [lines.popleft() for _ in range(len(lines))]
            self._size = 0
            if not taken:
                return
            try:
                self.stream.write("\n".join(taken) + "\n")
                self.stream.flush()
            except Exception:  # a closed or full stream: the lines are lost, as a print's would be
                pass

    def flush(self) -> None:
        self._write()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._waiting.wait()
            self._stop.wait(self.interval_s)  # only close() cuts the count short
            self._waiting.clear()
            self._write()

    def close(self) -> None:
        self._stop.set()
        self._waiting.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join(timeout=1.0)
        self._write()
        super().close()


_BATCH_BYTES = 64 * 1024


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


_clock: tuple[int, str] = (-1, "")  # (Unix second, its ISO text), replaced whole


def _now_iso() -> str:
    """``_iso(time.time())``, with the text of the second made once a second."""
    global _clock
    ms = time.time_ns() // 1_000_000
    second = ms // 1000
    cached, text = _clock
    if cached != second:
        text = datetime.fromtimestamp(second, UTC).isoformat()[:19]
        _clock = (second, text)
    return f"{text}.{ms % 1000:03d}+00:00"


def configure_logging(
    level: str = "info",
    *,
    json: bool = True,
    access: bool = True,
    stream: IO[str] | None = None,
    access_flush_s: float = 0.0,
) -> logging.Handler:
    """Send geopin's (and uvicorn's error) logs to ``stream`` as JSON lines or text.

    ``access_flush_s`` > 0 writes the access lines in batches, at most that long after the
    first of a batch (see the module docstring); 0 writes each line at once.

    Replaces handlers set by an earlier call, so it can run again (a test, a reload). Start
    uvicorn with ``access_log=False, log_config=None`` so it keeps these handlers.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    target = stream if stream is not None else sys.stderr
    formatter = JsonFormatter() if json else TextFormatter()
    global _access
    handler = logging.StreamHandler(target)
    handler.setFormatter(formatter)
    handler.set_name("geopin")
    access_handler = BatchingHandler(target, interval_s=access_flush_s, batch_bytes=_BATCH_BYTES)
    access_handler.setFormatter(formatter)
    access_handler.set_name("geopin")
    for name in (*_OWN, ACCESS_LOGGER):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "geopin"]:
            logger.removeHandler(old)
            if old is not handler:
                old.close()
        if name in ("geopin", "uvicorn"):
            logger.addHandler(handler)
            logger.propagate = False
        if name != ACCESS_LOGGER:
            logger.setLevel(numeric)
    access_logger.addHandler(access_handler)
    access_logger.propagate = False
    # uvicorn.error propagates to uvicorn; its access log would show full addresses and
    # query strings, so it is silenced whatever uvicorn was told.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    uvicorn_access.disabled = True
    # The access log is INFO: it follows its own switch, not the level of the other logs.
    access_logger.setLevel(logging.INFO if access else logging.CRITICAL + 1)
    access_logger.disabled = not access
    _access = access_handler if access else None
    return handler


def flush_logs() -> None:
    """Write every line geopin's handlers hold (batched access lines) now."""
    for name in (*_OWN, ACCESS_LOGGER):
        for handler in logging.getLogger(name).handlers:
            if handler.get_name() == "geopin":
                handler.flush()
