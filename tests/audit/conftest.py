"""Fixtures for audit tests; the factories are in audit_factories.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import upgrade


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated audit database."""
    eng = create_audit_engine(database_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:
    """A migrated audit database in a SQLite file, whatever the database under test."""
    eng = create_audit_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()
