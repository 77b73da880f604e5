"""The rows the audit writers committed, where geopin keeps them before they are sequenced:
the database's own ``audit_pending`` and, on SQLite, the inbox beside it (``geopin.audit.inbox``;
its rows stay there, at or below the log's mark, until swept)."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from geopin.audit.inbox import inbox_path
from geopin.audit.journal import journal_dir, unmoved
from geopin.audit.schema import pending


def pending_rows(engine: Engine) -> list[tuple[str, bytes]]:
    """(record id, body) of every pending row: the database's, then the inbox's, in id order,
    then those of the router processes' journals that are not in the inbox yet (read first: a
    record moving meanwhile is then found in one place or both)."""
    database = engine.url.database
    sqlite = engine.dialect.name == "sqlite" and database
    journaled = unmoved(journal_dir(database)) if sqlite else []
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(pending.c.record_id, pending.c.body))]
    path = inbox_path(engine)
    if path is not None:
        inbox = sa.create_engine(f"sqlite:///{path}")
        try:
            if sa.inspect(inbox).has_table("audit_pending"):
                with inbox.connect() as conn:
                    query = sa.select(pending.c.record_id, pending.c.body).order_by(pending.c.id)
                    rows += [tuple(r) for r in conn.execute(query)]
        finally:
            inbox.dispose()
    rows += [(json.loads(body)["id"], body) for body in journaled]
    return [(rid, bytes(body)) for rid, body in rows]


def pending_ids(engine: Engine) -> list[str]:
    return [rid for rid, _ in pending_rows(engine)]
