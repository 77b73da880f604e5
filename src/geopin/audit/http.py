"""The audit log over HTTP: ``GET /records`` and ``GET /stats``, for the admin API.

``audit_router`` returns a FastAPI ``APIRouter`` that the app mounts under ``/_geopin/audit``
with its admin-token dependency. Query parameters mirror ``geopin audit query``/``stats``;
repeat a parameter (or comma-separate it) for several values. Every error has one shape:
``{"error": {"message": ..., "type": ..., "code": ...}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from geopin.audit.query import FILTER_FIELDS, Filters, QueryError, query_records, stats
from geopin.audit.store import AuditStore
from geopin.errors import AuditError, AuditUnavailable
from geopin.policy.places import PlaceSet

JurisdictionLookup = Callable[[str], PlaceSet | None]  # a name -> its places, None if unknown


def error_body(message: str, type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def _error(status: int, message: str, type_: str, code: str) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code), status_code=status)


def audit_router(
    store_or_engine: AuditStore | Engine,
    *,
    dependencies: Sequence[Depends] = (),
    jurisdictions: JurisdictionLookup | None = None,
) -> APIRouter:
    """Routes over one audit database. ``jurisdictions`` resolves ``?jurisdiction=`` names
    (give it the live policy's ``jurisdictions.get`` so a reload is picked up)."""
    store = (
        store_or_engine if isinstance(store_or_engine, AuditStore) else AuditStore(store_or_engine)
    )
    router = APIRouter(dependencies=list(dependencies))

    def guarded(handler: Callable[[Request], dict[str, Any]]) -> Callable[[Request], Any]:
        def endpoint(request: Request) -> Any:
            try:
                return handler(request)
            except QueryError as exc:
                return _error(400, str(exc), "invalid_request", "invalid_query")
            except AuditUnavailable as exc:
                return _error(503, str(exc), "unavailable", "audit_unavailable")
            except AuditError as exc:
                return _error(500, str(exc), "server_error", "audit_error")

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    def filters_from(request: Request, *, default_kind: str | None = None) -> Filters:
        params = request.query_params
        values: dict[str, tuple[str, ...]] = {}
        for name in FILTER_FIELDS:
            got = _split(params.getlist(name))
            if got:
                values[name] = got
        if default_kind and "kind" not in values:
            values["kind"] = (default_kind,)
        places = None
        for name in _split(params.getlist("jurisdiction")):
            found = jurisdictions(name) if jurisdictions else None
            if found is None:
                raise QueryError(f"unknown jurisdiction {name!r}")
            places = found if places is None else places.union(found)
        unknown = set(params) - {
            *FILTER_FIELDS,
            "jurisdiction",
            "since",
            "until",
            "limit",
            "cursor",
            "by",
        }
        if unknown:
            raise QueryError(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        return Filters.build(
            since=params.get("since"), until=params.get("until"), places=places, **values
        )

    def records(request: Request) -> dict[str, Any]:
        """Matching sequenced records in sequence order; follow ``next_cursor`` for more."""
        limit_text = request.query_params.get("limit", "100")
        if not limit_text.isdigit():
            raise QueryError(f"limit must be a whole number, not {limit_text!r}")
        page = query_records(
            store.engine,
            filters_from(request),
            limit=int(limit_text),
            cursor=request.query_params.get("cursor"),
        )
        return {"records": page.rows, "next_cursor": page.next_cursor, "pending": page.pending}

    def stats_route(request: Request) -> dict[str, Any]:
        """Counts grouped by ``by`` (decision records unless ``kind`` is given)."""
        by = _split(request.query_params.getlist("by"))
        if not by:
            raise QueryError("by is required, e.g. ?by=processing_country")
        result = stats(store.engine, filters_from(request, default_kind="decision"), by)
        return {
            "by": list(result.by),
            "groups": result.groups,
            "total": result.total,
            "pending": result.pending,
        }

    stats_route.__name__ = "stats"
    router.add_api_route("/records", guarded(records), methods=["GET"])
    router.add_api_route("/stats", guarded(stats_route), methods=["GET"])
    return router


def _split(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(part.strip() for v in values for part in v.split(",") if part.strip())
