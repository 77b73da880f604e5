"""The object homes table on real SQLite and PostgreSQL: what one router writes, another finds;
old rows go; a database that fails or hangs costs a logged warning, never a request."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
import sqlalchemy as sa

from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import upgrade
from geopin.audit.schema import object_homes
from geopin.proxy.object_table import ObjectTable
from geopin.proxy.objects import ObjectHomes

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def url(database_url):
    engine = create_audit_engine(database_url)
    upgrade(engine)
    engine.dispose()
    return database_url


def _table(url: str, clock: Clock | None = None, **options) -> ObjectTable:
    table = ObjectTable(
        create_audit_engine(url), retention_s=30 * DAY, clock=clock or time.time, **options
    )
    table.start()
    return table


def _close(table: ObjectTable) -> None:
    """Stop the table, then dispose of its engine (an application's owner does that)."""
    table.close()
    table.engine.dispose()


def _rows(url: str) -> set[tuple[str, str, str]]:
    engine = create_audit_engine(url)
    try:
        with engine.connect() as conn:
            columns = object_homes.c
            query = sa.select(columns.tenant, columns.object_id, columns.endpoint)
            return {(t, o, e) for t, o, e in conn.execute(query)}
    finally:
        engine.dispose()


def _written(table: ObjectTable, count: int) -> None:
    deadline = time.monotonic() + 10
    while table.written < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert table.written >= count, (table.written, table.dropped)


def test_what_one_router_learns_another_finds(url):
    maker, reader = _table(url), _table(url)
    try:
        here = ObjectHomes(table=maker)
        here.learn("t1", "resp_1", "eu-fr")
        here.learn(None, "file-anon", "eu-se")  # an anonymous client's: tenant ""
        _written(maker, 2)
        there = ObjectHomes(table=reader)
        assert there.find("t1", ["resp_1"]) is None  # not in the other process's memory...
        assert asyncio.run(there.locate("t1", ["resp_x", "resp_1"])) == ("resp_1", "eu-fr")
        assert there.find("t1", ["resp_1"]) == ("resp_1", "eu-fr")  # ...and now it is
        assert asyncio.run(there.locate(None, ["file-anon"])) == ("file-anon", "eu-se")
        assert asyncio.run(there.locate("t2", ["resp_1"])) is None  # another tenant's
        assert asyncio.run(there.locate("t1", ["resp_never"])) is None
    finally:
        _close(maker)
        _close(reader)
    assert _rows(url) == {("t1", "resp_1", "eu-fr"), ("", "file-anon", "eu-se")}


def test_names_are_looked_up_in_the_calls_order_and_the_newest_row_wins(url):
    table = _table(url)
    try:
        for endpoint in ("eu-se", "eu-fr", "eu-de"):  # made again elsewhere: one row, the last
            table.remember("t1", "file-a", endpoint)
        table.remember("t1", "resp_b", "us")
        _written(table, 2)
        assert asyncio.run(table.find("t1", ["resp_b", "file-a"])) == ("resp_b", "us")
        assert asyncio.run(table.find("t1", ["file-a", "resp_b"])) == ("file-a", "eu-de")
    finally:
        _close(table)
    assert _rows(url) == {("t1", "file-a", "eu-de"), ("t1", "resp_b", "us")}


def test_close_writes_what_is_queued(url):
    table = _table(url)
    for n in range(600):  # more than one transaction's worth
        table.remember("t1", f"file-{n:04d}", "eu-se")
    _close(table)
    assert len(_rows(url)) == 600
    assert table.written == 600 and table.dropped == 0


def test_rows_older_than_the_retention_are_neither_found_nor_kept(url):
    clock = Clock()
    table = _table(url, clock)
    try:
        table.remember("t1", "resp_old", "eu-se")
        _written(table, 1)
        clock.now += 20 * DAY
        table.remember("t1", "resp_new", "eu-fr")
        _written(table, 2)
        clock.now += 11 * DAY  # resp_old is 31 days old, resp_new 11
        assert asyncio.run(table.find("t1", ["resp_old"])) is None
        assert asyncio.run(table.find("t1", ["resp_new"])) == ("resp_new", "eu-fr")
        assert _rows(url) == {("t1", "resp_old", "eu-se"), ("t1", "resp_new", "eu-fr")}
        assert table.prune() == 1
        assert _rows(url) == {("t1", "resp_new", "eu-fr")}
        for n in range(300):  # more than one delete's worth
            table.remember("t2", f"file-{n}", "eu-se")
        _written(table, 302)
        clock.now += 31 * DAY
        assert table.prune() == 301
        assert _rows(url) == set()
    finally:
        _close(table)


def test_a_database_that_fails_costs_a_warning_not_a_request(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'none.db'}"  # no schema: no object_homes table
    table = _table(url, pause_s=60)
    try:
        with caplog.at_level(logging.WARNING, "geopin.proxy.object_table"):
            assert asyncio.run(table.find("t1", ["resp_1"])) is None
            table.remember("t1", "resp_1", "eu-se")
            deadline = time.monotonic() + 10
            while not table.dropped and time.monotonic() < deadline:
                time.sleep(0.005)
        assert table.dropped == 1 and table.written == 0
        stats = table.stats()
        assert (stats["lookups"], stats["failed"], stats["paused"]) == (1, 1, True)
        messages = [r.getMessage() for r in caplog.records]
        assert any("looking up where objects were made failed" in m for m in messages)
        assert any("1 object home(s) not kept" in m and "object_homes" in m for m in messages)
        # Paused after the failure: the next lookups do not touch the database at all.
        table.lookup = None  # type: ignore[assignment]  # would raise if called
        assert asyncio.run(table.find("t1", ["resp_1"])) is None
    finally:
        _close(table)


def test_a_lookup_that_hangs_is_given_up_after_its_timeout(url, caplog):
    table = _table(url, timeout_s=0.2, pause_s=60)
    release = threading.Event()
    real = table.lookup

    def slow(tenant, names):
        release.wait(10)
        return real(tenant, names)

    table.lookup = slow  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "geopin.proxy.object_table"):
            assert asyncio.run(table.find("t1", ["resp_1"])) is None
        assert time.monotonic() - started < 2
        assert any("no answer within 0.2 s" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        _close(table)


def test_without_a_table_only_the_process_remembers():
    homes = ObjectHomes()
    homes.learn("t1", "resp_1", "eu-fr")
    assert asyncio.run(homes.locate("t1", ["resp_1"])) == ("resp_1", "eu-fr")
    assert asyncio.run(homes.locate("t1", ["resp_2"])) is None


def test_an_object_read_back_is_not_written_again(url):
    table = _table(url)
    try:
        homes = ObjectHomes(table=table)
        homes.learn("t1", "resp_1", "eu-fr")
        homes.learn("t1", "resp_1", "eu-fr")  # GET /v1/responses/resp_1 names it again
        _written(table, 1)
        homes.learn("t1", "resp_1", "eu-se")  # made again elsewhere: that is news
        _written(table, 2)
    finally:
        _close(table)
    assert table.written == 2
    assert _rows(url) == {("t1", "resp_1", "eu-se")}


def test_a_slow_lookup_does_not_hold_up_the_others(url):
    table = _table(url, timeout_s=5)
    table.remember("t1", "resp_fast", "eu-fr")
    _written(table, 1)
    release = threading.Event()
    real = table.lookup

    def lookup(tenant, names):
        if names == ["resp_slow"]:
            release.wait(10)
        return real(tenant, names)

    table.lookup = lookup  # type: ignore[method-assign]

    async def both():
        slow = asyncio.ensure_future(table.find("t1", ["resp_slow"]))
        await asyncio.sleep(0.05)  # the slow one holds a thread by now
        fast = await asyncio.wait_for(table.find("t1", ["resp_fast"]), 2)
        release.set()
        return fast, await slow

    try:
        assert asyncio.run(both()) == (("resp_fast", "eu-fr"), None)
    finally:
        release.set()
        _close(table)
