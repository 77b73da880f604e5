"""The admin API: behind the token, in the one error shape, and what each route tells."""

from __future__ import annotations

import httpx
import pytest

from .conftest import ADMIN_TOKEN, endpoint_yaml, start_router, write_policy

pytestmark = pytest.mark.slow

GUARDED = [
    ("GET", "/_geopin/policy"),
    ("GET", "/_geopin/endpoints"),
    ("POST", "/_geopin/reload"),
    ("GET", "/_geopin/objects"),
    ("GET", "/_geopin/openapi.json"),
    ("GET", "/_geopin/audit/stats?by=endpoint"),
]


@pytest.fixture
def router(tmp_path, mocks):
    se = mocks("eu-se")
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", se.url + "/v1", "SE")])
    router = start_router(tmp_path, policy)
    yield router
    router.stop()


def _assert_error_shape(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert error["code"] == code and isinstance(error["message"], str)


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_every_admin_route_needs_the_token(router, method, path):
    _assert_error_shape(httpx.request(method, router.url + path), 401, "invalid_admin_token")
    wrong = httpx.request(method, router.url + path, headers={"authorization": "Bearer nope"})
    _assert_error_shape(wrong, 401, "invalid_admin_token")
    assert router.admin(method, path).status_code == 200


def test_health_and_readiness_are_open_and_say_nothing(router):
    for path in ("/_geopin/healthz", "/_geopin/readyz"):
        response = httpx.get(router.url + path)
        assert response.status_code == 200
        assert set(response.json()) == {"status"}


def test_without_a_token_the_admin_api_is_not_there(tmp_path, mocks):
    se = mocks("eu-se")
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", se.url + "/v1", "SE")])
    router = start_router(tmp_path, policy, admin_token=None)
    try:
        for method, path in GUARDED:
            response = httpx.request(
                method, router.url + path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            _assert_error_shape(response, 404, "not_found")
        assert httpx.get(router.url + "/_geopin/healthz").status_code == 200
    finally:
        router.stop()


def test_explain_a_hypothetical_request(router):
    denied = router.admin("POST", "/_geopin/explain", json={"country": "RU", "model": "gpt-4o"})
    assert denied.status_code == 200
    body = denied.json()
    assert body["action"] == "deny" and body["deny_rule"] == "ru-deny"
    assert body["location"]["country"] == "RU"
    routed = router.admin(
        "POST", "/_geopin/explain", json={"ip": "81.2.69.142", "model": "gpt-4o"}
    ).json()
    assert routed["location"]["country"] == "GB"
    assert routed["candidates"] == []  # GB falls to the default (US): nothing serves there
    unnamed = router.admin("POST", "/_geopin/explain", json={"country": "SE"}).json()
    assert unnamed["request"]["model"] is None and unnamed["action"] == "route"
    assert [c["endpoint"] for c in unnamed["candidates"]] == ["eu-se"]
    bad = router.admin("POST", "/_geopin/explain", json={"country": "SE", "model": 7})
    _assert_error_shape(bad, 400, "invalid_request")
    assert bad.json()["error"]["param"] == "model"


def test_rules_endpoints_and_openapi(router):
    rule = router.admin("GET", "/_geopin/policy/rules/ru-deny").json()
    assert rule["legal_basis"] == "Sanctions programme" and rule["effect"] == "deny"
    _assert_error_shape(router.admin("GET", "/_geopin/policy/rules/none"), 404, "rule_not_found")
    board = router.admin("GET", "/_geopin/endpoints").json()
    assert [e["id"] for e in board["endpoints"]] == ["eu-se"]
    assert board["endpoints"][0]["usable"] is True
    paths = router.admin("GET", "/_geopin/openapi.json").json()["paths"]
    assert {"/_geopin/policy", "/_geopin/explain", "/_geopin/reload"} <= set(paths)


def test_proxy_errors_share_the_shape(router):
    _assert_error_shape(httpx.get(router.url + "/nowhere"), 404, "not_found")
    _assert_error_shape(
        httpx.put(router.url + "/v1/chat/completions", headers=router.headers()),
        405,
        "method_not_allowed",
    )
    _assert_error_shape(router.post(headers={}), 401, "invalid_api_key")


def _tenant_policy(tmp_path, mocks):
    se = mocks("eu-se")
    tenants = {
        "t2": {
            "rules": [
                {"id": "t2-no-small", "models": ["small"], "deny": True,
                 "reason": "t2 may not use small", "legal_basis": "t2 contract",
                 "description": "internal note"},
            ]
        }
    }  # fmt: skip
    endpoints = [endpoint_yaml("eu-se", se.url + "/v1", "SE", models={"small": "small-x"})]
    return write_policy(tmp_path / "p", endpoints, tenants=tenants)


def test_a_451s_blocked_by_link_is_read_with_the_key_that_got_it(tmp_path, mocks):
    """No admin token needed: the client reads what its 451 said, of its own tenant's rules
    and the shared ones; the admin reads the whole rule."""
    router = start_router(tmp_path, _tenant_policy(tmp_path, mocks), tenants=("t1", "t2"))
    try:
        t2 = router.headers(tenant="t2", country="SE")
        refused = router.post(headers=t2, json_body={"model": "small", "messages": []})
        assert refused.status_code == 451
        link = refused.headers["link"].split(">", 1)[0].lstrip("<")
        assert link == "/_geopin/policy/rules/t2-no-small"
        read = httpx.get(router.url + link, headers={"authorization": t2["authorization"]})
        assert read.status_code == 200, read.text
        error = refused.json()["error"]
        assert read.json() == {
            "id": "t2-no-small",
            "effect": "deny",
            "reason": error["reason"],
            "legal_basis": error["legal_basis"],
        }
        # Another tenant's key learns nothing of t2's rules, not even that they exist.
        t1 = {"authorization": router.headers(tenant="t1")["authorization"]}
        _assert_error_shape(httpx.get(router.url + link, headers=t1), 404, "rule_not_found")
        shared = httpx.get(router.url + "/_geopin/policy/rules/ru-deny", headers=t1).json()
        assert shared["legal_basis"] == "Sanctions programme" and "places" not in shared
        # Anthropic SDKs send x-api-key; it is a router key like any other.
        key = t2["authorization"].split(" ", 1)[1]
        assert httpx.get(router.url + link, headers={"x-api-key": key}).status_code == 200
        full = router.admin("GET", link).json()
        assert full["tenant"] == "t2" and full["description"] == "internal note"
        assert full["places"] == [] and "policy.yaml" in full["defined_at"]
        for headers, code in (
            ({}, "invalid_api_key"),
            ({"authorization": "Bearer not-a-key"}, "invalid_api_key"),
        ):
            answer = httpx.get(router.url + link, headers=headers)
            _assert_error_shape(answer, 401, code)
    finally:
        router.stop()


def test_rules_are_readable_without_an_admin_token_or_with_anonymous_clients(tmp_path, mocks):
    policy = _tenant_policy(tmp_path, mocks)
    router = start_router(tmp_path, policy, admin_token=None, auth={"allow_anonymous": True})
    try:
        assert router.admin("GET", "/_geopin/policy").status_code == 404  # the admin API is off
        shared = httpx.get(router.url + "/_geopin/policy/rules/ru-deny")
        assert shared.status_code == 200 and set(shared.json()) == {
            "id", "effect", "reason", "legal_basis"
        }  # fmt: skip
        tenant_rule = httpx.get(router.url + "/_geopin/policy/rules/t2-no-small")
        _assert_error_shape(tenant_rule, 404, "rule_not_found")  # no tenant: no tenant's rules
    finally:
        router.stop()
