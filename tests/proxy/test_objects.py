"""Calls that name no model (files, stored responses, batches) end to end over real sockets:
decided under every model's rules, sent to the tenant's home endpoint only, or to the one
``X-Geopin-Endpoint`` names when the decision permits it."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import (
    DEFAULT_RULES,
    Router,
    audit_records,
    endpoint_yaml,
    last_request,
    requests_seen,
    start_router,
    write_policy,
)

pytestmark = pytest.mark.slow

RULES = [
    *DEFAULT_RULES,
    {"id": "fr-no-small", "from": ["FR"], "models": ["small"], "deny": True, "reason": "no"},
]
TENANT_RULES = {
    "t2": {"rules": [{"id": "t2-small-in-fr", "models": ["small"], "process_in": ["FR"]}]}
}


@pytest.fixture
def upstreams(mocks):
    return {name: mocks(name) for name in ("eu-se", "eu-fr", "eu-de", "us")}


@pytest.fixture
def router(tmp_path, upstreams, monkeypatch):
    monkeypatch.setenv("DE_KEY", "az-de")
    small = {"gpt-4o": "gpt-4o-x", "small": "small-x"}
    catalogue = [
        endpoint_yaml("eu-se", upstreams["eu-se"].url + "/v1", "SE"),
        endpoint_yaml("eu-fr", upstreams["eu-fr"].url + "/v1", "FR", models=small),
        endpoint_yaml(
            "eu-de", upstreams["eu-de"].url, "DE", kind="azure-openai",
            credentials={"env": "DE_KEY"}, priority=20,  # after the others, even from DE
        ),
        endpoint_yaml("us", upstreams["us"].url + "/v1", "US"),
    ]  # fmt: skip
    policy = write_policy(tmp_path / "policy", catalogue, rules=RULES, tenants=TENANT_RULES)
    router = start_router(tmp_path, policy, tenants=("t1", "t2"))
    yield router
    router.stop()


def _upload(router: Router, headers: dict[str, str], content: bytes) -> httpx.Response:
    files = {"file": ("batch.jsonl", content, "application/jsonl")}
    return httpx.post(
        router.url + "/v1/files", data={"purpose": "batch"}, files=files, headers=headers
    )


def _outcomes(tmp_path, *answers: httpx.Response) -> dict[str, dict]:
    """The outcome records by decision id, once those of ``answers`` are committed (an outcome
    joins the next commit, or waits for the writer's linger)."""
    wanted = {a.headers["x-geopin-decision-id"] for a in answers}
    deadline = time.monotonic() + 10
    while True:
        records = audit_records(tmp_path)
        found = {r["decision_id"]: r for r in records if r["kind"] == "outcome"}
        if wanted <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def _get(router: Router, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(router.url + path, headers=headers, timeout=30)


def test_a_file_stays_at_its_tenants_home_endpoint_from_upload_to_delete(
    router: Router, upstreams, tmp_path
):
    de = router.headers(country="DE")
    content = b'{"custom_id": "1"}\r\n\x00\xff binary'
    uploaded = _upload(router, de, content)
    assert uploaded.status_code == 200, uploaded.text
    home = uploaded.headers["x-geopin-endpoint"]
    assert home in ("eu-se", "eu-fr")  # EU, and OpenAI-compatible paths (the Azure one: below)
    file_id = uploaded.json()["id"]
    assert uploaded.json()["region"] == home
    seen = last_request(upstreams[home])
    assert seen["path"] == "/v1/files" and "authorization" not in seen["headers"]

    for _ in range(10):  # no flapping: health and latency play no part
        again = _get(router, f"/v1/files/{file_id}", de)
        assert again.status_code == 200 and again.headers["x-geopin-endpoint"] == home
    body = _get(router, f"/v1/files/{file_id}/content", de)
    assert body.status_code == 200 and body.content == content
    listed = _get(router, "/v1/files?purpose=batch", de)
    assert [f["id"] for f in listed.json()["data"]] == [file_id]
    assert last_request(upstreams[home])["query"] == {"purpose": "batch"}
    gone = httpx.delete(router.url + f"/v1/files/{file_id}", headers=de)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert _get(router, f"/v1/files/{file_id}", de).status_code == 404

    # The trail: decisions for a call naming no model, each with its home endpoint.
    decisions = [r for r in audit_records(tmp_path) if r["kind"] == "decision"]
    assert len(decisions) == 15
    assert {(r["model"], r["endpoint"], r["action"]) for r in decisions} == {(None, home, "route")}
    others = [m for name, m in upstreams.items() if name != home]
    assert [requests_seen(m) for m in others] == [0, 0, 0]

    # An auditor finds the file's life by its id: uploaded, read 11 times, deleted, asked for
    # once more, each where it happened (the listing names no file and is not among them).
    deadline = time.monotonic() + 20
    while True:
        page = router.admin("GET", f"/_geopin/audit/records?object={file_id}&limit=100").json()
        if len(page["records"]) >= 14 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    life = page["records"]
    assert len(life) == 14 and {r["kind"] for r in life} == {"outcome"}
    assert {(r["object"], r["endpoint"], r["processing_country"]) for r in life} == {
        (file_id, home, {"eu-se": "SE", "eu-fr": "FR"}[home])
    }
    assert [r["record"]["status"] for r in life] == [200] * 13 + [404]


def test_another_tenant_or_place_has_its_own_home_and_never_reaches_the_first(
    router: Router, upstreams
):
    uploaded = _upload(router, router.headers(country="DE"), b"x")
    home, file_id = uploaded.headers["x-geopin-endpoint"], uploaded.json()["id"]
    # t2's small model may only be processed in France: so may its calls naming no model.
    t2 = _upload(router, router.headers("t2", country="DE"), b"y")
    assert t2.status_code == 200 and t2.headers["x-geopin-endpoint"] == "eu-fr"
    chat = router.post(headers=router.headers("t2", country="DE"))  # its gpt-4o calls: any EU
    assert chat.status_code == 200
    # A US client of the same tenant: the file lives in the EU, where a US request may not be
    # processed. Refused, naming where it was made; asked of neither endpoint.
    before = requests_seen(upstreams[home]), requests_seen(upstreams["us"])
    us = _get(router, f"/v1/files/{file_id}", router.headers(country="US"))
    assert us.status_code == 451 and us.json()["error"]["code"] == "endpoint_not_permitted"
    assert f"where {file_id} was made" in us.json()["error"]["message"]
    assert (requests_seen(upstreams[home]), requests_seen(upstreams["us"])) == before
    # One it never saw made (another router's, say) goes to the US client's home, in the US.
    elsewhere = _get(router, "/v1/files/file-made-elsewhere", router.headers(country="US"))
    assert elsewhere.status_code == 404 and elsewhere.headers["x-geopin-endpoint"] == "us"


def test_any_models_deny_refuses_a_call_naming_no_model(router: Router, upstreams):
    fr = router.headers(country="FR")
    assert router.post(headers=fr).status_code == 200  # gpt-4o from France: served
    refused = _upload(router, fr, b"x")
    assert refused.status_code == 451, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["rule"]) == ("rule_deny", "fr-no-small")
    ru = _get(router, "/v1/files", router.headers(country="RU"))
    assert ru.status_code == 451 and ru.json()["error"]["rule"] == "ru-deny"
    # Only the allowed chat call reached an endpoint.
    assert sum(requests_seen(m) for m in upstreams.values()) == 1


def test_x_geopin_endpoint_narrows_to_a_permitted_endpoint_and_never_widens(
    router: Router, upstreams, tmp_path
):
    de = router.headers(country="DE")
    for name in ("eu-se", "eu-fr"):
        pinned = router.post(headers={**de, "x-geopin-endpoint": name})
        assert pinned.status_code == 200 and pinned.headers["x-geopin-endpoint"] == name
        assert "x-geopin-endpoint" not in last_request(upstreams[name])["headers"]
    # The Azure endpoint keeps calls naming no model under /openai, with its api-version.
    azure = _get(router, "/v1/files?limit=2", {**de, "x-geopin-endpoint": "eu-de"})
    assert azure.headers["x-geopin-endpoint"] == "eu-de"
    seen = last_request(upstreams["eu-de"])
    assert (seen["path"], seen["query"]) == (
        "/openai/files",
        {"api-version": "2024-10-21", "limit": "2"},
    )
    assert seen["headers"]["api-key"] == "az-de"

    outside = _get(router, "/v1/files", {**de, "x-geopin-endpoint": "us"})
    assert outside.status_code == 451, outside.text
    error = outside.json()["error"]
    assert error["code"] == "endpoint_not_permitted" and "processes in US" in error["message"]
    assert outside.headers["cache-control"] == "no-store"
    no_model = router.post(headers={**de, "x-geopin-endpoint": "eu-se"},
                           json_body={"model": "small", "messages": []})  # fmt: skip
    assert no_model.status_code == 400
    assert no_model.json()["error"]["code"] == "endpoint_cannot_serve"
    unknown = _get(router, "/v1/files", {**de, "x-geopin-endpoint": "nowhere"})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_endpoint"
    assert requests_seen(upstreams["us"]) == 0

    refused = _outcomes(tmp_path, outside)[outside.headers["x-geopin-decision-id"]]
    assert (refused["status"], refused["endpoint"], refused["attempts"]) == (451, None, [])


def test_the_home_endpoint_down_is_503_never_another_endpoint(router: Router, upstreams):
    de = router.headers(country="DE")
    uploaded = _upload(router, de, b"x")
    home = uploaded.headers["x-geopin-endpoint"]
    upstreams[home].stop()
    down = _get(router, f"/v1/files/{uploaded.json()['id']}", de)
    assert down.status_code == 503 and "retry-after" in down.headers, down.text
    others = [m for name, m in upstreams.items() if name != home]
    assert [requests_seen(m) for m in others] == [0, 0, 0]


def test_what_needs_a_model_still_does_and_other_bodies_pass_as_sent(router: Router, upstreams):
    de = router.headers(country="DE")
    missing = router.post(headers=de, json_body={"messages": []})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_model"
    batch = {"input_file_id": "file-1", "endpoint": "/v1/chat/completions"}
    created = router.post("/v1/batches", headers=de, json_body=batch)
    home = created.headers["x-geopin-endpoint"]
    seen = last_request(upstreams[home])
    assert (seen["method"], seen["path"], seen["json"]) == ("POST", "/v1/batches", batch)
    json_type = {**de, "content-type": "application/json"}
    cancel = httpx.post(router.url + "/v1/batches/b1/cancel", headers=json_type)  # no body
    assert cancel.headers["x-geopin-endpoint"] == home
    assert last_request(upstreams[home])["path"] == "/v1/batches/b1/cancel"
    broken = httpx.post(router.url + "/v1/batches", content=b"{", headers=json_type)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    # Bytes that are not JSON and do not say they are: forwarded as sent.
    part = b"\x00{not json"
    octets = {**de, "content-type": "application/octet-stream"}
    httpx.post(router.url + "/v1/uploads/u1/parts", content=part, headers=octets)
    seen = last_request(upstreams[home])
    assert (seen["path"], seen["body"]) == ("/v1/uploads/u1/parts", part.decode("latin-1"))
    # A JSON body that names a model is a model call whatever its type says (curl -d).
    form_type = {**de, "content-type": "application/x-www-form-urlencoded"}
    rerank = httpx.post(
        router.url + "/v1/rerank", content=b'{"model": "gpt-4o"}', headers=form_type
    )
    name = rerank.headers["x-geopin-endpoint"]
    assert last_request(upstreams[name])["json"]["model"] == f"gpt-4o-{name}"
    put = httpx.put(router.url + "/v1/files/f1", headers=de)
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST, DELETE"
    # An Anthropic SDK's call naming no model: no Anthropic endpoint here.
    anthropic = _get(router, "/v1/files", {**de, "anthropic-version": "2023-06-01"})
    assert anthropic.status_code == 404 and "Anthropic API" in anthropic.json()["error"]["message"]


def test_a_stored_response_is_read_back_where_it_was_made(router: Router, upstreams, tmp_path):
    de = router.headers(country="DE")
    made = router.post("/v1/responses", headers=de, json_body={"model": "gpt-4o", "input": "x"})
    assert made.status_code == 200, made.text
    where = made.headers["x-geopin-endpoint"]
    read = _get(router, f"/v1/responses/{made.json()['id']}", {**de, "x-geopin-endpoint": where})
    assert read.status_code == 200 and read.json()["id"] == made.json()["id"]
    assert read.json()["usage"]  # the stored response carries its usage...
    outcomes = _outcomes(tmp_path, made, read)
    assert outcomes[made.headers["x-geopin-decision-id"]]["usage"]
    # ...which the read did not spend: its outcome records none.
    assert outcomes[read.headers["x-geopin-decision-id"]]["usage"] is None
