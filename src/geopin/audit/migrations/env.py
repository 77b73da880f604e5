"""Alembic environment for the audit schema, configured in code (no alembic.ini).

``geopin.audit.migrate`` passes an open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from geopin.audit.schema import VERSION_TABLE, metadata

_connection = context.config.attributes.get("connection")
if _connection is None:  # pragma: no cover - only reachable when run outside geopin
    raise RuntimeError("the audit migrations run through `geopin db upgrade`")

context.configure(
    connection=_connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=_connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
