"""What a proxy adds: direct-to-mock against through-the-target, in one run.

The mock upstream and the load generator share core 0; every target under test runs on
core 1, so the target's cost shows up as added latency and lower requests/s rather than
as contention with the thing measuring it. Loopback only.

    python bench/proxy_bench.py --plain-hop
    python bench/proxy_bench.py --plain-hop --target-name geopin \\
        --target-cmd "geopin serve --config {config}" --target-config-template cfg.yaml
    python bench/proxy_bench.py --target-name other --target-url http://127.0.0.1:9000 \
        --header 'Authorization: Bearer sk-...'
    python bench/proxy_bench.py --geopin --plain-hop --litellm
    python bench/proxy_bench.py --geopin --geopin-variant no-sequencer:audit.sequencer=false

``--geopin`` starts ``geopin serve`` as it would run in production: a one-endpoint policy
pointing at the mock, a router key, no trusted proxies or CDNs, the audit log in a SQLite file
(sequenced and checkpointed in the router), then also measures ``AuditWriter.record()`` alone
(``bench/audit_bench.py latency``) on the same core, which is the audit's share.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
CLIENT_KEY = "sk-bench-client"  # every target gets the same request bytes, this key included
DONE = b"data: [DONE]\n\n"


def _import(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


loadgen = _import("bench_loadgen", BENCH / "loadgen.py")

# ---- the plain hop: the least a Python HTTP proxy can do -----------------------------------

_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"upgrade", b"te"}


async def _read_body(receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _serve_asgi(app, port: int) -> None:
    """uvicorn as geopin runs it (uvloop, httptools), without lifespan or access log."""
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


def serve_plain_hop(port: int, upstream: str) -> None:
    """uvicorn + httpx pass-through: the same stack a Python router is built on."""
    import httpx

    client = httpx.AsyncClient(
        base_url=upstream, timeout=30, limits=httpx.Limits(max_keepalive_connections=256)
    )

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP]
        target = scope["raw_path"].decode() + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        request = client.build_request(scope["method"], target, headers=headers, content=body)
        response = await client.send(request, stream=True)
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": out}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    _serve_asgi(app, port)


_FLOOR_DROPPED = _HOP_BY_HOP | {b"content-length"}


def serve_asgi_floor(port: int, upstream: str) -> None:
    """geopin's own stack with none of its work: uvicorn (uvloop, httptools) and a raw ASGI
    callable that reads the body, sends it on geopin's pooled upstream client and relays the
    answer chunk by chunk. No key, no location, no decision, no record, no telemetry: what is
    left of geopin's added latency over this is geopin's own."""
    from geopin.proxy.forward import Origin, UpstreamClient, UpstreamRequest

    host, upstream_port = upstream.removeprefix("http://").split(":")
    origin = Origin("http", host, int(upstream_port))
    client = UpstreamClient()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        # The client adds Host and Content-Length itself.
        headers = [(k, v) for k, v in scope["headers"] if k not in _FLOOR_DROPPED]
        target = scope["raw_path"].decode()
        response = await client.send(
            UpstreamRequest(origin, scope["method"], target, headers, body)
        )
        try:
            out = [(k, v) for k, v in response.headers if k not in _HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            while (chunk := await response.chunk()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            response.close()

    _serve_asgi(app, port)


def serve_tcp_relay(port: int, upstream: str) -> None:
    """A byte splice, one upstream connection per client: the floor of any Python hop."""
    import asyncio

    import uvloop

    parts = upstream.removeprefix("http://").split(":")
    host, upstream_port = parts[0], int(parts[1])

    class Back(asyncio.Protocol):
        def __init__(self, front: asyncio.Transport) -> None:
            self.front = front

        def data_received(self, data: bytes) -> None:
            self.front.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.front.close()

    class Front(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport, self.back, self.pending = transport, None, []
            asyncio.ensure_future(self._connect())

        async def _connect(self) -> None:
            loop = asyncio.get_running_loop()
            back, _ = await loop.create_connection(
                lambda: Back(self.transport), host, upstream_port
            )
            self.back = back
            back.write(b"".join(self.pending))

        def data_received(self, data: bytes) -> None:
            if self.back is None:
                self.pending.append(data)
            else:
                self.back.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.back is not None:
                self.back.close()

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Front, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


# ---- processes and targets -------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str  # base URL, no trailing slash
    process: subprocess.Popen | None = None
    body_extra: dict = field(default_factory=dict)
    path: str = "/v1/chat/completions"
    headers: dict | None = None  # None: Authorization: Bearer CLIENT_KEY
    audit_db: Path | None = None  # geopin's: measured only once its sequencer has caught up


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], core: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``command`` pinned to ``core`` in its own session, so stop() reaches its children."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        command,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for candidate, seconds in times.items():
        walker, hops = candidate, 0
        while walker > 1 and walker != pid and hops < 64:
            walker, hops = parents.get(walker, 0), hops + 1
        if walker == pid:
            total += seconds
    return total


def wait_ready(target: Target, request: bytes, timeout: float) -> None:
    """Bounded: until one real request through the target succeeds."""
    deadline = time.monotonic() + timeout
    url = target.url + target.path
    while True:
        if target.process is not None and target.process.poll() is not None:
            raise SystemExit(f"{target.name}: exited with {target.process.returncode} at start")
        result = loadgen.run_sync(url, request, concurrency=1, requests=1, duration=5, timeout=10)
        if result.ok:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{target.name}: not answering at {url} after {timeout:.0f}s")
        time.sleep(0.25)


def request_bytes(target: Target, stream: bool) -> bytes:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        **target.body_extra,
    }
    if stream:
        body["stream"] = True
    headers = (
        target.headers if target.headers is not None else {"Authorization": f"Bearer {CLIENT_KEY}"}
    )
    return loadgen.build_request(
        target.url + target.path, json.dumps(body).encode(), "POST", headers
    )


# ---- measuring -------------------------------------------------------------------------


def wait_sequenced(targets: list[Target], timeout: float = 120.0) -> float:
    """Wait until every geopin's sequencer has taken every pending record (the backlog of the
    cells before), so a cell measures requests, not a router (this one or another on the same
    core) catching up after the last one; returns how long that took."""
    from geopin.audit.store import AuditStore

    started = time.monotonic()
    for target in targets:
        if target.audit_db is None:
            continue
        # This checkout's count reads a database of any geopin's (the inbox, where there is
        # one, and the database's own pending table).
        store = AuditStore.from_url(f"sqlite:///{target.audit_db}")
        try:
            while store.pending_count() and time.monotonic() - started < timeout:
                time.sleep(0.2)
        finally:
            store.engine.dispose()
    return time.monotonic() - started


def measure(target: Target, stream: bool, concurrency: int, args, mock_pid: int) -> dict:
    url = target.url + target.path
    request = request_bytes(target, stream)
    pid = target.process.pid if target.process else None
    before = (cpu_seconds(pid) if pid else None, cpu_seconds(mock_pid))
    result = loadgen.run_sync(
        url,
        request,
        concurrency=concurrency,
        requests=args.requests,
        duration=args.duration,
        expect_tail=DONE if stream else None,
    )
    after = (cpu_seconds(pid) if pid else None, cpu_seconds(mock_pid))
    summary = result.summary()
    done = result.ok + result.error_count
    if pid and done:
        summary["cpu_ms_per_request"] = round((after[0] - before[0]) / done * 1000, 4)
    if done:
        summary["mock_cpu_ms_per_request"] = round((after[1] - before[1]) / done * 1000, 4)
    return summary


def _median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def aggregate(raw: dict) -> dict:
    """Median over repetitions of each figure, per (target, mode, concurrency), and the
    range of the repetitions' p99s (at c=1 on a shared machine it is wide)."""
    keys = (
        "p50_ms",
        "p99_ms",
        "ttfb_p50_ms",
        "ttfb_p99_ms",
        "rps",
        "cpu_ms_per_request",
        "errors",
    )
    out = {}
    for cell, runs in raw.items():
        p99s = [r["p99_ms"] for r in runs if r.get("p99_ms") is not None]
        out[cell] = {key: _median(runs, key) for key in keys} | {
            "errors": sum(r["errors"] for r in runs),
            "p99_min_ms": min(p99s, default=None),
            "p99_max_ms": max(p99s, default=None),
        }
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _diff(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.3f}"


def table(figures: dict, targets: list[Target], concurrencies: list[int]) -> str:
    head = (
        "| target | c | p50 ms | p99 ms | p99 of reps | added p50 | added p99 | TTFB p50 "
        "| stream TTFB p50 | added stream TTFB | added stream TTFB p99 | req/s "
        "| req/s vs direct | stream req/s | CPU ms/req | errors |"
    )
    lines = [head, "|" + "---|" * 16]
    for concurrency in concurrencies:
        base = figures[f"direct|json|{concurrency}"]
        base_stream = figures[f"direct|stream|{concurrency}"]
        for target in targets:
            row = figures[f"{target.name}|json|{concurrency}"]
            srow = figures[f"{target.name}|stream|{concurrency}"]
            ratio = row["rps"] / base["rps"] if row["rps"] and base["rps"] else None
            cells = [
                target.name,
                str(concurrency),
                _fmt(row["p50_ms"]),
                _fmt(row["p99_ms"]),
                _fmt(row["p99_min_ms"], 2) + "-" + _fmt(row["p99_max_ms"], 2),
                _diff(row["p50_ms"], base["p50_ms"]),
                _diff(row["p99_ms"], base["p99_ms"]),
                _fmt(row["ttfb_p50_ms"]),
                _fmt(srow["ttfb_p50_ms"]),
                _diff(srow["ttfb_p50_ms"], base_stream["ttfb_p50_ms"]),
                _diff(srow["ttfb_p99_ms"], base_stream["ttfb_p99_ms"]),
                _fmt(row["rps"], 0),
                _fmt(ratio, 2),
                _fmt(srow["rps"], 0),
                _fmt(row["cpu_ms_per_request"]),
                str(row["errors"] + srow["errors"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(raw: dict, targets: list[Target], concurrencies: list[int]) -> str | None:
    """geopin against each other geopin (a baseline checkout, a variant) repetition by
    repetition: both ran in the same repetition, a moment apart, so the difference of each
    pair leaves out most of what the machine's hour adds to both. None without such a pair."""
    others = [t.name for t in targets if t.audit_db is not None and t.name != "geopin"]
    if not others or not any(t.name == "geopin" for t in targets):
        return None
    lines = [
        "| geopin against | c | answer | geopin minus it, median of the repetitions' "
        "differences | geopin faster in |",
        "|---|---|---|---|---|",
    ]
    for concurrency in concurrencies:
        for other in others:
            for mode, key, label in (
                ("json", "p50_ms", "JSON p50"),
                ("stream", "ttfb_p50_ms", "stream first event p50"),
            ):
                ours = raw.get(f"geopin|{mode}|{concurrency}", [])
                theirs = raw.get(f"{other}|{mode}|{concurrency}", [])
                pairs = [
                    (a[key], b[key])
                    for a, b in zip(ours, theirs, strict=False)
                    if a.get(key) is not None and b.get(key) is not None
                ]
                if not pairs:
                    continue
                differences = [(a - b) * 1000 for a, b in pairs]
                faster = sum(d < 0 for d in differences)
                lines.append(
                    f"| {other} | {concurrency} | {label} | "
                    f"{statistics.median(differences):+.0f} µs | {faster} of {len(pairs)} |"
                )
    return "\n".join(lines)


# ---- the run ---------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--plain-hop", action="store_true", help="also measure a uvicorn + httpx pass-through"
    )
    parser.add_argument(
        "--tcp-relay", action="store_true", help="also measure a raw asyncio byte relay"
    )
    parser.add_argument(
        "--asgi-floor",
        action="store_true",
        help="also measure geopin's stack doing none of geopin's work (uvicorn, a raw ASGI "
        "callable, geopin's upstream client)",
    )
    parser.add_argument("--litellm", action="store_true", help="also measure LiteLLM proxy")
    parser.add_argument("--litellm-venv", type=Path, default=OUT / "litellm-venv")
    parser.add_argument(
        "--litellm-region",
        action="store_true",
        help="LiteLLM with region pre-call checks and allowed_model_region",
    )
    parser.add_argument("--target-name", default="target")
    parser.add_argument("--target-cmd", help="command to start; {port} {config} {upstream}")
    parser.add_argument("--target-url", help="base URL of the target; {port} is substituted")
    parser.add_argument(
        "--target-config-template",
        type=Path,
        help="file formatted with {upstream} {port}, written and passed as {config}",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="header sent to the --target-cmd/--target-url target instead of the bench key",
    )
    parser.add_argument(
        "--geopin",
        action="store_true",
        help="also measure geopin serve (audit to SQLite) and AuditWriter.record() alone",
    )
    parser.add_argument(
        "--geopin-baseline",
        type=Path,
        action="append",
        default=[],
        metavar="SRC",
        help="also measure the geopin in SRC (another checkout's src/, e.g. a git worktree of "
        "an older commit), set up like --geopin, side by side in the same run",
    )
    parser.add_argument(
        "--geopin-variant",
        type=_variant,
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also measure this geopin with settings changed, e.g. "
        "'no-sequencer:audit.sequencer=false' (values are YAML), side by side in the same run",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run (cap)")
    parser.add_argument("--requests", type=int, default=100_000, help="requests per run (cap)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=1.0,
        help="mock delay between stream events, so TTFB differs from the end",
    )
    parser.add_argument("--start-timeout", type=float, default=90.0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--serve-plain-hop", metavar="UPSTREAM", help=argparse.SUPPRESS)
    parser.add_argument("--serve-tcp-relay", metavar="UPSTREAM", help=argparse.SUPPRESS)
    parser.add_argument("--serve-asgi-floor", metavar="UPSTREAM", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _targets(args, upstream: str, cores: tuple[int, int], run_dir: Path) -> list[Target]:
    targets = [Target("direct", upstream)]
    core = cores[1]
    if args.plain_hop:
        port = free_port()
        command = [sys.executable, __file__, "--serve-plain-hop", upstream, "--port", str(port)]
        process = start(command, core, run_dir / "plain-hop.log")
        targets.append(Target("plain-hop", f"http://127.0.0.1:{port}", process))
    if args.tcp_relay:
        port = free_port()
        command = [sys.executable, __file__, "--serve-tcp-relay", upstream, "--port", str(port)]
        process = start(command, core, run_dir / "tcp-relay.log")
        targets.append(Target("tcp-relay", f"http://127.0.0.1:{port}", process))
    if args.asgi_floor:
        port = free_port()
        command = [sys.executable, __file__, "--serve-asgi-floor", upstream, "--port", str(port)]
        process = start(command, core, run_dir / "asgi-floor.log")
        targets.append(Target("asgi-floor", f"http://127.0.0.1:{port}", process))
    if args.litellm or args.litellm_region:
        litellm = _import("bench_litellm_target", BENCH / "litellm" / "target.py")
        variants = [
            (name, region)
            for name, region in (("litellm", False), ("litellm-region", True))
            if (args.litellm, args.litellm_region)[region]
        ]
        for name, region in variants:
            port = free_port()
            command, env, extra = litellm.prepare(
                args.litellm_venv, upstream, port, run_dir / name, CLIENT_KEY, region
            )
            process = start(command, core, run_dir / f"{name}.log", env)
            targets.append(Target(name, f"http://127.0.0.1:{port}", process, extra))
    if args.target_cmd or args.target_url:
        port = free_port()
        values = {"port": port, "upstream": upstream}
        if args.target_config_template:
            config = run_dir / f"{args.target_name}-config{args.target_config_template.suffix}"
            config.write_text(args.target_config_template.read_text().format(**values))
            values["config"] = str(config)
        url = (args.target_url or "http://127.0.0.1:{port}").format(**values).rstrip("/")
        process = None
        if args.target_cmd:
            command = shlex.split(args.target_cmd.format(**values))
            process = start(command, core, run_dir / f"{args.target_name}.log")
        headers = dict(_header(h) for h in args.header) if args.header else None
        targets.append(Target(args.target_name, url, process, headers=headers))
    if args.geopin:
        targets.append(_geopin_target(upstream, core, run_dir / "geopin"))
    for name, changes in args.geopin_variant:
        targets.append(_geopin_target(upstream, core, run_dir / name, name=name, changes=changes))
    for source in args.geopin_baseline:
        name = f"geopin@{source.parent.name}"  # the checkout the src directory belongs to
        targets.append(_geopin_target(upstream, core, run_dir / name, name=name, source=source))
    return targets


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--header {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:KEY=VALUE,...`` of --geopin-variant: a target name and settings by dotted key."""
    import yaml

    name, sep, rest = text.partition(":")
    changes: dict[str, Any] = {}
    for item in rest.split(",") if rest else []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE")
        changes[key.strip()] = yaml.safe_load(value)
    if not sep or not name.strip() or not changes:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
    return name.strip(), changes


def _geopin_target(
    upstream: str,
    core: int,
    directory: Path,
    *,
    name: str = "geopin",
    source: Path | None = None,
    changes: dict[str, Any] | None = None,
) -> Target:
    """geopin serve with a one-endpoint policy on the mock, a router key, nothing trusted (the
    loopback client's location is unknown, which the policy routes to the endpoint's country)
    and the audit log, sequencer and checkpoints as in production, in a SQLite file; then
    ``changes`` (dotted setting keys) applied to its settings."""
    from geopin.audit.checkpoint import SigningKey
    from geopin.keys import KeyStore

    directory.mkdir(parents=True, exist_ok=True)
    policy = {
        "endpoints": [
            {
                "id": "bench-fr",
                "url": upstream + "/v1",
                "kind": "openai-compatible",
                "country": "FR",
                "tier": "regional",
                "priority": 10,
                "models": {"gpt-4o-mini": "gpt-4o-mini"},
            }
        ],
        "rules": [],
        "defaults": {
            "unknown_location": {"process_in": ["FR"], "reason": "bench client on loopback"},
            "no_match": {"process_in": ["FR"], "reason": "bench: everything to FR"},
        },
    }
    (directory / "policy").mkdir(exist_ok=True)
    (directory / "policy" / "policy.yaml").write_text(json.dumps(policy, indent=1))
    with KeyStore.editing(directory / "keys.json") as store:
        router_key = store.create("bench")[1]
    SigningKey.generate("bench.test/geopin").save(directory / "audit.key", overwrite=True)
    database_url = f"sqlite:///{directory / 'audit.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOPIN_")}
    if source is not None:  # another checkout's geopin, with this one's dependencies
        env["PYTHONPATH"] = str(source.resolve())
    geopin = [sys.executable, "-m", "geopin"]
    # The schema of the geopin that serves it.
    subprocess.run([*geopin, "db", "upgrade", "--db", database_url], env=env, check=True)
    port = free_port()
    settings = {
        "listen": f"127.0.0.1:{port}",
        "log_level": "warning",
        "policy_dir": str(directory / "policy"),
        "keys_file": str(directory / "keys.json"),
        "audit": {
            "database_url": database_url,
            "signing_key": str(directory / "audit.key"),
            "checkpoint_file": str(directory / "checkpoints"),
        },
    }
    for key, value in (changes or {}).items():
        *parents, leaf = key.split(".")
        section = settings
        for part in parents:
            section = section.setdefault(part, {})
        section[leaf] = value
    config = directory / "geopin.yaml"
    config.write_text(json.dumps(settings, indent=1))  # JSON is YAML
    command = [*geopin, "serve", "--config", str(config)]
    process = subprocess.Popen(
        command,
        stdout=(directory / "serve.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )
    headers = {"Authorization": f"Bearer {router_key}"}
    target = Target(name, f"http://127.0.0.1:{port}", process, headers=headers)
    if settings["audit"].get("sequencer", True):  # else nobody sequences: nothing to wait for
        target.audit_db = directory / "audit.db"
    return target


def audit_share(core: int, run_dir: Path) -> str:
    """``AuditWriter.record()`` at concurrency 1 on the router's core, sequencer running."""
    command = [
        sys.executable,
        str(BENCH / "audit_bench.py"),
        "latency",
        "--cpu",
        str(core),
        "--dir",
        str(run_dir),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        return f"audit_bench.py latency failed: {done.stderr.strip()[-500:]}"
    return done.stdout.strip()


def idle_share(core: int) -> str:
    """How much slower the targets' core ran the same Python work after idle gaps, right after
    the run (``bench/idle_probe.py``): the machine's hour, which streams at c=1 feel most."""
    probe = subprocess.run(
        [sys.executable, str(BENCH / "idle_probe.py"), "--cpu", str(core), "--samples", "200",
         "--rounds", "2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return f"The targets' core after the run (`bench/idle_probe.py`):\n\n{probe.stdout.strip()}"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.serve_plain_hop:
        serve_plain_hop(args.port, args.serve_plain_hop)
        return 0
    if args.serve_tcp_relay:
        serve_tcp_relay(args.port, args.serve_tcp_relay)
        return 0
    if args.serve_asgi_floor:
        serve_asgi_floor(args.port, args.serve_asgi_floor)
        return 0
    allowed = sorted(os.sched_getaffinity(0))
    cores = (allowed[0], allowed[1] if len(allowed) > 1 else allowed[0])
    os.sched_setaffinity(0, {cores[0]})  # the load generator shares core 0 with the mock
    run_dir = args.out / time.strftime("proxy-bench-%Y%m%d-%H%M%S")
    mock_port = free_port()
    mock_cmd = [
        sys.executable,
        "-m",
        "geopin.mock_upstream",
        "--port",
        str(mock_port),
        "--region",
        "bench",
        "--chunk-delay-ms",
        str(args.chunk_delay_ms),
    ]
    mock = start(mock_cmd, cores[0], run_dir / "mock.log")
    targets: list[Target] = []
    try:
        upstream = f"http://127.0.0.1:{mock_port}"
        targets = _targets(args, upstream, cores, run_dir)
        for target in targets:
            wait_ready(target, request_bytes(target, False), args.start_timeout)
            for stream in (False, True):  # warm up: connections, caches, lazy imports
                loadgen.run_sync(
                    target.url + target.path,
                    request_bytes(target, stream),
                    concurrency=8,
                    requests=args.requests,
                    duration=args.warmup,
                )
        raw: dict[str, list[dict]] = {}
        # Interleave targets within each repetition so drift on a shared machine hits all alike,
        # in an order turned one step each repetition: none always goes first, or after another.
        for rep in range(args.reps):
            turn = rep % len(targets)
            order = targets[turn:] + targets[:turn]
            for concurrency in args.concurrency:
                for target in order:
                    for mode in ("json", "stream"):
                        catching_up = wait_sequenced(targets)
                        summary = measure(target, mode == "stream", concurrency, args, mock.pid)
                        summary["sequencer_catch_up_s"] = round(catching_up, 2)
                        raw.setdefault(f"{target.name}|{mode}|{concurrency}", []).append(summary)
                        print(
                            f"rep {rep + 1} c={concurrency} {target.name} {mode}: "
                            f"{summary['rps']} req/s p50 {summary['p50_ms']} ms "
                            f"errors {summary['errors']}",
                            file=sys.stderr,
                        )
        figures = aggregate(raw)
        report = table(figures, targets, args.concurrency)
        pairs = paired(raw, targets, args.concurrency)
        if pairs is not None:
            report += "\n\nRepetition by repetition (the same cell, a moment apart):\n\n" + pairs
        note = (
            f"\nMedians of {args.reps} repetitions of {args.duration:g} s (or {args.requests} "
            f"requests) per cell; mock and load generator on core {cores[0]}, targets on core "
            f"{cores[1]}; stream answers have 8 pieces {args.chunk_delay_ms:g} ms apart. "
            "CPU ms/req: the target process tree's utime+stime per request."
        )
        for target in targets:  # what follows runs on the targets' core, undisturbed
            stop(target.process)
        if args.geopin:
            note += "\n\n" + audit_share(cores[1], run_dir)
        note += "\n\n" + idle_share(cores[1])
        print(report + note)
        (run_dir / "table.md").write_text(report + note + "\n")
        (run_dir / "raw.json").write_text(json.dumps({"raw": raw, "figures": figures}, indent=1))
        print(f"\nwritten to {run_dir}", file=sys.stderr)
    finally:
        for target in targets:
            stop(target.process)
        stop(mock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
