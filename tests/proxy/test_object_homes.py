"""Objects found again where they were made, end to end over real sockets: a stored response
made by a model call is read, continued and deleted at its endpoint, not at its tenant's home,
and never anywhere the decision does not permit."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import (
    DEFAULT_RULES,
    Router,
    endpoint_yaml,
    requests_seen,
    start_router,
    write_policy,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def upstreams(mocks):
    return {name: mocks(name) for name in ("eu-se", "eu-fr", "us")}


@pytest.fixture
def router(tmp_path, upstreams):
    catalogue = [
        endpoint_yaml("eu-se", upstreams["eu-se"].url + "/v1", "SE"),
        # Serves "small" alone, and ranks after eu-se: no tenant's home for calls naming no
        # model, so what a "small" call makes lives away from its tenant's home.
        endpoint_yaml("eu-fr", upstreams["eu-fr"].url + "/v1", "FR", priority=15,
                      models={"small": "small-x"}),
        endpoint_yaml("us", upstreams["us"].url + "/v1", "US"),
    ]  # fmt: skip
    policy = write_policy(tmp_path / "policy", catalogue, rules=DEFAULT_RULES)
    router = start_router(tmp_path, policy, tenants=("t1", "t2"))
    yield router
    router.stop()


def _call(router: Router, method: str, path: str, headers: dict, body=None) -> httpx.Response:
    return httpx.request(method, router.url + path, headers=headers, json=body, timeout=30)


def _made_at_fr(router: Router, headers: dict) -> str:
    made = router.post("/v1/responses", headers=headers, json_body={"model": "small", "input": "x"})
    assert made.status_code == 200, made.text
    assert made.headers["x-geopin-endpoint"] == "eu-fr"
    return made.json()["id"]


def test_a_stored_response_is_read_and_deleted_where_it_was_made(router: Router, upstreams):
    de = router.headers(country="DE")
    home = _call(router, "GET", "/v1/files", de)  # a call naming no model: the tenant's home
    assert home.status_code == 200 and home.headers["x-geopin-endpoint"] == "eu-se"
    ident = _made_at_fr(router, de)
    at_home = requests_seen(upstreams["eu-se"])
    read = _call(router, "GET", f"/v1/responses/{ident}", de)
    assert read.status_code == 200, read.text
    assert read.headers["x-geopin-endpoint"] == "eu-fr" and read.json()["id"] == ident
    gone = _call(router, "DELETE", f"/v1/responses/{ident}", de)
    assert gone.status_code == 200 and gone.headers["x-geopin-endpoint"] == "eu-fr"
    again = _call(router, "GET", f"/v1/responses/{ident}", de)
    assert again.status_code == 404 and again.headers["x-geopin-endpoint"] == "eu-fr"
    assert requests_seen(upstreams["eu-se"]) == at_home  # the home never saw them
    assert requests_seen(upstreams["us"]) == 0


def test_previous_response_id_continues_where_the_response_lives(router: Router, upstreams):
    de = router.headers(country="DE")
    ident = _made_at_fr(router, de)
    more = {"model": "small", "input": "and then?", "previous_response_id": ident}
    follow = router.post("/v1/responses", headers=de, json_body=more)
    assert follow.status_code == 200 and follow.headers["x-geopin-endpoint"] == "eu-fr"
    # A model its endpoint does not serve cannot continue it anywhere: a clear 400, not a call
    # to eu-se, which would not know the response.
    seen = requests_seen(upstreams["eu-se"])
    other = router.post("/v1/responses", headers=de, json_body={**more, "model": "gpt-4o"})
    assert other.status_code == 400, other.text
    error = other.json()["error"]
    assert error["code"] == "endpoint_cannot_serve"
    assert f"where {ident} was made" in error["message"]
    assert requests_seen(upstreams["eu-se"]) == seen


def test_an_object_outside_the_permitted_places_is_refused_never_looked_for_elsewhere(
    router: Router, upstreams
):
    ident = _made_at_fr(router, router.headers(country="DE"))
    # The same tenant from the US: the policy keeps US requests in the US, where the response
    # does not live. Fail closed: 451, and no US endpoint is asked for it.
    read = _call(router, "GET", f"/v1/responses/{ident}", router.headers(country="US"))
    assert read.status_code == 451, read.text
    error = read.json()["error"]
    assert error["code"] == "endpoint_not_permitted" and ident in error["message"]
    assert requests_seen(upstreams["us"]) == 0


def test_another_tenant_does_not_inherit_the_first_ones_objects(router: Router, upstreams):
    ident = _made_at_fr(router, router.headers(country="DE"))
    t2 = router.headers(tenant="t2", country="DE")
    read = _call(router, "GET", f"/v1/responses/{ident}", t2)
    home = _call(router, "GET", "/v1/files", t2).headers["x-geopin-endpoint"]
    assert read.headers["x-geopin-endpoint"] == home == "eu-se"  # routed as before: not pinned
    assert read.status_code == 404  # eu-se holds no such response


def test_the_header_pin_still_wins(router: Router, upstreams):
    de = router.headers(country="DE")
    ident = _made_at_fr(router, de)
    read = _call(router, "GET", f"/v1/responses/{ident}", {**de, "x-geopin-endpoint": "eu-se"})
    assert read.headers["x-geopin-endpoint"] == "eu-se" and read.status_code == 404


def _kept(router: Router, count: int) -> None:
    """Wait until the router's table thread has written ``count`` object homes."""
    table = router.app.runtime.objects.table
    assert table is not None
    deadline = time.monotonic() + 10
    while table.written < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert table.written >= count


def test_another_router_of_the_same_database_finds_the_object(router, tmp_path, upstreams):
    other = start_router(
        tmp_path, tmp_path / "policy", tenants=("t1", "t2"), telemetry={"prometheus": True}
    )
    try:
        ident = _made_at_fr(router, router.headers(country="DE"))
        _kept(router, 1)
        de = other.headers(country="DE")
        read = _call(other, "GET", f"/v1/responses/{ident}", de)
        assert read.status_code == 200, read.text
        assert read.headers["x-geopin-endpoint"] == "eu-fr" and read.json()["id"] == ident
        # Found once, it is the other router's to remember, and the policy still decides.
        assert other.app.runtime.objects.find("t1", [ident]) == (ident, "eu-fr")
        refused = _call(other, "GET", f"/v1/responses/{ident}", other.headers(country="US"))
        assert refused.status_code == 451 and ident in refused.json()["error"]["message"]
        t2 = _call(other, "GET", f"/v1/responses/{ident}", other.headers(tenant="t2", country="DE"))
        assert t2.headers["x-geopin-endpoint"] == "eu-se"  # not that tenant's object
        assert requests_seen(upstreams["us"]) == 0
        # What each process's share of the table did, for operators.
        made = router.admin("GET", "/_geopin/objects").json()
        assert made["remembered"] == 1 and made["table"]["written"] == 1
        looked = other.admin("GET", "/_geopin/objects").json()["table"]
        assert looked["found"] == 1 and looked["lookups"] == 2  # t1's read, then t2's miss
        assert looked["not_found"] == 1 and looked["failed"] == 0 and looked["paused"] is False
        scrape = other.admin("GET", "/_geopin/metrics").text.splitlines()  # the same, as metrics
        assert 'geopin_objects_lookups_total{result="found"} 1' in scrape
        assert 'geopin_objects_lookups_total{result="not_found"} 1' in scrape
        assert 'geopin_objects_lookups_total{result="failed"} 0' in scrape
        assert "geopin_objects_known 1" in scrape
    finally:
        other.stop()


def test_with_the_table_off_another_router_routes_as_before(tmp_path, upstreams):
    catalogue = [
        endpoint_yaml("eu-se", upstreams["eu-se"].url + "/v1", "SE"),
        endpoint_yaml("eu-fr", upstreams["eu-fr"].url + "/v1", "FR", priority=15,
                      models={"small": "small-x"}),
    ]  # fmt: skip
    policy = write_policy(tmp_path / "policy", catalogue, rules=DEFAULT_RULES)
    routers = [start_router(tmp_path, policy, objects={"shared": False}) for _ in range(2)]
    try:
        assert routers[0].app.runtime.objects.table is None
        ident = _made_at_fr(routers[0], routers[0].headers(country="DE"))
        read = _call(routers[1], "GET", f"/v1/responses/{ident}", routers[1].headers(country="DE"))
        assert read.headers["x-geopin-endpoint"] == "eu-se" and read.status_code == 404
    finally:
        for router in routers:
            router.stop()
