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
