"""The composition root: the router's ASGI application, built from settings.

``build_app(settings)`` loads and checks everything that can be wrong before a socket is
opened (policy, GeoIP database, keys, admin token, the audit schema), raising geopin's own
errors; the application's lifespan then starts the audit writer and sequencer, the probes and
the reload watch, and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import time
from typing import Any

from sqlalchemy.engine import Engine

from geopin.audit.checkpoint import SigningKey
from geopin.audit.db import create_audit_engine
from geopin.audit.migrate import check_schema
from geopin.audit.records import DecisionEncoder
from geopin.audit.sequencer import Sequencer
from geopin.audit.writer import AuditWriter
from geopin.errors import AuditUnavailable
from geopin.policy.decision import Endpoint
from geopin.proxy.admin import PREFIX, build_admin
from geopin.proxy.asgi import ProxyApp
from geopin.proxy.forward import UpstreamClient
from geopin.proxy.object_table import ObjectTable
from geopin.proxy.objects import ObjectHomes
from geopin.proxy.refusal import not_found, send_error
from geopin.proxy.reload import Reloader
from geopin.proxy.state import AuditSink, Runtime, RuntimeState, StateHolder, load_state
from geopin.routing.health import HealthBoard
from geopin.routing.probe import Prober
from geopin.settings import Settings, load_settings
from geopin.telemetry.providers import Telemetry

log = logging.getLogger("geopin")

CONFIG_ENVVAR = "GEOPIN_CONFIG"  # the settings file of `geopin serve --workers N` workers


class GeopinApp:
    """ASGI: ``/_geopin/*`` to the admin API, everything else to the proxy path."""

    def __init__(
        self, runtime: Runtime, *, probes: bool = True, sequencer: Sequencer | None = None
    ) -> None:
        self.runtime = runtime
        self.sequencer = sequencer
        self._sequencer_stop = asyncio.Event()
        self._sequencer_task: asyncio.Task[None] | None = None
        self.proxy = ProxyApp(runtime)
        self.reloader = Reloader(runtime, on_swap=self._swapped)
        settings = runtime.settings
        self.prober: Prober | None = None
        if probes and settings.probes.enabled:
            self.prober = Prober(
                runtime.health,
                _probe_targets(runtime.holder.current),
                interval_s=settings.probes.interval_s,
                timeout_s=settings.probes.timeout_s,
                auth_headers=self._probe_auth,
            )
        self.ready = False
        # Readiness goes false as soon as a drain starts, so balancers stop sending new work,
        # and for upstream.retry_after_s after a decision record failed to commit.
        window = settings.upstream.retry_after_s
        self.admin = build_admin(
            runtime,
            self.reloader,
            lambda: (
                self.ready
                and not runtime.draining
                and runtime.audit_writing(time.monotonic(), window)
            ),
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith(PREFIX):
                await self.admin(scope, receive, send)
            else:
                await self.proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await send_error(send, not_found("geopin serves HTTP only"))

    async def startup(self) -> None:
        audit = self.runtime.audit
        if isinstance(audit, AuditWriter):
            await audit.start()
        table = self.runtime.objects.table
        if table is not None:
            table.start()
        if self.sequencer is not None:
            self._sequencer_stop.clear()
            self._sequencer_task = asyncio.create_task(
                self.sequencer.run(self._sequencer_stop), name="geopin-audit-sequencer"
            )
        if self.prober is not None:
            await self.prober.start()
        await self.reloader.start()
        # What is loaded by now (libraries, settings, the policy) lives as long as the process:
        # out of the cyclic collector's sight, a full collection walks what requests leave,
        # not the 120,000 objects of the imports (a 90-120 ms pause otherwise).
        gc.collect()
        gc.freeze()
        self.ready = True
        state = self.runtime.holder.current
        log.info(
            "geopin ready: policy %s, %d endpoints, GeoIP %s",
            state.policy.version,
            len(state.routes),
            state.resolver.describe(),
        )
        for problem in state.problems:
            log.warning("%s", problem)

    async def shutdown(self) -> None:
        self.ready = False
        self.runtime.later.run()  # the last responses' outcome records and access lines
        await self.reloader.close()
        if self.prober is not None:
            await self.prober.close()
        await self.runtime.client.aclose()
        table = self.runtime.objects.table
        if table is not None:
            await asyncio.to_thread(table.close)
        audit = self.runtime.audit
        if isinstance(audit, AuditWriter):
            await audit.close()
        await self._stop_sequencer()
        self.runtime.holder.current.resolver.close()
        # Last: the final exports carry everything above (bounded by shutdown_timeout_s).
        await asyncio.to_thread(self.runtime.telemetry.shutdown)
        gc.unfreeze()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _stop_sequencer(self) -> None:
        """After the writer has flushed: the sequencer's last pass takes every acknowledged
        record and signs a final checkpoint over them."""
        task, self._sequencer_task = self._sequencer_task, None
        if task is None:
            return
        self._sequencer_stop.set()
        try:
            await task
        except Exception:  # already logged by the sequencer; shutdown goes on
            log.error("audit sequencer ended with an error", exc_info=True)

    def _swapped(self, state: RuntimeState) -> None:
        self.runtime.health.forget(state.routes)
        if self.prober is not None:
            self.prober.set_endpoints(_probe_targets(state))

    def _probe_auth(self, endpoint: Endpoint) -> dict[str, str]:
        route = self.runtime.holder.current.routes.get(endpoint.id)
        if route is None:
            return {}
        return {name.decode(): value.decode("latin-1") for name, value in route.auth}


def build_app(
    settings: Settings,
    *,
    audit: AuditSink | None = None,
    probes: bool = True,
    telemetry: Telemetry | None = None,
) -> GeopinApp:
    """The router for ``settings``. Raises PolicyError, GeoIPError, ConfigError or
    SchemaOutOfDate when something it needs is invalid; ``audit`` replaces the audit writer."""
    admin_token = settings.admin_token_value()
    state = load_state(settings)
    sequencer = None
    objects = ObjectHomes()
    if audit is None:
        audit = _audit_writer(settings)
        sequencer = _sequencer(settings, audit)
        objects = ObjectHomes(table=_object_table(settings, audit.engine))
    key = settings.audit.client_key
    client_key = key.get_secret_value().encode() if key is not None else os.urandom(32)
    upstream = settings.upstream
    runtime = Runtime(
        settings=settings,
        holder=StateHolder(state),
        health=HealthBoard(),
        client=UpstreamClient(
            connect_timeout=upstream.connect_timeout_s,
            read_timeout=upstream.read_timeout_s,
            max_idle_per_origin=upstream.max_idle_connections,
        ),
        audit=audit,
        decisions=DecisionEncoder(client_key),
        admin_token=admin_token,
        telemetry=telemetry or Telemetry.from_settings(settings.telemetry),
        objects=objects,
    )
    _watch(runtime, sequencer)
    if state.keys is None and not settings.auth.allow_anonymous:
        log.warning(
            "no keys_file is set and auth.allow_anonymous is false: every model API request "
            "will be refused with 401 (geopin keys create --tenant NAME writes a keys file)"
        )
    if admin_token is None:
        log.info("no admin token is set: the admin API under /_geopin/ is off")
    if settings.endpoint_overrides:
        overridden = sorted(settings.endpoint_overrides)
        log.warning(
            "endpoint_overrides send %d endpoint(s) elsewhere than their policy url, while the "
            "trail still records each one's policy country: %s",
            len(overridden),
            ", ".join(
                f"{e} ({state.policy.endpoints[e].country}) -> {settings.endpoint_overrides[e]}"
                for e in overridden
            ),
        )
    return GeopinApp(runtime, probes=probes, sequencer=sequencer)


def _watch(runtime: Runtime, sequencer: Sequencer | None) -> None:
    """Gauges read on collection: breakers from the last snapshot a request was routed
    with (the exporter's thread never calls the board), the audit queue and lag, the objects
    known and what the shared object table did."""
    metrics = runtime.telemetry.metrics
    if not metrics.enabled:
        return
    metrics.watch_breakers(lambda: runtime.last_health or {})
    audit = runtime.audit
    if isinstance(audit, AuditWriter):
        audit.on_commit = lambda seconds: metrics.audit_commit(duration_s=seconds)
        metrics.watch_audit(queue_depth=lambda: audit.queue_depth)
    if sequencer is not None:
        sequencer.on_checkpoint = lambda ok: metrics.checkpoint(ok=ok)
        metrics.watch_audit(sequencing_lag=sequencer.sequencing_lag_s)
    objects = runtime.objects
    table = objects.table
    metrics.watch_objects(objects.__len__, None if table is None else table.stats)


def app_from_environment() -> GeopinApp:
    """The factory each `geopin serve --workers N` worker calls."""
    return build_app(load_settings(os.environ.get(CONFIG_ENVVAR) or None))


def _audit_writer(settings: Settings) -> AuditWriter:
    engine = create_audit_engine(
        settings.audit.database_url.get_secret_value(),
        sqlite_synchronous=settings.audit.sqlite_synchronous,
    )
    try:
        check_schema(engine)
    except AuditUnavailable:
        if settings.audit.spool is None:
            raise
    return AuditWriter(engine, spool=settings.audit.spool)


def _object_table(settings: Settings, engine: Engine) -> ObjectTable | None:
    objects = settings.objects
    if not objects.shared:
        return None
    return ObjectTable(
        engine,
        retention_s=objects.retention_days * 86_400,
        timeout_s=objects.lookup_timeout_s,
    )


def _sequencer(settings: Settings, writer: AuditWriter) -> Sequencer | None:
    audit = settings.audit
    if not audit.sequencer:
        return None
    key = SigningKey.load(audit.signing_key) if audit.signing_key is not None else None
    if key is None:
        log.warning(
            "audit.signing_key is not set: records are sequenced but no checkpoint is signed"
        )
    return Sequencer(
        writer.engine,
        signing_key=key,
        checkpoint_file=audit.checkpoint_file,
        checkpoint_every=audit.checkpoint_every,
        checkpoint_interval_s=audit.checkpoint_interval_s,
    )


def _probe_targets(state: RuntimeState) -> list[Endpoint]:
    """The usable endpoints, at the URL requests go to (an override replaces the policy's)."""
    targets = []
    for route in state.routes.values():
        if not route.usable:
            continue
        origin = route.origin
        host = f"[{origin.host}]" if ":" in origin.host else origin.host
        url = f"{origin.scheme}://{host}:{origin.port}{route.base_path}"
        targets.append(dataclasses.replace(route.endpoint, url=url))
    return targets
