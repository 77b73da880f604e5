from __future__ import annotations

import asyncio

import httpx
import pytest
from audit_factories import add_pending, append_and_sequence, make_endpoint, make_record
from fastapi import Depends as depends
from fastapi import FastAPI, Header, HTTPException

from geopin.audit.db import create_audit_engine
from geopin.audit.http import audit_router
from geopin.policy.places import PlaceSet

EEA = PlaceSet(countries=frozenset({"DE", "FR"}))


def _admin(authorization: str = Header(default="")) -> None:
    if authorization != "Bearer admin":
        raise HTTPException(401)


def _get(app, path, headers=None, **params):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(
                path,
                params=params,
                headers={"authorization": "Bearer admin"} if headers is None else headers,
            )

    return asyncio.run(go())


@pytest.fixture
def app(engine):
    us = make_endpoint(id="us-east", country="US")
    append_and_sequence(
        engine,
        [
            make_record(
                n, country=["DE", "FR", "US"][n % 3], endpoint=us if n % 3 == 2 else make_endpoint()
            )
            for n in range(9)
        ],
    )
    add_pending(engine, [make_record(99)])
    app = FastAPI()
    app.include_router(
        audit_router(engine, dependencies=[depends(_admin)], jurisdictions={"EEA": EEA}.get),
        prefix="/_geopin/audit",
    )
    return app


def test_records_with_filters_and_cursor(app):
    first = _get(app, "/_geopin/audit/records", country="DE,US", limit="2")
    assert first.status_code == 200
    body = first.json()
    assert [r["seq"] for r in body["records"]] == [0, 2] and body["pending"] == 1
    rest = _get(app, "/_geopin/audit/records", country="DE,US", cursor=body["next_cursor"])
    assert [r["seq"] for r in rest.json()["records"]] == [3, 5, 6, 8]
    assert rest.json()["next_cursor"] is None
    record = rest.json()["records"][0]["record"]
    assert record["decision_id"] == "dec-000003" and record["v"] == 1


def test_stats_with_jurisdiction(app):
    response = _get(app, "/_geopin/audit/stats", by="processing_country", jurisdiction="EEA")
    assert response.status_code == 200
    assert response.json()["groups"] == [{"processing_country": "DE", "count": 6}]
    assert response.json()["total"] == 6


@pytest.mark.parametrize(
    "path, params, status, code",
    [
        ("/records", {"since": "soon"}, 400, "invalid_query"),
        ("/records", {"limit": "many"}, 400, "invalid_query"),
        ("/records", {"cursor": "42"}, 400, "invalid_query"),
        ("/records", {"colour": "red"}, 400, "invalid_query"),
        ("/stats", {}, 400, "invalid_query"),
        ("/stats", {"by": "colour"}, 400, "invalid_query"),
        ("/stats", {"by": "country", "jurisdiction": "ATLANTIS"}, 400, "invalid_query"),
    ],
)
def test_errors_have_one_shape(app, path, params, status, code):
    response = _get(app, "/_geopin/audit" + path, **params)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"} and error["code"] == code


def test_an_unavailable_database_is_a_503():
    app = FastAPI()
    down = create_audit_engine("postgresql+psycopg://postgres@127.0.0.1:9/x")
    app.include_router(audit_router(down), prefix="/a")
    response = _get(app, "/a/records")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "audit_unavailable"


def test_the_dependency_guards_the_routes(app):
    assert _get(app, "/_geopin/audit/records", headers={}).status_code == 401
