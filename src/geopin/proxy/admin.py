"""The admin API under ``/_geopin/``: FastAPI, off the hot path, behind the admin token.

Every route needs ``Authorization: Bearer <admin token>`` except ``/_geopin/healthz`` and
``/_geopin/readyz``, which reveal nothing, and ``/_geopin/policy/rules/{id}``, the target of a
451's ``blocked-by`` link: a client follows it with the router key that got the 451 (or none,
where anonymous clients are served) and reads what the 451 told it, of the rules its tenant is
decided under; the admin token reads the whole rule. With no token configured the guarded
routes answer 404, as if they did not exist.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any, NamedTuple

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from geopin import __version__
from geopin.geo.location import UNKNOWN, Location, LocationSource
from geopin.policy.decision import RequestContext
from geopin.policy.explain import explain
from geopin.proxy.refusal import error_payload
from geopin.proxy.reload import Reloader, reload_other_workers
from geopin.proxy.request import client_tenant
from geopin.proxy.state import Runtime

PREFIX = "/_geopin"


class ExplainRequest(BaseModel):
    """A hypothetical request: where from (a country, a subdivision or an address) and what."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Omitted: a call that names no model (files)")
    country: str | None = Field(None, description="ISO 3166-1 alpha-2, e.g. DE")
    subdivision: str | None = Field(None, description="ISO 3166-2, e.g. CA-QC")
    ip: str | None = Field(None, description="A client address, located with the GeoIP data")
    tenant: str | None = None
    data_class: str | None = None


class _Reader(NamedTuple):
    """Who reads a rule: the admin, or a client of ``tenant`` (None: no tenant)."""

    admin: bool
    tenant: str | None = None


class _AdminError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str, **extra: Any) -> None:
        self.status, self.message, self.type_, self.code, self.extra = (
            status,
            message,
            type_,
            code,
            extra,
        )


def build_admin(runtime: Runtime, reloader: Reloader, ready: Callable[[], bool]) -> FastAPI:
    app = FastAPI(
        title="geopin admin API",
        version=__version__,
        openapi_url=None,  # served below, behind the token
        docs_url=None,
        redoc_url=None,
    )
    token = runtime.admin_token

    def is_admin(request: Request) -> bool:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        return (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(presented.strip().encode(), token.encode())
        )

    def require_admin(request: Request) -> None:
        if token is None:
            raise _AdminError(
                404, "the admin API is disabled (no admin token)", "not_found", "not_found"
            )
        if not is_admin(request):
            raise _AdminError(
                401,
                "a valid admin token is required",
                "authentication_error",
                "invalid_admin_token",
            )

    open_routes = APIRouter(prefix=PREFIX, tags=["health"])
    admin = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=[Depends(require_admin)])
    rules = APIRouter(prefix=PREFIX, tags=["policy"])

    @open_routes.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @open_routes.get("/readyz")
    def readyz() -> JSONResponse:
        """The router can take requests: policy loaded, not draining, no recent failure to
        record a decision."""
        ok = ready()
        return JSONResponse({"status": "ready" if ok else "not ready"}, 200 if ok else 503)

    @admin.get("/policy")
    def policy() -> dict[str, Any]:
        """The policy serving now, its warnings, and the last reload's failure if it failed."""
        state = runtime.holder.current
        failure = runtime.holder.failure
        return {
            "version": state.policy.version,
            "root": state.policy.root,
            "files": list(state.policy.files),
            "loaded_at": state.loaded_at,
            "warnings": [p.to_dict() for p in state.policy.warnings],
            "endpoint_problems": list(state.problems),
            "load_error": None
            if failure is None
            else {
                "at": failure.at,
                "what": failure.what,
                "message": failure.message,
                "problems": failure.problems,
            },
        }

    def rule_reader(request: Request) -> _Reader:
        """The admin, or a client of the proxy (its router key, or none where anonymous
        clients are served)."""
        if is_admin(request):
            return _Reader(admin=True)
        tenant, why = client_tenant(
            runtime.holder.current,
            request.scope["headers"],
            allow_anonymous=runtime.settings.auth.allow_anonymous,
        )
        if why is not None:
            raise _AdminError(401, why, "authentication_error", "invalid_api_key")
        return _Reader(admin=False, tenant=tenant)

    @rules.get("/policy/rules/{rule_id}")
    def rule(rule_id: str, request: Request) -> dict[str, Any]:
        """A rule, where a 451's ``blocked-by`` link points. With a router key: its id,
        effect, reason and legal basis (what the 451 said), for the rules the key's tenant is
        decided under; with the admin token: all of it."""
        reader = rule_reader(request)
        found = runtime.holder.current.policy.rule(rule_id)
        if found is None or not (reader.admin or found.owner in (None, reader.tenant)):
            raise _AdminError(
                404, f"no rule '{rule_id}' in the policy", "not_found", "rule_not_found"
            )
        shown: dict[str, Any] = {
            "id": found.id,
            "effect": found.effect,
            "reason": found.reason,
            "legal_basis": found.legal_basis,
        }
        if reader.admin:
            shown |= {
                "places": list(found.place_names),
                "tenant": found.owner,
                "description": found.description,
                "defined_at": str(found.position),
            }
        return shown

    @admin.get("/objects")
    def objects() -> dict[str, Any]:
        """Where made objects live, as this process sees it: how many it remembers, and what
        its share of the database's ``object_homes`` table has done (``null`` when
        ``objects.shared`` is off)."""
        homes = runtime.objects
        table = homes.table
        return {
            "remembered": len(homes),
            "capacity": homes.capacity,
            "table": None if table is None else table.stats(),
        }

    @admin.get("/endpoints")
    def endpoints() -> dict[str, Any]:
        """Every endpoint of the policy with its breaker and latency."""
        state = runtime.holder.current
        health = runtime.health.snapshot(time.monotonic())
        out = []
        for endpoint_id, route in state.routes.items():
            h = health.of(endpoint_id)
            endpoint = route.endpoint
            out.append(
                {
                    "id": endpoint_id,
                    "kind": str(endpoint.kind),
                    "origin": f"{route.origin.scheme}://{route.origin.host}:{route.origin.port}",
                    "country": endpoint.country,
                    "subdivision": endpoint.subdivision,
                    "tier": str(endpoint.tier),
                    "usable": route.usable,
                    "problem": route.problem,
                    "state": str(h.state),
                    "latency_ewma_s": h.latency_ewma_s,
                    "consecutive_failures": h.consecutive_failures,
                    "successes": h.successes,
                    "failures": h.failures,
                    "last_error": h.last_error,
                    "last_probe_ok": h.last_probe_ok,
                }
            )
        pool = runtime.client.stats()
        return {"endpoints": out, "pool": {"idle": pool.idle, "active": pool.active}}

    @admin.post("/reload")
    async def reload() -> JSONResponse:
        """Reload policy, GeoIP data and keys now. 422 (and the old policy keeps serving) when
        anything is invalid. With several workers the others are asked to reload too
        (``other_workers_asked``)."""
        outcome = await reloader.reload("admin API")
        if outcome.reloaded:
            return JSONResponse(outcome.to_dict() | {"other_workers_asked": reload_other_workers()})
        body = error_payload(
            outcome.error or "reload failed",
            "invalid_request_error",
            "reload_rejected",
            version=outcome.version,
            problems=list(outcome.problems),
        )
        return JSONResponse(body, 422)

    @admin.post("/explain")
    def explain_request(request: ExplainRequest) -> dict[str, Any]:
        """The decision a hypothetical request would get, with every rule's trace."""
        state = runtime.holder.current
        location = _location(request, state.resolver)
        if request.data_class and request.data_class not in state.policy.data_classes:
            raise _AdminError(
                400,
                f"'{request.data_class}' is not a data class of the policy",
                "invalid_request_error",
                "invalid_data_class",
            )
        ctx = RequestContext(location, request.model, request.tenant, request.data_class)
        return explain(state.policy, ctx).to_dict()

    telemetry = runtime.telemetry

    @admin.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={
            200: {
                "content": {telemetry.prometheus_content_type: {}},
                "description": "Every worker's metrics in the Prometheus text format.",
            },
            404: {"description": "The scrape is off (telemetry.prometheus: false)."},
        },
    )
    async def metrics() -> Response:
        """The router's metrics for a Prometheus scrape (``telemetry.prometheus: true``)."""
        if not telemetry.serves_metrics:
            raise _AdminError(
                404,
                "the metrics scrape is off (telemetry.prometheus: false)",
                "not_found",
                "not_found",
            )
        # Rendering runs the gauges' callbacks and reads sibling workers' files: off the loop.
        text = await asyncio.to_thread(telemetry.render_metrics)
        return Response(
            text,
            media_type=telemetry.prometheus_content_type,
            headers={"cache-control": "no-store"},
        )

    @admin.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    app.include_router(open_routes)
    app.include_router(rules)
    app.include_router(admin)
    _add_audit_routes(app, runtime, require_admin)
    _install_error_shape(app)
    return app


def _location(request: ExplainRequest, resolver: Any) -> Location:
    if request.ip:
        try:
            return resolver.lookup(ip_address(request.ip))
        except ValueError as exc:
            raise _AdminError(400, str(exc), "invalid_request_error", "invalid_ip") from exc
    if request.country:
        subdivision = request.subdivision.upper() if request.subdivision else None
        return Location(request.country.upper(), subdivision, LocationSource.DECLARED)
    return UNKNOWN


def _add_audit_routes(app: FastAPI, runtime: Runtime, require_admin: Callable) -> None:
    engine = getattr(runtime.audit, "engine", None)
    if engine is None:
        return
    from geopin.audit.http import audit_router

    router = audit_router(
        engine,
        dependencies=[Depends(require_admin)],
        jurisdictions=lambda name: runtime.holder.current.policy.jurisdictions.get(name),
    )
    app.include_router(router, prefix=PREFIX + "/audit", tags=["audit"])


def _install_error_shape(app: FastAPI) -> None:
    """Every admin error in the one JSON shape of the proxy's errors."""

    @app.exception_handler(_AdminError)
    async def admin_error(_request: Request, exc: _AdminError) -> JSONResponse:
        body = error_payload(exc.message, exc.type_, exc.code, **exc.extra)
        headers = {"cache-control": "no-store"}
        if exc.status == 401:
            headers["www-authenticate"] = 'Bearer realm="geopin admin"'
        return JSONResponse(body, exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return JSONResponse(
            error_payload(message, "invalid_request_error", "invalid_request", where or None), 400
        )

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return JSONResponse(
            error_payload(str(exc.detail), "invalid_request_error", code),
            exc.status_code,
            headers=exc.headers,
        )
