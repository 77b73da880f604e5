"""Building audit records: flat, versioned, payload-free dicts, hashed as canonical JSON.

A record never holds a prompt, a completion, a credential or a full client address: the
address is kept as its /24 (IPv4) or /48 (IPv6) prefix and an HMAC-SHA256 of the full address
under a key from configuration, so one client's requests can be linked without naming it.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import os
import re
import struct
import time as _time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from geopin.audit.canonical import canonical_json
from geopin.audit.template import RecordTemplate
from geopin.errors import AuditError, ConfigError
from geopin.geo.location import Location
from geopin.policy.decision import Decision, Endpoint

RECORD_VERSION = 1
KINDS = ("decision", "outcome", "prune")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# Random bits for record ids, read from the OS in blocks: one getrandom() call per
# _RANDOM_BLOCK ids instead of one per id (each call also gives up the GIL, which a busy
# audit thread then holds for a switch interval). deque.popleft is atomic, so threads never
# share a value; a forked child drops the parent's unused values.
_RANDOM_BLOCK = 256
_RAND_MASK = (1 << 62) - 1
_MS_MASK = (1 << 48) - 1
_ID_FIXED = 0x7 << 76 | 0b10 << 62
_random_pool: deque[int] = deque()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_pool.clear)


def _random62() -> int:
    try:
        return _random_pool.popleft() & _RAND_MASK
    except IndexError:
        _random_pool.extend(_UNPACK_BLOCK(os.urandom(8 * _RANDOM_BLOCK)))
        return _random_pool.popleft() & _RAND_MASK


_UNPACK_BLOCK = struct.Struct(f"<{_RANDOM_BLOCK}Q").unpack  # one call for the whole block


def new_record_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 12 bits of sub-millisecond time
    and 62 random bits, so ids sort by creation time and never collide across hosts."""
    ms, sub_ns = divmod(_time.time_ns(), 1_000_000)
    sub = sub_ns * 4096 // 1_000_000  # the fraction of the millisecond, in 1/4096ths
    h = ((ms & _MS_MASK) << 80 | _ID_FIXED | sub << 64 | _random62()).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds: fixed width, so the text sorts as the time does."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"audit times must be timezone-aware, got naive {moment!r}")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat is several times faster than strftime and always writes four year digits.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_clock: tuple[int, str] = (-1, "")  # (Unix second, its RFC 3339 text), replaced whole


def now_text() -> str:
    """Now as ``format_time`` writes it (UTC, microseconds), without building a datetime."""
    global _clock
    ns = _time.time_ns()
    second, micros = ns // 1_000_000_000, ns // 1000 % 1_000_000
    cached, text = _clock
    if cached != second:
        t = _time.gmtime(second)
        text = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )
        _clock = (second, text)
    return f"{text}.{micros:06d}Z"


_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")


def client_fields(client: IPAddress | None, key: bytes | None) -> dict[str, str | None]:
    if client is None:
        return {"client_prefix": None, "client_hmac": None}
    if not key:
        raise ConfigError("recording a client address needs an audit client-address HMAC key")
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    keyed = _keyed_hmac(key).copy()
    keyed.update(client.packed)
    return {"client_prefix": network_prefix(client), "client_hmac": keyed.hexdigest()}


@functools.lru_cache(maxsize=8)
def _keyed_hmac(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 with the key already absorbed: each address then costs a copy and one
    block, not a fresh HMAC set up (with OpenSSL 3, a MAC fetched by name) per request."""
    return hmac.new(key, digestmod="sha256")


@functools.lru_cache(maxsize=4096)
def network_prefix(client: IPAddress) -> str:
    """The /24 (IPv4) or /48 (IPv6) network of ``client``, as text (``198.51.100.0/24``)."""
    if client.version == 4:
        a, b, c = client.packed[:3]
        return f"{a}.{b}.{c}.0/24"
    prefix = int.from_bytes(client.packed[:6], "big") << 80
    return str(ipaddress.IPv6Network((prefix, 48)))


def decision_record(
    decision: Decision,
    *,
    location: Location,
    client: IPAddress | None,
    client_key: bytes | None,
    model: str | None,
    decision_id: str,
    time: datetime,
    endpoint: Endpoint | None = None,
    tenant: str | None = None,
    data_class: str | None = None,
    trace_id: str | None = None,
    record_id: str | None = None,
) -> dict[str, Any]:
    """The record of one routing decision, committed before the request is forwarded.

    ``endpoint`` is the endpoint chosen to serve (None when denied); ``data_class`` is the class
    the client asked for, the decision's own ``data_class`` is the one it was decided for.
    """
    return {
        **_decision_constants(decision, endpoint),
        **_decision_facts(
            location=location,
            client=client_fields(client, client_key),
            model=model,
            decision_id=decision_id,
            time=format_time(time),
            tenant=tenant,
            data_class=data_class,
            trace_id=trace_id,
            record_id=record_id or new_record_id(),
        ),
    }


def _decision_constants(decision: Decision, endpoint: Endpoint | None) -> dict[str, Any]:
    """The members of a decision record that the decision and its endpoint fix."""
    return {
        "v": RECORD_VERSION,
        "kind": "decision",
        "data_class": decision.data_class,
        "action": str(decision.action),
        "policy_version": decision.policy_version,
        "permitted": list(decision.permitted),
        "rules": [
            {"id": m.rule_id, "effect": m.effect, "places": list(m.places)}
            for m in decision.matched
        ],
        "reason": decision.reason,
        "legal_basis": decision.legal_basis,
        "deny_code": str(decision.deny_code) if decision.deny_code else None,
        "deny_rule": decision.deny_rule,
        "candidates": [c.id for c in decision.candidates],
        "endpoint": endpoint.id if endpoint else None,
        "processing_country": endpoint.country if endpoint else None,
        "processing_subdivision": endpoint.subdivision if endpoint else None,
    }


def _decision_facts(
    *,
    location: Location,
    client: Mapping[str, str | None],
    model: str | None,
    decision_id: str,
    time: str,
    tenant: str | None,
    data_class: str | None,
    trace_id: str | None,
    record_id: str,
) -> dict[str, Any]:
    """The members of a decision record that differ from one request to the next."""
    return {
        "id": record_id,
        "decision_id": decision_id,
        "time": time,
        "trace_id": trace_id,
        "tenant": tenant,
        "model": model,
        "data_class_requested": data_class,
        **client,
        "country": location.country,
        "subdivision": location.subdivision,
        "location_source": str(location.source),
        "location_database": location.database,
    }


_DECISION_FACTS = (
    "id", "decision_id", "time", "trace_id", "tenant", "model", "data_class_requested",
    "client_prefix", "client_hmac", "country", "subdivision", "location_source",
    "location_database",
)  # fmt: skip


class DecisionEncoder:
    """Decision records for the request path, encoded straight to their canonical bytes.

    The same bytes as ``encode(decision_record(...))``; the members a (decision, endpoint)
    pair fixes are encoded once into a :class:`RecordTemplate`, kept for the last
    ``max_templates`` pairs (decisions are memoised and immutable, so a pair recurs).
    """

    def __init__(
        self, client_key: bytes | None, *, max_templates: int = 4096, max_clients: int = 65536
    ) -> None:
        self.client_key = client_key
        self._max = max_templates
        self._max_clients = max_clients
        # id() pairs; the entry keeps both objects alive, so an id is never reused meanwhile.
        self._templates: dict[tuple[int, int], tuple[Decision, Endpoint | None, RecordTemplate]]
        self._templates = {}
        self._clients: dict[IPAddress | None, dict[str, str | None]] = {}

    def _client(self, client: IPAddress | None) -> dict[str, str | None]:
        """The client's prefix and HMAC, from a bounded cache (an HMAC costs microseconds)."""
        fields = self._clients.get(client)
        if fields is None:
            if len(self._clients) >= self._max_clients:
                self._clients.clear()
            fields = self._clients[client] = client_fields(client, self.client_key)
        return fields

    def encode(
        self,
        decision: Decision,
        *,
        location: Location,
        client: IPAddress | None,
        model: str | None,
        decision_id: str,
        endpoint: Endpoint | None = None,
        tenant: str | None = None,
        data_class: str | None = None,
        trace_id: str | None = None,
    ) -> tuple[str, bytes]:
        """(record id, canonical JSON) of the decision record, timed now."""
        key = (id(decision), id(endpoint))
        entry = self._templates.get(key)
        if entry is None:
            if len(self._templates) >= self._max:
                self._templates.clear()
            fixed = _decision_constants(decision, endpoint)
            _check_flat(fixed)
            entry = self._templates[key] = (
                decision,
                endpoint,
                RecordTemplate(fixed, _DECISION_FACTS),
            )
        record_id = new_record_id()
        facts = _decision_facts(
            location=location,
            client=self._client(client),
            model=model,
            decision_id=decision_id,
            time=now_text(),
            tenant=tenant,
            data_class=data_class,
            trace_id=trace_id,
            record_id=record_id,
        )
        return record_id, _render(entry[2], facts)


def outcome_record(
    *, time: datetime, record_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    """What happened to a routed request: the endpoint that actually served it (after any
    failover), the endpoints tried in order, status, latency and the token usage reported.
    ``fields`` are those of :func:`_outcome`."""
    return _outcome(time=format_time(time), record_id=record_id or new_record_id(), **fields)


def _outcome(
    *,
    decision_id: str,
    time: str,
    endpoint: Endpoint | None,
    attempts: Sequence[str],
    status: int | None,
    latency_us: int,
    model: str | None,
    record_id: str,
    tenant: str | None = None,
    location: Location | None = None,
    policy_version: str | None = None,
    bytes_in: int | None = None,
    bytes_out: int | None = None,
    usage: Mapping[str, int] | None = None,
    error: str | None = None,
    trace_id: str | None = None,
    object_id: str | None = None,
) -> dict[str, Any]:
    return {
        "v": RECORD_VERSION,
        "kind": "outcome",
        "id": record_id,
        "decision_id": decision_id,
        "time": time,
        "trace_id": trace_id,
        "tenant": tenant,
        "model": model,
        "country": location.country if location else None,
        "subdivision": location.subdivision if location else None,
        "policy_version": policy_version,
        "action": "route",
        "endpoint": endpoint.id if endpoint else None,
        "processing_country": endpoint.country if endpoint else None,
        "processing_subdivision": endpoint.subdivision if endpoint else None,
        "attempts": list(attempts),
        "status": status,
        "latency_us": int(latency_us),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "usage": dict(sorted(usage.items())) if usage else None,
        "error": error,
        "object": object_id,  # the upstream's object the call made or named (file-..., resp_...)
    }


_OUTCOME_FIXED = {"v": RECORD_VERSION, "kind": "outcome", "action": "route"}
_OUTCOME_EXAMPLE = _outcome(
    decision_id="", time="", endpoint=None, attempts=(), status=None, latency_us=0, model="",
    record_id="",
)  # fmt: skip
_OUTCOME_TEMPLATE = RecordTemplate(
    _OUTCOME_FIXED, [key for key in _OUTCOME_EXAMPLE if key not in _OUTCOME_FIXED]
)


def encode_outcome(**fields: Any) -> tuple[str, bytes]:
    """(record id, canonical JSON) of an outcome record timed now, from a template: the same
    bytes as ``encode(outcome_record(...))`` with the same ``fields``."""
    record_id = new_record_id()
    record = _outcome(time=now_text(), record_id=record_id, **fields)
    return record_id, _render(_OUTCOME_TEMPLATE, record)


def _check_flat(values: Mapping[str, Any]) -> None:
    for key in FLAT_KEYS:
        if key in values:
            value = values[key]
            if value is not None and type(value) is not str:
                raise AuditError(f"audit record field {key!r} must be a string or null")


def _render(template: RecordTemplate, values: Mapping[str, Any]) -> bytes:
    _check_flat(values)
    try:
        return template.render(values)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit record {values.get('id')}: {exc}") from exc


def prune_record(
    *, before: str, seq_end: int, pruned: int, time: datetime, record_id: str | None = None
) -> dict[str, Any]:
    """A retention prune: bodies of records before ``before`` with seq < ``seq_end`` removed."""
    return {
        "v": RECORD_VERSION,
        "kind": "prune",
        "id": record_id or new_record_id(),
        "time": format_time(time),
        "before": before,
        "seq_end": seq_end,
        "pruned": pruned,
    }


def encode(record: Mapping[str, Any]) -> bytes:
    """Check a record's shape and return its canonical JSON, the bytes that are hashed."""
    if not isinstance(record, Mapping):
        raise AuditError(f"an audit record must be a dict, not {type(record).__name__}")
    if record.get("v") != RECORD_VERSION:
        raise AuditError(f"audit record has version {record.get('v')!r}, expected 1")
    if record.get("kind") not in KINDS:
        raise AuditError(f"audit record kind {record.get('kind')!r} is not one of {KINDS}")
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise AuditError("audit record has no string id")
    if not isinstance(record.get("time"), str) or not _TIME.match(record["time"]):
        raise AuditError(f"audit record time {record.get('time')!r} is not RFC 3339 UTC with µs")
    for key in FLAT_KEYS:
        if not isinstance(record.get(key), str | None):
            raise AuditError(f"audit record field {key!r} must be a string or null")
    try:
        return canonical_json(dict(record))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit record {record.get('id')}: {exc}") from exc


# Record keys copied to indexed columns (``time`` goes to the ``ts`` column).
FLAT_KEYS = (
    "tenant",
    "country",
    "subdivision",
    "model",
    "endpoint",
    "processing_country",
    "action",
    "policy_version",
    "decision_id",
    "object",
)


def flat_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """The indexed columns for a record, as the sequencer stores them and verify expects them."""
    columns: dict[str, Any] = {"kind": record["kind"], "ts": record["time"]}
    for key in FLAT_KEYS:
        columns[key] = record.get(key)
    return columns


def flat_values(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """``flat_columns(record)``'s values, in ``schema.FLAT_FIELDS`` order."""
    return (record["kind"], record["time"], *[record.get(key) for key in FLAT_KEYS])


def rule_ids(record: Mapping[str, Any]) -> list[str]:
    """The distinct rule ids of a record, sorted, as the rule join table holds them."""
    rules = record.get("rules") or []
    return sorted(
        {r["id"] for r in rules if isinstance(r, Mapping) and isinstance(r.get("id"), str)}
    )
