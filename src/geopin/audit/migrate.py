"""Schema migrations, configured in code so they run from an installed package.

``upgrade(engine)`` brings the audit schema to this geopin's head revision (``geopin db
upgrade``); ``check_schema(engine)`` is what the router calls at start to refuse an old schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from geopin.audit.db import redact, translate_errors
from geopin.audit.schema import VERSION_TABLE
from geopin.errors import SchemaOutOfDate

_SCRIPTS = Path(__file__).resolve().parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "the audit migrations have no head revision"
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, None for a database never upgraded."""
    with translate_errors(f"reading the schema version of {redact(_url(engine))}"):
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = _config()
    with translate_errors(f"upgrading the audit schema of {redact(_url(engine))}"):
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def status(engine: Engine) -> SchemaStatus:
    return SchemaStatus(current_revision(engine), head_revision())


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutOfDate unless the database is at exactly this geopin's schema."""
    state = status(engine)
    if state.up_to_date:
        return
    fix = f"run `geopin db upgrade --db {redact(_url(engine))}`"
    if state.current is None:
        raise SchemaOutOfDate(f"the audit database has no geopin schema yet: {fix}")
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    if state.current not in known:
        raise SchemaOutOfDate(
            f"the audit database schema ({state.current}) is newer than this geopin "
            f"(which knows up to {state.head}): upgrade geopin"
        )
    raise SchemaOutOfDate(
        f"the audit database schema is at {state.current}, this geopin needs {state.head}: {fix}"
    )


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)
