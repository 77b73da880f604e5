"""Per-request cost of geopin's telemetry: the helpers in-process, and the router end to end.

    python bench/telemetry_bench.py [--rounds N]
    python bench/telemetry_bench.py --proxy [--duration S] [--reps N] [--before-src DIR]

In-process, one "request" is the whole sequence the proxy runs: a SERVER span continuing a
client traceparent, the decision and audit child spans, one upstream attempt with its injected
traceparent, the decision/route/usage attributes, and the request, decision, upstream and
model-operation metrics. Measured with telemetry off (the default settings), with the
Prometheus scrape on, with OTLP on (every request sampled; spans through a BatchSpanProcessor
to an exporter that drops them, so only recording is measured, not the network). Each figure
is the median over batches.

``--proxy`` starts the mock upstream (core 0, with the load generator) and ``geopin serve``
(core 1) once per telemetry setting, off, Prometheus, and OTLP to a collector address where
nothing listens, and measures chat requests at concurrency 1 and 32 with ``bench/loadgen.py``
(interleaved repetitions, medians; each measurement starts once every router has sequenced
what the ones before left pending). ``--before-src`` adds a run of another source tree (e.g. a
checkout from before telemetry was wired in) with the same settings as "off".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from geopin.telemetry import Telemetry, TelemetrySettings

BATCH = 2000
ROUNDS = 21
TARGET_OFF_US = 5.0
HEADERS = [
    (b"content-type", b"application/json"),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
]


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def one_request(telemetry: Telemetry, i: int) -> None:
    tracing, metrics = telemetry.tracing, telemetry.metrics
    trace = tracing.start_request(
        method="POST", path="/v1/chat/completions", route="/v1/chat/completions", headers=HEADERS
    )
    decide = trace.start_decision()
    decide.end()
    metrics.decision(action="route", duration_s=0.00004)
    trace.decided(
        decision_id="dec_01JD6Z",
        action="route",
        country="DE",
        subdivision="DE-BY",
        location_source="mmdb",
        policy_version="sha256:1f2e",
        rules=("eu-only",),
    )
    audit = trace.start_audit()
    audit.end()
    attempt = trace.start_attempt(
        endpoint="eu-1", server_address="eu1.example", server_port=443, provider="openai"
    )
    attempt.trace_headers()
    attempt.end(status=200)
    metrics.upstream(endpoint="eu-1", status=200, duration_s=0.12)
    trace.routed(endpoint="eu-1", processing_country="DE", provider="openai")
    trace.usage(model="gpt-4o", input_tokens=120, output_tokens=380)
    trace.end(status=200)
    metrics.request(
        action="route",
        country="DE",
        processing_country="DE",
        status=200,
        duration_s=0.13,
        route="/v1/chat/completions",
    )
    metrics.model_operation(
        operation="chat",
        provider="openai",
        model="gpt-4o",
        endpoint="eu-1",
        duration_s=0.13,
        input_tokens=120,
        output_tokens=380,
    )


def measure(telemetry: Telemetry, rounds: int) -> float:
    """Median microseconds per request over ``rounds`` batches."""
    for i in range(BATCH):  # warm up
        one_request(telemetry, i)
    per_request = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(BATCH):
            one_request(telemetry, i)
        per_request.append((time.perf_counter() - started) / BATCH * 1e6)
    return statistics.median(per_request)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--proxy", action="store_true", help="measure geopin serve end to end")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--before-src", type=Path, help="another source tree to compare with")
    parser.add_argument("--after-src", type=Path, help="source tree of the telemetry variants")
    parser.add_argument("--only", nargs="+", help="measure only these variants (name prefixes)")
    args = parser.parse_args()
    if args.proxy:
        return proxy_main(args)
    modes = {
        "off (default settings)": Telemetry.from_settings(TelemetrySettings()),
        "Prometheus scrape on": Telemetry.from_settings(TelemetrySettings(prometheus=True)),
        "OTLP on (metrics + every request traced, batch processor)": Telemetry.from_settings(
            TelemetrySettings(),
            span_processors=[BatchSpanProcessor(_Discard(), max_queue_size=8192)],
            metric_readers=[InMemoryMetricReader()],
        ),
    }
    results = {}
    for name, telemetry in modes.items():
        results[name] = measure(telemetry, args.rounds)
        telemetry.shutdown()
    print("| telemetry | µs per request (median) |")
    print("|---|---|")
    for name, micros in results.items():
        print(f"| {name} | {micros:.2f} |")
    off = results["off (default settings)"]
    if off > TARGET_OFF_US:
        print(f"telemetry off costs {off:.2f} µs per request, over {TARGET_OFF_US} µs")
        return 1
    return 0


# -- end to end -----------------------------------------------------------------------------

BENCH = Path(__file__).resolve().parent
CONCURRENCY = (1, 32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], core: int, log: Path, env: dict | None = None):
    return subprocess.Popen(
        command,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )


def _stop(process) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _wait(url: str, process, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited:\n{log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


def _router_config(work: Path, name: str, upstream: str, port: int, telemetry: dict | None):
    from geopin.audit.db import create_audit_engine
    from geopin.audit.migrate import upgrade

    policy = work / "policy"
    if not policy.exists():
        policy.mkdir()
        (policy / "policy.yaml").write_text(
            json.dumps(
                {
                    "endpoints": [
                        {
                            "id": "eu-se",
                            "url": upstream + "/v1",
                            "kind": "openai-compatible",
                            "country": "SE",
                            "tier": "regional",
                            "models": {"gpt-4o-mini": "gpt-4o-mini"},
                        }
                    ],
                    "defaults": {"no_match": {"process_in": ["SE"], "reason": "bench"}},
                }
            )
        )
    db = f"sqlite:///{work / (name + '.db')}"
    engine = create_audit_engine(db)
    upgrade(engine)
    engine.dispose()
    config: dict = {
        "listen": f"127.0.0.1:{port}",
        "policy_dir": str(policy),
        "keys_file": str(work / "keys.json"),
        "trusted_cdns": ["127.0.0.1"],
        "probes": {"enabled": False},
        "reload": {"poll_interval_s": 0},
        "audit": {"database_url": db},
    }
    if telemetry is not None:
        config["telemetry"] = telemetry
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(config))
    return path


def proxy_main(args) -> int:
    from geopin.keys import KeyStore

    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        cores = cores * 2
    work = Path(tempfile.mkdtemp(prefix="geopin-telemetry-bench-"))
    with KeyStore.editing(work / "keys.json") as store:
        key = store.create("bench")[1]
    mock_port = _free_port()
    mock_log = work / "mock.log"
    mock = _start(
        [sys.executable, "-m", "geopin", "mock-upstream", "--port", str(mock_port),
         "--region", "eu-se"],
        cores[0],
        mock_log,
    )  # fmt: skip
    upstream = f"http://127.0.0.1:{mock_port}"
    dead = f"http://127.0.0.1:{_free_port()}"
    variants: dict[str, tuple[dict | None, dict]] = {}
    if args.before_src is not None:
        variants["before (no telemetry wired)"] = (None, {"PYTHONPATH": str(args.before_src)})
    after = {"PYTHONPATH": str(args.after_src)} if args.after_src is not None else {}
    variants["off (default)"] = ({}, after)
    variants["off, access log off too"] = ({"access_log": False}, after)
    variants["Prometheus on"] = ({"prometheus": True}, after)
    variants["OTLP on, collector down"] = (
        {"otlp_endpoint": dead, "metrics_export_interval_s": 10},
        after,
    )
    if args.only:
        variants = {k: v for k, v in variants.items() if any(k.startswith(o) for o in args.only)}
    os.sched_setaffinity(0, {cores[0]})
    routers = {}
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        _wait(upstream + "/healthz", mock, mock_log)
        for i, (name, (telemetry, env)) in enumerate(variants.items()):
            port = _free_port()
            config = _router_config(work, f"r{i}", upstream, port, telemetry)
            log = work / f"r{i}.log"
            process = _start(
                [sys.executable, "-m", "geopin", "serve", "--config", str(config)],
                cores[1],
                log,
                env={**env, "GEOPIN_TELEMETRY_ACCESS_LOG": "true"}
                if telemetry is not None
                else env,
            )
            routers[name] = (process, f"http://127.0.0.1:{port}")
            _wait(routers[name][1] + "/_geopin/healthz", process, log)
        databases = [work / f"r{i}.db" for i in range(len(routers))]
        for _ in range(args.reps):
            for name, (_, url) in routers.items():
                for concurrency in CONCURRENCY:
                    _wait_sequenced(databases)
                    results.setdefault((name, concurrency), []).append(
                        _loadgen(url, key, concurrency, args.duration, cores[0])
                    )
    finally:
        for process, _ in routers.values():
            _stop(process)
        _stop(mock)
    print("| telemetry | c | p50 ms | p99 ms | req/s | errors |")
    print("|---|---|---|---|---|---|")
    for (name, concurrency), runs in results.items():
        if any(r["p50_ms"] is None for r in runs):
            print(f"| {name} | {concurrency} | failed: {runs[0]['error_kinds']} |")
            continue
        med = {k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "p99_ms", "rps")}
        errors = sum(r["errors"] for r in runs)
        print(
            f"| {name} | {concurrency} | {med['p50_ms']:.3f} | {med['p99_ms']:.3f} | "
            f"{med['rps']:.0f} | {errors} |"
        )
    return 0


def _wait_sequenced(databases: list[Path], timeout: float = 120.0) -> None:
    """Until every router has sequenced what the cells before left pending: a router that
    catches up on its backlog would otherwise share the core with the one being measured."""
    import sqlite3

    deadline = time.monotonic() + timeout
    for database in databases:
        while time.monotonic() < deadline:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                (waiting,) = db.execute("SELECT count(*) FROM audit_pending").fetchone()
            if not waiting:
                break
            time.sleep(0.2)


def _loadgen(url: str, key: str, concurrency: int, duration: float, core: int) -> dict:
    out = subprocess.run(
        [sys.executable, str(BENCH / "loadgen.py"), "--url", url + "/v1/chat/completions",
         "-c", str(concurrency), "-d", str(duration), "-H", f"Authorization: Bearer {key}",
         "-H", "cf-ipcountry: SE", "--cpu", str(core)],
        capture_output=True,
        check=False,
    )  # fmt: skip
    return json.loads(out.stdout)


if __name__ == "__main__":
    sys.exit(main())
