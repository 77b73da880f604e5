"""Factories for audit tests: endpoints, decisions and records, with keyword overrides."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from geopin.audit.records import decision_record, outcome_record
from geopin.geo.location import Location, LocationSource
from geopin.policy.decision import (
    Action,
    Decision,
    DenyCode,
    Endpoint,
    ProviderKind,
    RuleMatch,
    Tier,
)

CLIENT_KEY = b"test-client-address-key"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_endpoint(**overrides: Any) -> Endpoint:
    fields: dict[str, Any] = {
        "id": "eu-fra",
        "url": "https://fra.example.test/v1",
        "kind": ProviderKind.OPENAI,
        "country": "DE",
        "tier": Tier.REGIONAL,
        "models": {"gpt-x": "gpt-x"},
    }
    fields.update(overrides)
    return Endpoint(**fields)


def make_decision(**overrides: Any) -> Decision:
    endpoint = overrides.pop("endpoint", make_endpoint())
    fields: dict[str, Any] = {
        "action": Action.ROUTE,
        "policy_version": "p-1",
        "permitted": ("AT", "DE", "FR"),
        "candidates": (endpoint,),
        "candidate_ranks": (0,),
        "matched": (RuleMatch("eu-residency", "process_in", ("EEA",)),),
        "reason": "EU clients are processed in the EEA",
        "legal_basis": "GDPR art. 44",
        "data_class": "personal",
    }
    fields.update(overrides)
    return Decision(**fields)


def make_denial(**overrides: Any) -> Decision:
    fields: dict[str, Any] = {
        "action": Action.DENY,
        "candidates": (),
        "candidate_ranks": (),
        "permitted": (),
        "matched": (RuleMatch("block-xx", "deny"),),
        "reason": "denied",
        "deny_code": DenyCode.RULE,
        "deny_rule": "block-xx",
    }
    fields.update(overrides)
    return make_decision(**fields)


def make_record(n: int = 0, **overrides: Any) -> dict[str, Any]:
    """A decision record; ``n`` varies its time and decision id. Overrides: ``country``,
    ``subdivision``, ``tenant``, ``model``, ``endpoint`` (an Endpoint), ``decision``, ``time``."""
    endpoint = overrides.pop("endpoint", make_endpoint())
    decision = overrides.pop("decision", make_decision(endpoint=endpoint))
    location = Location(
        country=overrides.pop("country", "FR"),
        subdivision=overrides.pop("subdivision", None),
        source=LocationSource.MMDB,
        database="GeoIP2-City test",
    )
    return decision_record(
        decision,
        location=location,
        client=overrides.pop("client", ipaddress.ip_address(f"203.0.113.{n % 250 + 1}")),
        client_key=CLIENT_KEY,
        model=overrides.pop("model", "gpt-x"),
        decision_id=overrides.pop("decision_id", f"dec-{n:06d}"),
        time=overrides.pop("time", T0 + timedelta(seconds=n)),
        endpoint=endpoint if decision.routed else None,
        tenant=overrides.pop("tenant", "acme"),
        data_class=overrides.pop("data_class", "personal"),
        trace_id=overrides.pop("trace_id", f"{n:032x}"),
        **overrides,
    )


def make_outcome(n: int = 0, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "decision_id": f"dec-{n:06d}",
        "time": T0 + timedelta(seconds=n, milliseconds=300),
        "endpoint": make_endpoint(),
        "attempts": ["eu-fra"],
        "status": 200,
        "latency_us": 300_000,
        "model": "gpt-x",
        "tenant": "acme",
        "location": Location("FR", None, LocationSource.MMDB),
        "policy_version": "p-1",
        "usage": {"input_tokens": 12, "output_tokens": 40},
    }
    fields.update(overrides)
    return outcome_record(**fields)


def add_pending(engine, records, *, own_table: bool = False) -> None:
    """Write records straight into the pending table, as AuditWriter would: on SQLite the
    inbox's. ``own_table``: the database's own ``audit_pending`` instead (where a prune's
    record goes, and where geopin before the inbox left them)."""
    from geopin.audit.db import write_connection
    from geopin.audit.inbox import INSERT_SQL, ensure, inbox_engine
    from geopin.audit.records import encode
    from geopin.audit.store import insert_pending

    rows = [(r["id"], encode(r)) for r in records]
    inbox = None if own_table else inbox_engine(engine)
    if inbox is not None:
        ensure(inbox)
        with write_connection(inbox) as conn, conn.begin():
            conn.exec_driver_sql(INSERT_SQL, rows)
        return
    with write_connection(engine) as conn, conn.begin():
        insert_pending(conn, rows)


def append_and_sequence(engine, records, *, key=None, checkpoint_file=None, force=True):
    """Add records and sequence them, signing a checkpoint when ``key`` is given."""
    from geopin.audit.sequencer import Sequencer

    add_pending(engine, records)
    sequencer = Sequencer(engine, signing_key=key, checkpoint_file=checkpoint_file)
    return sequencer.run_once(force_checkpoint=force)


@contextmanager
def geopin_service(*args: str, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """``python -m geopin ARGS`` as a service (stderr piped, no GEOPIN_* from the test's
    environment); killed at the end if the test did not stop it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOPIN_")}
    service = subprocess.Popen(
        [sys.executable, "-m", "geopin", *args], cwd=cwd, env=env, stderr=subprocess.PIPE
    )
    try:
        yield service
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        assert service.stderr is not None
        service.stderr.close()
