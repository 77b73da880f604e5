"""Audit log benchmarks: durable write throughput and latency, time to a signed checkpoint,
and query/stats latency on large logs. Prints medians; results go in bench/README.md.

    python bench/audit_bench.py writer [--pg URL] [--producers 64] [--seconds 5]
    python bench/audit_bench.py checkpoint [--pg URL]
    python bench/audit_bench.py latency [--cpu N] [--records 5000] [--pg URL]
    python bench/audit_bench.py sequence [--records 20000] [--pg URL]
    python bench/audit_bench.py query --rows 1000000 [--pg URL] [--sqlite]

Query data is generated with bulk SQL straight into audit_records (not through the writer):
90 days, 30 client countries, 4 processing countries, 20 tenants, spread evenly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "audit"))
from audit_factories import add_pending, make_outcome, make_record  # noqa: E402

from geopin.audit.checkpoint import SigningKey  # noqa: E402
from geopin.audit.db import create_audit_engine  # noqa: E402
from geopin.audit.migrate import upgrade  # noqa: E402
from geopin.audit.query import Filters, query_records, stats  # noqa: E402
from geopin.audit.records import encode  # noqa: E402
from geopin.audit.schema import checkpoints  # noqa: E402
from geopin.audit.sequencer import Sequencer  # noqa: E402
from geopin.audit.writer import AuditWriter  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
COUNTRIES = [
    "AT", "BE", "BG", "CA", "CH", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GB", "GR",
    "HR", "HU", "IE", "IT", "JP", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "US",
]  # fmt: skip


def _fresh(url: str | None, tmp: str, sync: str = "NORMAL"):
    if url is None:
        engine = create_audit_engine(f"sqlite:///{tmp}/bench.db", sqlite_synchronous=sync)
    else:
        engine = create_audit_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS bench_audit CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA bench_audit"))
        engine.dispose()
        engine = create_audit_engine(_in_schema(url, "bench_audit"))
    upgrade(engine)
    return engine


def _in_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


# ---- writer ------------------------------------------------------------------------------


async def _throughput(engine, producers: int, seconds: float) -> tuple[float, float]:
    records = [make_record(n) for n in range(2000)]
    writer = AuditWriter(engine)
    await writer.start()
    done = 0
    stop = time.perf_counter() + seconds

    async def producer(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop:
            record = dict(records[i % len(records)])
            record["id"] = f"{offset}-{i}-{id(record)}-{time.perf_counter_ns()}"
            await writer.record(record)
            done += 1
            i += producers

    started = time.perf_counter()
    await asyncio.gather(*(producer(p) for p in range(producers)))
    elapsed = time.perf_counter() - started
    stats_ = writer.stats()
    await writer.close()
    return done / elapsed, done / max(1, stats_.transactions)


async def _latency(engine, count: int) -> tuple[float, float]:
    writer = AuditWriter(engine)
    await writer.start()
    samples = []
    for n in range(count):
        record = make_record(n)
        started = time.perf_counter()
        await writer.record(record)
        samples.append(time.perf_counter() - started)
    await writer.close()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def bench_writer(args) -> None:
    targets: list[tuple[str, str | None, str]] = [
        ("SQLite NORMAL", None, "NORMAL"),
        ("SQLite FULL", None, "FULL"),
    ]
    if args.pg:
        targets.append(("PostgreSQL", args.pg, "NORMAL"))
    print(
        f"| database | records/s ({args.producers} producers) | records/commit "
        "| record() p50 | record() p99 |"
    )
    print("|---|---|---|---|---|")
    for name, url, sync in targets:
        rates, per_commit, p50s, p99s = [], [], [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                engine = _fresh(url, tmp, sync)
                rate, grouped = asyncio.run(_throughput(engine, args.producers, args.seconds))
                p50, p99 = asyncio.run(_latency(engine, args.latency_records))
                engine.dispose()
            rates.append(rate)
            per_commit.append(grouped)
            p50s.append(p50)
            p99s.append(p99)
        print(
            f"| {name} | {statistics.median(rates):,.0f} | {statistics.median(per_commit):.0f} "
            f"| {statistics.median(p50s) * 1e3:.3f} ms | {statistics.median(p99s) * 1e3:.3f} ms |",
            flush=True,
        )


# ---- time to a signed checkpoint ---------------------------------------------------------


async def _to_checkpoint(engine, samples: int, poll: float) -> list[float]:
    key = SigningKey.generate("bench.test/geopin")
    sequencer = Sequencer(engine, signing_key=key, checkpoint_interval_s=0.0)
    stop = asyncio.Event()
    task = asyncio.create_task(sequencer.run(stop, poll_interval_s=poll))
    writer = AuditWriter(engine)
    await writer.start()
    out = []
    for n in range(samples):
        started = time.perf_counter()
        await writer.record(make_record(n))
        while True:
            with engine.connect() as conn:
                size = conn.scalar(sa.select(sa.func.max(checkpoints.c.size))) or 0
            if size >= n + 1:
                break
            await asyncio.sleep(0.002)
        out.append(time.perf_counter() - started)
    stop.set()
    await task
    await writer.close()
    return out


def bench_checkpoint(args) -> None:
    targets = [("SQLite", None)] + ([("PostgreSQL", args.pg)] if args.pg else [])
    print(
        f"| database | record -> signed checkpoint, median | p90 | (sequencer poll {args.poll}s) |"
    )
    print("|---|---|---|---|")
    for name, url in targets:
        with tempfile.TemporaryDirectory() as tmp:
            engine = _fresh(url, tmp)
            got = sorted(asyncio.run(_to_checkpoint(engine, args.samples, args.poll)))
            engine.dispose()
        p90 = got[int(len(got) * 0.9)]
        print(f"| {name} | {statistics.median(got) * 1e3:.0f} ms | {p90 * 1e3:.0f} ms | |")


# ---- a decision's commit as the router makes it -------------------------------------------


async def _router_like(engine, tmp: str, count: int) -> list[float]:
    """The commit of each decision record timed, as the router makes it (``commit``: on SQLite
    with ``synchronous=NORMAL`` an append to the process's journal), its outcome queued after
    it (``submit``), the sequencer running and signing checkpoints with the router's
    defaults."""
    sequencer = Sequencer(
        engine,
        signing_key=SigningKey.generate("bench.test/geopin"),
        checkpoint_file=f"{tmp}/checkpoints",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sequencer.run(stop))
    writer = AuditWriter(engine)
    await writer.start()
    samples = []
    for n in range(count):
        record = make_record(n)  # a fresh UUIDv7 id each time
        body = encode(record)
        started = time.perf_counter()
        await writer.commit(record["id"], body)
        samples.append(time.perf_counter() - started)
        outcome = make_outcome(n)
        writer.submit(outcome["id"], encode(outcome))  # after the response: nobody waits
        await asyncio.sleep(0.0003)  # the rest of a proxied request
    await writer.close()
    stop.set()
    await task
    return samples


# ---- sequencing throughput ------------------------------------------------------------


def _sequence_once(engine, tmp: str, count: int) -> tuple[float, float]:
    """Seconds and CPU seconds for one sequencer run over ``count`` pending records."""
    for lo in range(0, count, 2000):
        pairs = range(lo // 2, min(lo + 2000, count) // 2)
        add_pending(engine, [r for n in pairs for r in (make_record(n), make_outcome(n))])
    sequencer = Sequencer(
        engine,
        signing_key=SigningKey.generate("bench.test/geopin"),
        checkpoint_file=f"{tmp}/checkpoints",
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = sequencer.run_once(wait=True, force_checkpoint=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert result.sequenced == count // 2 * 2, result
    return wall, cpu


def bench_sequence(args) -> None:
    """What the sequencer spends per record: a backlog of decision and outcome records
    sequenced in one run (batches, Merkle nodes, indexed columns, a signed checkpoint)."""
    targets = [("SQLite", None)] + ([("PostgreSQL", args.pg)] if args.pg else [])
    print("| database | records | records/s | CPU µs per record (this process) |")
    print("|---|---|---|---|")
    for name, url in targets:
        runs = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                engine = _fresh(url, tmp)
                runs.append(_sequence_once(engine, tmp, args.records))
                engine.dispose()
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        n = args.records // 2 * 2
        print(f"| {name} | {n:,} | {n / wall:,.0f} | {cpu / n * 1e6:.0f} |")


def bench_latency(args) -> None:
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    import uvloop

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        engine = _fresh(args.pg, tmp, args.sync)
        samples = sorted(uvloop.run(_router_like(engine, tmp, args.records)))
        engine.dispose()

    def pct(p: float) -> str:
        return f"{samples[min(len(samples) - 1, int(p * len(samples)))] * 1e3:.3f}"

    where = "PostgreSQL" if args.pg else f"SQLite {args.sync}"
    core = f"core {args.cpu}" if args.cpu is not None else "any core"
    print(
        f"A decision record kept as the router keeps it (on SQLite NORMAL: appended to the "
        f"journal), concurrency 1 ({where}, sequencer running, {core}, "
        f"{len(samples)} decisions each followed by its outcome): p50 {pct(0.5)} ms, "
        f"p90 {pct(0.9)} ms, p99 {pct(0.99)} ms, p99.9 {pct(0.999)} ms, "
        f"max {samples[-1] * 1e3:.3f} ms"
    )


# ---- queries on large logs ---------------------------------------------------------------

_BODY = b'{"v":1,"kind":"decision","note":"generated for the query benchmark"}'


def _populate(engine, rows: int) -> None:
    with engine.connect() as conn:
        have = conn.scalar(sa.text("SELECT count(*) FROM audit_records"))
    if have == rows:
        return
    countries = "'{" + ",".join(COUNTRIES) + "}'"
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_records"))
        if engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(f"""
                INSERT INTO audit_records (seq, record_id, kind, ts, tenant, country, subdivision,
                    model, endpoint, processing_country, action, policy_version, decision_id, body)
                SELECT g, 'r' || g, 'decision',
                    to_char(timestamp '2026-09-01' + (g::float8 / {rows} * 90) * interval '1 day',
                            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                    't' || (g % 20), ({countries}::text[])[1 + (g * 7919) % 30], NULL,
                    'model-' || (g % 3), 'ep-' || (g % 4), (ARRAY['DE','FR','US','JP'])[1 + g % 4],
                    CASE WHEN g % 50 = 0 THEN 'deny' ELSE 'route' END, 'p-1', 'd' || g, :body
                FROM generate_series(0::bigint, {rows - 1}) AS g
            """),
                {"body": _BODY},
            )
        else:
            values = ",".join(f"('{c}', {i})" for i, c in enumerate(COUNTRIES))
            conn.exec_driver_sql("CREATE TEMP TABLE bench_countries(code, i)")
            conn.exec_driver_sql(f"INSERT INTO bench_countries VALUES {values}")
            conn.exec_driver_sql(
                f"""
                INSERT INTO audit_records (seq, record_id, kind, ts, tenant, country, subdivision,
                    model, endpoint, processing_country, action, policy_version, decision_id, body)
                WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < {rows - 1})
                SELECT n, 'r' || n, 'decision',
                    strftime('%Y-%m-%dT%H:%M:%f000Z',
                             julianday('2026-09-01') + (n * 90.0 / {rows})),
                    't' || (n % 20),
                    (SELECT code FROM bench_countries WHERE i = (n * 7919) % 30),
                    NULL, 'model-' || (n % 3), 'ep-' || (n % 4),
                    CASE n % 4 WHEN 0 THEN 'DE' WHEN 1 THEN 'FR' WHEN 2 THEN 'US' ELSE 'JP' END,
                    CASE WHEN n % 50 = 0 THEN 'deny' ELSE 'route' END, 'p-1', 'd' || n, ?
                FROM g
            """,
                (_BODY,),
            )
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    print(f"(generated {rows:,} rows in {time.perf_counter() - started:.0f} s)", file=sys.stderr)


def _median_ms(fn: Callable[[], object], repeat: int = 9) -> float:
    fn()  # warm the cache: the figure is for a running system, not a cold disk
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def bench_query(args) -> None:
    targets = []
    if args.sqlite:
        OUT.mkdir(exist_ok=True)
        targets.append(("SQLite", f"sqlite:///{OUT}/audit-{args.rows}.db", False))
    if args.pg:
        targets.append(("PostgreSQL", args.pg, True))
    day = Filters.build(since="2026-10-15", until="2026-10-15", country="DE")
    month = Filters.build(since="2026-10-01", until="2026-10-31")
    print(
        "| database | rows | day+country page (100) | day+country count by processing_country "
        "| day+country all rows | month stats by country |"
    )
    print("|---|---|---|---|---|---|")
    for name, url, pg in targets:
        if pg:
            schema = f"bench_audit_{args.rows}"
            with create_audit_engine(url).begin() as conn:
                conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
            url = _in_schema(url, schema)
        engine = create_audit_engine(url)
        upgrade(engine)
        _populate(engine, args.rows)
        page = _median_ms(lambda e=engine: query_records(e, day, limit=100))
        count = _median_ms(lambda e=engine: stats(e, day, ["processing_country"]))
        everything = _median_ms(lambda e=engine: query_records(e, day, limit=10_000))
        wide = _median_ms(lambda e=engine: stats(e, month, ["country"]), repeat=3)
        matched = stats(engine, day, ["country"]).total
        print(
            f"| {name} | {args.rows:,} ({matched:,} match) | {page:.1f} ms | {count:.1f} ms "
            f"| {everything:.1f} ms | {wide:.0f} ms |",
            flush=True,
        )
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("writer")
    w.add_argument("--pg")
    w.add_argument("--producers", type=int, default=64)
    w.add_argument("--seconds", type=float, default=5.0)
    w.add_argument("--runs", type=int, default=3)
    w.add_argument("--latency-records", type=int, default=2000)
    c = sub.add_parser("checkpoint")
    c.add_argument("--pg")
    c.add_argument("--samples", type=int, default=30)
    c.add_argument("--poll", type=float, default=0.05)
    lat = sub.add_parser("latency")
    lat.add_argument("--pg")
    lat.add_argument("--records", type=int, default=5000)
    lat.add_argument("--cpu", type=int, help="pin to this core")
    lat.add_argument("--sync", choices=["NORMAL", "FULL"], default="NORMAL")
    lat.add_argument("--dir", help="directory for the temporary database")
    sq = sub.add_parser("sequence")
    sq.add_argument("--pg")
    sq.add_argument("--records", type=int, default=20000)
    sq.add_argument("--runs", type=int, default=3)
    q = sub.add_parser("query")
    q.add_argument("--rows", type=int, default=1_000_000)
    q.add_argument("--pg")
    q.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    print(f"# {args.what} {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    benches = {
        "writer": bench_writer,
        "checkpoint": bench_checkpoint,
        "latency": bench_latency,
        "sequence": bench_sequence,
        "query": bench_query,
    }
    benches[args.what](args)


if __name__ == "__main__":
    main()
