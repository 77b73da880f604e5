"""Questions auditors ask of the log: which records match, and how many per field.

Queries read sequenced records only: every record they return has a sequence number, sits in
the Merkle tree and can be proven with ``geopin audit proof``. Records still waiting in the
pending table are counted and reported next to the results (``pending``) so nobody mistakes
"not sequenced yet" for "did not happen"; ``geopin audit query --sequence`` sequences first.

Pagination is keyset on the sequence number (never OFFSET): a page ends with an opaque cursor
that resumes strictly after its last record, stable while the log grows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from geopin.audit.db import translate_errors
from geopin.audit.records import FLAT_KEYS, format_time
from geopin.audit.schema import FLAT_FIELDS, record_rules, records
from geopin.audit.store import pending_count
from geopin.errors import AuditError
from geopin.policy.places import PlaceSet

# Fields a query can filter on (each takes several values, OR'd) and stats can group by.
FILTER_FIELDS = ("kind", *FLAT_KEYS, "rule")
GROUP_FIELDS = (*FILTER_FIELDS, "day", "month")
MAX_LIMIT = 10_000


class QueryError(AuditError):
    """A query that cannot be run as asked (a bad date, field, cursor or limit)."""


@dataclass(frozen=True)
class Filters:
    since: str | None = None  # inclusive, RFC 3339 as records store it
    until: str | None = None  # exclusive
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)  # field -> any of these
    places: PlaceSet | None = None  # a jurisdiction: the client's country or subdivision in it

    @classmethod
    def build(
        cls,
        *,
        since: str | None = None,
        until: str | None = None,
        places: PlaceSet | None = None,
        **values: Sequence[str] | str | None,
    ) -> Filters:
        """``since``/``until`` as ISO dates or datetimes (a date-only ``until`` includes that
        day); other keywords are FILTER_FIELDS with one value or several."""
        kept: dict[str, tuple[str, ...]] = {}
        for name, value in values.items():
            if name not in FILTER_FIELDS:
                raise QueryError(f"unknown filter {name!r}; filters are {', '.join(FILTER_FIELDS)}")
            if value is None or value == () or value == []:
                continue
            kept[name] = (value,) if isinstance(value, str) else tuple(value)
        return cls(
            since=parse_bound(since, "since") if since else None,
            until=parse_bound(until, "until") if until else None,
            values=kept,
            places=places,
        )


def parse_bound(text: str, which: str) -> str:
    """An ISO date or datetime as the record time text; a timezone-less time is UTC."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
            day = date.fromisoformat(text)
            if which == "until":  # through the end of that day (--before is the day's start)
                day += timedelta(days=1)
            moment = datetime.combine(day, time(), tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        raise QueryError(
            f"--{which} {text!r} is not an ISO date (2026-11-01) or datetime (2026-11-01T09:30:00Z)"
        ) from None
    return format_time(moment)


def _conditions(filters: Filters) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if filters.since:
        where.append(records.c.ts >= filters.since)
    if filters.until:
        where.append(records.c.ts < filters.until)
    for name, values in filters.values.items():
        if name == "rule":
            where.append(
                records.c.seq.in_(
                    sa.select(record_rules.c.seq).where(record_rules.c.rule_id.in_(values))
                )
            )
        else:
            where.append(records.c[name].in_(values))
    places = filters.places
    if places is not None and not places.anywhere:
        either = []
        if places.countries:
            either.append(records.c.country.in_(sorted(places.countries)))
        if places.subdivisions:
            either.append(records.c.subdivision.in_(sorted(places.subdivisions)))
        where.append(sa.or_(*either) if either else sa.false())
    return where


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]  # seq, the flat columns, and "record" (None once pruned)
    next_cursor: str | None
    pending: int  # records not yet sequenced, so not in any result


def encode_cursor(seq: int) -> str:
    return f"s{seq}"


def decode_cursor(cursor: str) -> int:
    match = re.fullmatch(r"s(\d+)", cursor.strip())
    if not match:
        raise QueryError(f"cursor {cursor!r} is not one this API returned")
    return int(match.group(1))


def query_records(
    engine: Engine, filters: Filters, *, limit: int = 100, cursor: str | None = None
) -> Page:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    where = _conditions(filters)
    if cursor:
        where.append(records.c.seq > decode_cursor(cursor))
    columns = [records.c.seq, records.c.body, *(records.c[f] for f in FLAT_FIELDS)]
    statement = sa.select(*columns).where(*where).order_by(records.c.seq).limit(limit + 1)
    with translate_errors("querying the audit log"):
        with engine.connect() as conn:
            rows = conn.execute(statement).all()
            waiting = pending_count(conn)
    out = []
    for row in rows[:limit]:
        item: dict[str, Any] = {"seq": int(row.seq)}
        item.update({f: getattr(row, f) for f in FLAT_FIELDS})
        item["record"] = json.loads(row.body) if row.body is not None else None
        out.append(item)
    more = len(rows) > limit
    return Page(out, encode_cursor(out[-1]["seq"]) if more else None, waiting)


@dataclass(frozen=True)
class Stats:
    by: tuple[str, ...]
    groups: list[dict[str, Any]]  # the group's field values and "count", largest first
    total: int
    pending: int


def stats(engine: Engine, filters: Filters, by: Sequence[str]) -> Stats:
    """Counts of matching records grouped by ``by`` (GROUP_FIELDS). Grouping by ``rule``
    counts a record once per rule it matched."""
    by = tuple(by)
    for name in by:
        if name not in GROUP_FIELDS:
            raise QueryError(f"cannot group by {name!r}; fields are {', '.join(GROUP_FIELDS)}")
    if len(set(by)) != len(by):
        raise QueryError(f"--by lists a field twice: {','.join(by)}")
    keys = [_group_key(name) for name in by]
    source: Any = records
    if "rule" in by:
        source = records.join(record_rules, record_rules.c.seq == records.c.seq)
    count = sa.func.count().label("count")
    statement = (
        sa.select(*keys, count)
        .select_from(source)
        .where(*_conditions(filters))
        .group_by(*keys)
        .order_by(count.desc(), *keys)
    )
    total_statement = sa.select(sa.func.count()).select_from(records).where(*_conditions(filters))
    with translate_errors("counting audit records"):
        with engine.connect() as conn:
            groups = [
                {
                    **{name: value for name, value in zip(by, row[:-1], strict=True)},
                    "count": row[-1],
                }
                for row in conn.execute(statement)
            ]
            total = int(conn.scalar(total_statement) or 0)
            waiting = pending_count(conn)
    return Stats(by, groups, total, waiting)


def _group_key(name: str) -> Any:
    if name == "rule":
        return record_rules.c.rule_id.label("rule")
    if name == "day":
        return sa.func.substr(records.c.ts, 1, 10).label("day")
    if name == "month":
        return sa.func.substr(records.c.ts, 1, 7).label("month")
    return records.c[name]
