"""The proxy path end to end: the router and mock upstreams as real servers on real sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopin.errors import AuditUnavailable

from .conftest import (
    Router,
    audit_records,
    chat_body,
    endpoint_yaml,
    first_outcome,
    last_request,
    requests_seen,
    start_router,
    write_policy,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def upstreams(mocks):
    """Two EU endpoints (Sweden, Germany on Azure) and one in the US."""
    return {
        "eu-se": mocks("eu-se"),
        "eu-de": mocks("eu-de"),
        "us": mocks("us"),
    }


def _catalogue(upstreams) -> list[dict]:
    return [
        endpoint_yaml("eu-se", upstreams["eu-se"].url + "/v1", "SE", credentials={"env": "SE_KEY"}),
        endpoint_yaml(
            "eu-de", upstreams["eu-de"].url, "DE", kind="azure-openai",
            credentials={"env": "DE_KEY"},
        ),
        endpoint_yaml("us", upstreams["us"].url + "/v1", "US", credentials={"env": "US_KEY"}),
    ]  # fmt: skip


@pytest.fixture
def router(tmp_path, upstreams, monkeypatch):
    for name, value in (("SE_KEY", "sk-se"), ("DE_KEY", "az-de"), ("US_KEY", "sk-us")):
        monkeypatch.setenv(name, value)
    policy = write_policy(
        tmp_path / "policy",
        _catalogue(upstreams),
        data_classes=["internal", "pii"],
        tenants={"t2": {"rules": [{"id": "t2-only-se", "process_in": ["SE"], "reason": "c"}]}},
    )
    router = start_router(tmp_path, policy, tenants=("t1", "t2"))
    yield router
    router.stop()


def test_routes_by_location_and_rewrites_model_and_credentials(router: Router, upstreams):
    de = router.post(headers=router.headers(country="DE"))
    assert de.status_code == 200, de.text
    assert de.headers["x-geopin-endpoint"] == "eu-de"
    assert de.headers["x-geopin-processing-country"] == "DE"
    assert de.json()["region"] == "eu-de"
    seen = last_request(upstreams["eu-de"])
    assert seen["path"] == "/openai/deployments/gpt-4o-eu-de/chat/completions"
    assert seen["query"] == {"api-version": "2024-10-21"}
    assert seen["headers"]["api-key"] == "az-de"
    assert "authorization" not in seen["headers"]  # the router key never reaches an upstream
    assert seen["json"]["model"] == "gpt-4o-eu-de"

    us = router.post(headers=router.headers(country="US"))
    assert us.headers["x-geopin-endpoint"] == "us"
    seen = last_request(upstreams["us"])
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["authorization"] == "Bearer sk-us"
    assert seen["json"] == chat_body(model="gpt-4o-us")
    assert seen["headers"]["host"] == upstreams["us"].url.removeprefix("http://")


def test_every_api_shape_reaches_its_endpoint_over_the_wire(tmp_path, mocks, monkeypatch):
    """Anthropic Messages, embeddings, responses, any other POST /v1/*, and Azure SDK paths,
    each to the right kind of endpoint, with its own path, credential and model name."""
    monkeypatch.setenv("ANT_KEY", "ant-se")
    monkeypatch.setenv("OAI_KEY", "sk-se")
    monkeypatch.setenv("AZ_KEY", "az-se")
    ant, oai, az = mocks("ant-se"), mocks("oai-se"), mocks("az-se")
    models = {"claude-x": "claude-x-se", "gpt-4o": "gpt-4o-se", "emb": "emb-se"}
    policy = write_policy(tmp_path / "p", [
        endpoint_yaml("ant-se", ant.url + "/v1", "SE", kind="anthropic",
                      models={"claude-x": "claude-x-se"}, credentials={"env": "ANT_KEY"}),
        endpoint_yaml("oai-se", oai.url + "/v1", "SE", models=models, priority=1,
                      credentials={"env": "OAI_KEY"}),
        endpoint_yaml("az-se", az.url, "SE", kind="azure-openai", models={"gpt-4o": "dep-4o"},
                      priority=5, credentials={"env": "AZ_KEY"}),
    ])  # fmt: skip
    router = start_router(tmp_path, policy)
    se = router.headers(country="SE")
    try:
        message = {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user",
                   "content": "hi"}]}  # fmt: skip
        answer = router.post("/v1/messages", json_body=message, headers=se)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-geopin-endpoint"] == "ant-se"
        assert answer.json()["type"] == "message"
        seen = last_request(ant)
        assert (seen["path"], seen["json"]["model"]) == ("/v1/messages", "claude-x-se")
        assert seen["headers"]["x-api-key"] == "ant-se" and "authorization" not in seen["headers"]
        assert seen["headers"]["anthropic-version"] == "2023-06-01"
        # Another path of the Anthropic SDK (it sends anthropic-version): its endpoints, too.
        legacy = {"model": "claude-x", "prompt": "hi", "max_tokens_to_sample": 8}
        version = {**se, "anthropic-version": "2023-01-01"}
        answer = router.post("/v1/complete", json_body=legacy, headers=version)
        assert answer.headers["x-geopin-endpoint"] == "ant-se", answer.text
        seen = last_request(ant)
        assert (seen["path"], seen["json"]["model"]) == ("/v1/complete", "claude-x-se")
        assert seen["headers"]["anthropic-version"] == "2023-01-01"

        answer = router.post("/v1/embeddings", json_body={"model": "emb", "input": "x"}, headers=se)
        assert answer.status_code == 200 and answer.json()["data"][0]["embedding"], answer.text
        seen = last_request(oai)
        assert (seen["path"], seen["json"]["model"]) == ("/v1/embeddings", "emb-se")
        assert seen["headers"]["authorization"] == "Bearer sk-se"

        # Paths geopin does not know are passed through; the upstream's own 4xx comes back.
        for path, query in (("/v1/rerank", ""), ("/v1/batches/b1/cancel", "?limit=2")):
            answer = router.post(path + query, json_body={"model": "gpt-4o", "input": "x"},
                                 headers=se)  # fmt: skip
            assert answer.status_code == 404 and answer.headers["x-geopin-endpoint"] == "oai-se"
            seen = last_request(oai)
            assert (seen["path"], seen["query_string"]) == (path, query.lstrip("?"))
            assert seen["json"]["model"] == "gpt-4o-se"

        # An Azure SDK's deployment URL: the deployment names the model; an OpenAI-compatible
        # endpoint gets its /v1 path, an Azure one its own deployment and api-version.
        azure = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01"
        answer = router.post(azure, json_body={"messages": []}, headers=se)
        assert answer.status_code == 200 and answer.headers["x-geopin-endpoint"] == "oai-se"
        assert last_request(oai)["path"] == "/v1/chat/completions"
        httpx.post(oai.url + "/_mock/fail")  # oai-se fails: the Azure endpoint is next
        answer = router.post(azure, json_body={"messages": []}, headers=se)
        assert answer.status_code == 200 and answer.headers["x-geopin-endpoint"] == "az-se"
        seen = last_request(az)
        assert seen["path"] == "/openai/deployments/dep-4o/chat/completions"
        assert seen["query"] == {"api-version": "2024-10-21"}
        assert seen["headers"]["api-key"] == "az-se"
    finally:
        router.stop()


def test_a_multipart_upload_is_decided_by_its_model_field_and_forwarded_intact(tmp_path, mocks):
    se, us = mocks("eu-se"), mocks("us")
    models = {"whisper-1": "whisper-eu"}
    policy = write_policy(tmp_path / "p", [
        endpoint_yaml("eu-se", se.url + "/v1", "SE", models=models),
        endpoint_yaml("us", us.url + "/v1", "US", models={"whisper-1": "whisper-us"}),
    ])  # fmt: skip
    router = start_router(tmp_path, policy)
    url = router.url + "/v1/audio/transcriptions"
    audio = b"RIFF" + b"a private recording " * 500
    try:
        answer = httpx.post(url, data={"model": "whisper-1", "language": "sv"},
                            files={"file": ("a.wav", audio, "audio/wav")},
                            headers=router.headers(country="SE"))  # fmt: skip
        assert answer.headers["x-geopin-endpoint"] == "eu-se"  # the mock has no such route: 404
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "no_route"
        seen = last_request(se)
        assert seen["path"] == "/v1/audio/transcriptions"
        assert seen["headers"]["content-type"].startswith("multipart/form-data; boundary=")
        assert 'name="model"\r\n\r\nwhisper-eu\r\n' in seen["body"]
        assert audio.decode() in seen["body"] and 'name="language"\r\n\r\nsv\r\n' in seen["body"]
        assert last_request(us) is None

        no_model = httpx.post(url, data={"language": "sv"}, files={"file": ("a.wav", audio)},
                              headers=router.headers(country="SE"))  # fmt: skip
        assert no_model.status_code == 400 and no_model.json()["error"]["code"] == "missing_model"
        form = {**router.headers(country="SE"), "content-type": "multipart/form-data; boundary=x"}
        broken = httpx.post(url, content=b"--x\r\nno end", headers=form)
        assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_form"
        assert "headers do not end" in broken.json()["error"]["message"]
        assert requests_seen(se) == 1 and last_request(us) is None
    finally:
        router.stop()


def test_a_decision_and_its_outcome_are_recorded(router: Router, tmp_path):
    response = router.post(headers=router.headers(country="SE"))
    decision_id = response.headers["x-geopin-decision-id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [r for r in audit_records(tmp_path) if r["decision_id"] == decision_id]
        if len(records) == 2:
            break
        time.sleep(0.05)
    decision, outcome = records
    assert decision["kind"] == "decision" and decision["country"] == "SE"
    assert decision["tenant"] == "t1" and decision["candidates"] == ["eu-se", "eu-de"]
    assert outcome["kind"] == "outcome" and outcome["endpoint"] == "eu-se"
    assert outcome["status"] == 200 and outcome["usage"]["total_tokens"] > 0


def test_streaming_passes_chunks_before_the_stream_ends(mocks, tmp_path):
    slow = mocks("eu-se", stream_chunks=6, chunk_delay_ms=150)
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", slow.url + "/v1", "SE")])
    router = start_router(tmp_path, policy)
    try:
        arrivals = []
        started = time.monotonic()
        with router.stream("SE") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-geopin-endpoint"] == "eu-se"
            for chunk in response.iter_raw():
                arrivals.append((time.monotonic() - started, chunk))
        assert b"[DONE]" in arrivals[-1][1]
        # The first event arrived while the upstream was still producing the rest.
        assert arrivals[-1][0] - arrivals[0][0] > 0.5
    finally:
        router.stop()


def test_denied_request_gets_451_that_explains_itself(router: Router, upstreams):
    before = {name: requests_seen(m) for name, m in upstreams.items()}
    response = router.post(headers=router.headers(country="RU"))
    assert response.status_code == 451
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["link"] == '</_geopin/policy/rules/ru-deny>; rel="blocked-by"'
    error = response.json()["error"]
    assert error["type"] == "unavailable_for_legal_reasons"
    assert error["code"] == "rule_deny"
    assert error["rule"] == "ru-deny"
    assert error["legal_basis"] == "Sanctions programme"
    assert error["decision_id"] == response.headers["x-geopin-decision-id"]
    assert {name: requests_seen(m) for name, m in upstreams.items()} == before
    # The link is followed with the key that got the 451: no admin token needed.
    client_key = {"authorization": router.headers()["authorization"]}
    rule = httpx.get(router.url + "/_geopin/policy/rules/ru-deny", headers=client_key).json()
    assert rule["reason"] == error["reason"] == "Service is not offered in Russia"


def test_a_call_in_an_api_no_permitted_endpoint_speaks_is_404_not_retry_later(
    router: Router, upstreams, tmp_path
):
    before = {name: requests_seen(mock) for name, mock in upstreams.items()}
    body = {"model": "gpt-4o", "max_tokens": 8, "messages": []}
    answer = router.post("/v1/messages", json_body=body, headers=router.headers(country="SE"))
    assert answer.status_code == 404 and "retry-after" not in answer.headers
    error = answer.json()["error"]
    assert error["code"] == "model_not_found"
    assert "not served through the Anthropic Messages API" in error["message"]
    assert {name: requests_seen(mock) for name, mock in upstreams.items()} == before
    (record,) = [r for r in audit_records(tmp_path) if r["decision_id"] == error["decision_id"]
                 and r["kind"] == "decision"]  # fmt: skip
    assert record["endpoint"] is None  # no endpoint was meant to process it


def test_unknown_model_is_404(router: Router):
    response = router.post(json_body=chat_body(model="nope"), headers=router.headers(country="SE"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert "x-geopin-decision-id" in response.headers


def test_503_when_every_compliant_endpoint_is_down_and_no_fallback_elsewhere(router, upstreams):
    for name in ("eu-se", "eu-de"):
        httpx.post(upstreams[name].url + "/_mock/fail")
    us_before = requests_seen(upstreams["us"])
    response = router.post(headers=router.headers(country="SE"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "no_endpoint_available"
    assert requests_seen(upstreams["us"]) == us_before
    assert last_request(upstreams["us"]) is None


def test_failover_stays_inside_the_permitted_set(router: Router, upstreams, tmp_path):
    first = router.post(headers=router.headers(country="DE"))
    assert first.headers["x-geopin-endpoint"] == "eu-de"
    httpx.post(upstreams["eu-de"].url + "/_mock/fail")
    for _ in range(8):
        response = router.post(headers=router.headers(country="DE"))
        assert response.status_code == 200
        assert response.headers["x-geopin-endpoint"] == "eu-se"
    assert last_request(upstreams["us"]) is None
    decision_id = response.headers["x-geopin-decision-id"]
    deadline = time.monotonic() + 15  # the outcome is written after the answer
    outcome = None
    while outcome is None and time.monotonic() < deadline:
        found = [
            r
            for r in audit_records(tmp_path)
            if r["decision_id"] == decision_id and r["kind"] == "outcome"
        ]
        outcome = found[0] if found else None
        time.sleep(0.05)
    assert outcome is not None and outcome["endpoint"] == "eu-se"
    board = router.admin("GET", "/_geopin/endpoints").json()["endpoints"]
    assert {e["id"]: e["state"] for e in board}["eu-de"] == "open"


def test_when_the_preferred_endpoint_dies_its_traffic_stays_inside_the_permitted_set(
    router: Router, upstreams, tmp_path
):
    de = router.headers(country="DE")
    assert router.post(headers=de).headers["x-geopin-endpoint"] == "eu-de"  # a pooled connection
    upstreams["eu-de"].stop()  # the process is gone: its connections close, connects refused
    served = []
    for stream in (False, True, False, False, True, False):
        body = chat_body(stream=stream)
        with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, headers=de,
                          timeout=30) as response:  # fmt: skip
            text = response.read().decode()
            assert response.status_code == 200, text
            served.append(response.headers["x-geopin-endpoint"])
            assert ('"region": "eu-se"' in text) or ('"region":"eu-se"' in text), text
    assert served == ["eu-se"] * 6
    assert last_request(upstreams["us"]) is None  # never outside the permitted set
    board = {e["id"]: e for e in router.admin("GET", "/_geopin/endpoints").json()["endpoints"]}
    assert board["eu-de"]["state"] == "open"
    upstreams["eu-se"].stop()  # nothing compliant is left: 503, and still nothing to the US
    for _ in range(8):  # until every permitted endpoint's breaker is open, and after
        refused = router.post(headers=de)
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert refused.json()["error"]["code"] == "no_endpoint_available"
    board = {e["id"]: e for e in router.admin("GET", "/_geopin/endpoints").json()["endpoints"]}
    assert board["eu-de"]["state"] == board["eu-se"]["state"] == "open"
    assert last_request(upstreams["us"]) is None


def test_router_keys_identify_the_tenant(router: Router, upstreams):
    assert router.post(headers={"cf-ipcountry": "SE"}).status_code == 401
    bad = router.post(headers={"cf-ipcountry": "SE", "authorization": "Bearer gpk_nope"})
    assert bad.status_code == 401
    assert bad.json()["error"]["type"] == "authentication_error"
    # t2's contract pins it to Sweden, even from Germany; a header cannot claim another tenant.
    pinned = router.post(headers=router.headers("t2", country="DE", x_geopin_tenant="t1"))
    assert pinned.headers["x-geopin-endpoint"] == "eu-se"
    assert (
        router.post(headers=router.headers("t1", country="DE")).headers["x-geopin-endpoint"]
        == "eu-de"
    )


def test_anonymous_requests_when_allowed(tmp_path, upstreams, monkeypatch):
    monkeypatch.setenv("SE_KEY", "k")
    policy = write_policy(tmp_path / "p", _catalogue(upstreams)[:1])
    router = start_router(tmp_path, policy, auth={"allow_anonymous": True})
    try:
        assert router.post(headers={"cf-ipcountry": "SE"}).status_code == 200
        wrong = router.post(headers={"cf-ipcountry": "SE", "x-api-key": "gpk_wrong"})
        assert wrong.status_code == 401
    finally:
        router.stop()


def test_data_class_only_restricts(tmp_path, upstreams, monkeypatch):
    for name in ("SE_KEY", "DE_KEY", "US_KEY"):
        monkeypatch.setenv(name, "k")
    rules = [
        {"id": "eu-in-eu", "from": ["EU"], "process_in": ["EU"], "reason": "r"},
        {"id": "pii-de", "from": ["EU"], "data_classes": ["pii"], "process_in": ["DE"],
         "reason": "pii stays in Germany"},
    ]  # fmt: skip
    policy = write_policy(
        tmp_path / "p", _catalogue(upstreams), rules=rules, data_classes=["internal", "pii"]
    )
    router = start_router(tmp_path, policy)
    try:
        plain = router.post(headers=router.headers(country="SE"))
        assert plain.headers["x-geopin-endpoint"] == "eu-se"
        pii = router.post(headers=router.headers(country="SE", x_geopin_data_class="pii"))
        assert pii.headers["x-geopin-endpoint"] == "eu-de"
        internal = router.post(headers=router.headers(country="SE", x_geopin_data_class="internal"))
        assert internal.headers["x-geopin-endpoint"] == "eu-se"
        bad = router.post(headers=router.headers(country="SE", x_geopin_data_class="public!"))
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_data_class"
        # The data class header itself is geopin's: it does not reach the upstream.
        assert "x-geopin-data-class" not in last_request(upstreams["eu-de"])["headers"]
    finally:
        router.stop()


def test_a_body_naming_its_model_twice_is_refused_and_reaches_no_upstream(
    router: Router, upstreams
):
    """The policy decides on one model; an upstream that reads the other one would run a
    model nobody decided on. Either way round, and in a form, the request stops at geopin."""
    headers = router.headers(country="SE") | {"content-type": "application/json"}
    url = router.url + "/v1/chat/completions"
    for raw in (
        b'{"model": "gpt-4o", "messages": [], "model": "gpt-4o-mini"}',
        b'{"model": "gpt-4o-mini", "messages": [], "mod\\u0065l": "gpt-4o"}',
    ):
        refused = httpx.post(url, content=raw, headers=headers)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("duplicate_key", "model")
        assert "x-geopin-decision-id" in refused.headers
    form = router.headers(country="SE")
    twice = httpx.post(
        router.url + "/v1/audio/transcriptions",
        data={"model": ["whisper-1", "gpt-4o-transcribe"]},
        files={"file": ("a.wav", b"RIFF")},
        headers=form,
    )
    assert twice.status_code == 400 and twice.json()["error"]["code"] == "invalid_form"
    assert "more than one 'model' field" in twice.json()["error"]["message"]
    assert [requests_seen(m) for m in upstreams.values()] == [0, 0, 0]
    assert router.post(headers=router.headers(country="SE")).status_code == 200


def test_models_lists_only_what_this_client_may_reach(router: Router):
    models = httpx.get(router.url + "/v1/models", headers=router.headers(country="SE")).json()
    assert [m["id"] for m in models["data"]] == ["gpt-4o"]
    ru = httpx.get(router.url + "/v1/models", headers=router.headers(country="RU")).json()
    assert ru["data"] == []


def test_bad_bodies_get_clear_4xx_and_the_router_keeps_serving(tmp_path, upstreams, monkeypatch):
    monkeypatch.setenv("SE_KEY", "k")
    policy = write_policy(tmp_path / "p", _catalogue(upstreams)[:1])
    router = start_router(tmp_path, policy, limits={"max_body_bytes": 1000})
    try:
        headers = router.headers(country="SE")
        big = router.post(json_body=chat_body(padding="x" * 5000), headers=headers)
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "request_too_large"
        bad = httpx.post(router.url + "/v1/chat/completions", content=b"{not json", headers=headers)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        nomodel = router.post(json_body={"messages": []}, headers=headers)
        assert nomodel.status_code == 400 and nomodel.json()["error"]["param"] == "model"
        numeric = router.post(json_body={"model": 4}, headers=headers)
        assert numeric.status_code == 400
        # A chunked upload beyond the limit is cut off too.
        chunked = httpx.post(
            router.url + "/v1/chat/completions",
            content=iter([b'{"model": "gpt-4o", "x": "', b"y" * 2000, b'"}']),
            headers=headers,
        )
        assert chunked.status_code == 413
        assert router.post(headers=headers).status_code == 200
    finally:
        router.stop()


def test_every_answer_carries_a_decision_id_and_only_decisions_are_in_the_trail(
    router: Router, tmp_path
):
    se = router.headers(country="SE")
    url = router.url
    answers = {
        "no key": httpx.post(url + "/v1/chat/completions", json=chat_body()),
        "bad key": httpx.post(
            url + "/v1/chat/completions", json=chat_body(), headers={"authorization": "Bearer x"}
        ),
        "bad json": httpx.post(url + "/v1/chat/completions", content=b"{", headers=se),
        "no route": httpx.get(url + "/v2/anything", headers=se),
        "wrong method": httpx.put(url + "/v1/chat/completions", headers=se),
        "models": httpx.get(url + "/v1/models", headers=se),
        "no such model": httpx.get(url + "/v1/models/nope", headers=se),
        "dot segment": httpx.post(url + "/v1/chat/%2e%2e/x", json=chat_body(), headers=se),
        "served": router.post(headers=se),
        "denied": router.post(headers=router.headers(country="US", tenant="t2")),
    }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "no key": 401, "bad key": 401, "bad json": 400, "no route": 404, "wrong method": 405,
        "models": 200, "no such model": 404, "dot segment": 400, "served": 200, "denied": 451,
    }  # fmt: skip
    ids = {name: answer.headers["x-geopin-decision-id"] for name, answer in answers.items()}
    assert len(set(ids.values())) == len(ids)  # one id per answer
    recorded = {record["decision_id"] for record in audit_records(tmp_path)}
    assert {ids["served"], ids["denied"]} <= recorded
    assert not recorded & {ids[n] for n in ids if n not in ("served", "denied")}


def _raw_request(url: str, head: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b"content-length" not in data.lower():
                break
        return data


def test_header_injection_is_rejected_and_hop_by_hop_headers_are_not_forwarded(
    router: Router, upstreams
):
    body = b'{"model": "gpt-4o", "messages": []}'
    injected = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nCF-IPCountry: SE\r\n"
        b"X-Evil: a\rInjected: b\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert _raw_request(router.url, injected).startswith(b"HTTP/1.1 400")
    before = requests_seen(upstreams["eu-se"])
    response = router.post(
        headers={
            **router.headers(country="SE"),
            "connection": "keep-alive, x-private",
            "x-private": "secret",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "x-forwarded-for": "203.0.113.9",
            "x-forwarded-host": "evil.example",
            "forwarded": "for=203.0.113.9",
            "x-real-ip": "203.0.113.9",
            "x-api-key": router.keys["t1"],  # the same key, as Anthropic SDKs send it
            "cookie": "session=1",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        }
    )
    assert response.status_code == 200
    assert requests_seen(upstreams["eu-se"]) == before + 1
    seen = last_request(upstreams["eu-se"])["headers"]
    for name in (
        "x-private", "keep-alive", "te", "x-forwarded-for", "x-forwarded-host", "forwarded",
        "x-real-ip", "x-api-key", "cookie", "cf-ipcountry",
    ):  # fmt: skip
        assert name not in seen, name
    assert seen["authorization"] == "Bearer sk-se"
    assert seen["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")


def test_an_escaped_line_break_or_dot_segment_in_the_path_never_reaches_an_upstream(
    router: Router, upstreams
):
    body = b'{"model": "gpt-4o", "messages": []}'
    mock = upstreams["eu-se"]
    before = requests_seen(mock)
    for target in (
        b"/v1/chat%0d%0aX-Evil:%201%0d%0a/completions",  # decoded, a header for the upstream
        b"/v1/chat/completions%0d%0a%0d%0aPOST%20/v1/embeddings",  # or a second request
        b"/v1/../v1/chat/completions",
        b"/v1/%2e%2e/admin",
        b"/v1/chat%2F..%2Fcompletions",
        b"/v1//chat/completions",  # an empty segment, merged away by many servers
        b"/v1/chat/completions?x=%0d%0aX-Evil:%201",
    ):
        head = (
            b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"CF-IPCountry: SE\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (target, router.keys["t1"].encode(), len(body))
        )
        answer = _raw_request(router.url, head + body)
        assert answer.startswith(b"HTTP/1.1 400"), (target, answer[:200])
        assert b'"code":"invalid_request_target"' in answer.replace(b" ", b""), answer
        assert b"\r\nx-evil" not in answer.lower()
    assert requests_seen(mock) == before  # nothing was forwarded
    # The refusal says what is wrong and where: a base URL ending in "/", say.
    head = (
        b"POST /v1//chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"CF-IPCountry: SE\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (router.keys["t1"].encode(), len(body))
    )
    answer = _raw_request(router.url, head + body)
    assert b"the request's path has an empty segment ('//') at offset 3" in answer, answer
    # An escaped unreserved character is the same path, to geopin and to the upstream.
    head = (
        b"POST /v1/chat/%%63ompletions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"CF-IPCountry: SE\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (router.keys["t1"].encode(), len(body))
    )
    assert _raw_request(router.url, head + body).startswith(b"HTTP/1.1 200")
    assert last_request(mock)["raw_path"] == "/v1/chat/completions"
    assert router.post(headers=router.headers(country="SE")).status_code == 200


def test_spoofed_forwarding_headers_are_ignored(tmp_path, upstreams, monkeypatch):
    for name in ("SE_KEY", "DE_KEY", "US_KEY"):
        monkeypatch.setenv(name, "k")
    policy = write_policy(tmp_path / "p", _catalogue(upstreams))
    router = start_router(tmp_path, policy, trusted_cdns=["127.0.0.2"])
    try:
        spoofed = router.post(
            headers=router.headers(x_forwarded_for="81.2.69.142", cf_ipcountry="SE")
        )
        assert spoofed.status_code == 451  # the loopback peer has no location: fail closed
        assert spoofed.json()["error"]["rule"] == "defaults.unknown_location"
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=30) as cdn:
            via_cdn = cdn.post(
                router.url + "/v1/chat/completions",
                json=chat_body(),
                headers=router.headers(country="SE"),
            )
        assert via_cdn.status_code == 200
        assert via_cdn.headers["x-geopin-endpoint"] == "eu-se"
    finally:
        router.stop()


def test_slow_upstream_times_out_into_failover_or_504(tmp_path, mocks):
    slow = mocks("eu-slow", latency_ms=3000)
    fast = mocks("eu-fast")
    endpoints = [
        endpoint_yaml("eu-slow", slow.url + "/v1", "SE", priority=1),
        endpoint_yaml("eu-fast", fast.url + "/v1", "DE", priority=2),
    ]
    policy = write_policy(tmp_path / "p", endpoints)
    router = start_router(tmp_path, policy, upstream={"read_timeout_s": 0.5})
    try:
        response = router.post(headers=router.headers(country="SE"))
        assert response.status_code == 200
        assert response.headers["x-geopin-endpoint"] == "eu-fast"
        pool = router.call(router.app.runtime.client.stats)
        assert (pool.active, pool.idle) == (0, 1)  # the fast one kept alive, the slow one gone
    finally:
        router.stop()
    only_slow = write_policy(tmp_path / "p2", endpoints[:1])
    router = start_router(tmp_path / "p2", only_slow, upstream={"read_timeout_s": 0.5})
    try:
        response = router.post(headers=router.headers(country="SE"))
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "upstream_timeout"
        # The timed-out connection is dropped, not pooled: its late answer would be read as
        # the next request's.
        pool = router.call(router.app.runtime.client.stats)
        assert (pool.active, pool.idle) == (0, 0)
    finally:
        router.stop()


_ROUTER_OWN_TASKS = ("geopin-probe:", "geopin-reload", "geopin-audit-sequencer")


def test_client_disconnect_mid_stream_leaks_no_connection_or_task(tmp_path, mocks):
    slow = mocks("eu-se", stream_chunks=200, chunk_delay_ms=100)
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", slow.url + "/v1", "SE")])
    router = start_router(tmp_path, policy)
    try:
        baseline = router.call(asyncio.all_tasks)
        with router.stream("SE") as response:
            chunks = response.iter_raw()  # kept: dropping the generator would close the stream
            assert next(chunks).startswith(b"data:")
            assert router.call(lambda: router.app.runtime.client.stats().active) == 1
            # The connection says when its client leaves: no task per stream waits for that.
            watching = router.call(
                lambda: [
                    t for t in asyncio.all_tasks() if t.get_name() == "geopin-disconnect-watch"
                ]
            )
            assert watching == []
        left_at = time.monotonic()

        # The client is gone: within a moment the upstream connection is dropped and every
        # task of the request has ended, long before the upstream stream (20 s) would have. The
        # bound is loose because a busy machine can delay the request's last audit write.
        # Tasks the router starts for itself while it runs (a probe loop per endpoint, the
        # reload watcher, the sequencer) are not the request's; every other new task is.
        def request_tasks() -> list[str]:
            return [
                f"{task.get_name()}: {task.get_coro()!r}"
                for task in asyncio.all_tasks() - baseline - {asyncio.current_task()}
                if not task.get_name().startswith(_ROUTER_OWN_TASKS)
            ]

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = router.call(lambda: router.app.runtime.client.stats())
            left = router.call(request_tasks)
            if stats.active == 0 and not left:
                break
            time.sleep(0.05)
        assert stats.active == 0 and stats.idle == 0
        assert left == [], left
        # The upstream's stream would last 20 s; half that is loose enough for a busy machine.
        assert time.monotonic() - left_at < 10
        outcome = first_outcome(tmp_path, deadline)
        assert outcome is not None
        assert (outcome["endpoint"], outcome["error"]) == ("eu-se", "client disconnected")
    finally:
        router.stop()


def test_a_client_that_leaves_before_a_slow_answer_begins_frees_the_upstream_connection(
    tmp_path, mocks
):
    slow = mocks("eu-se", latency_ms=6_000)  # a long completion, not streamed
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", slow.url + "/v1", "SE")])
    router = start_router(tmp_path, policy, upstream={"read_timeout_s": 60})
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1.5 s
            httpx.post(router.url + "/v1/chat/completions", json=chat_body(),
                       headers=router.headers(country="SE"), timeout=1.5)  # fmt: skip
        gave_up = time.monotonic()
        deadline = gave_up + 10
        while time.monotonic() < deadline:
            stats = router.call(router.app.runtime.client.stats)
            if stats.active == 0:
                break
            time.sleep(0.05)
        assert (stats.active, stats.idle) == (0, 0)  # dropped, not held to the answer
        assert time.monotonic() - gave_up < 2  # the answer would begin 4.5 s after
        outcome = first_outcome(tmp_path, deadline)
        assert outcome is not None
        assert (outcome["status"], outcome["endpoint"], outcome["attempts"]) == (
            499, None, ["eu-se"],
        )  # fmt: skip
        board = {e["id"]: e for e in router.admin("GET", "/_geopin/endpoints").json()["endpoints"]}
        assert (
            board["eu-se"]["state"] == "closed"
        )  # the client's leaving is not the endpoint's fault
    finally:
        router.stop()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(failing=st.lists(st.sampled_from(["eu-se", "eu-de", "eu-ie", "us"]), unique=True))
def test_whatever_fails_the_serving_upstream_is_a_candidate(router_4, failing):
    router, upstreams = router_4
    for name, mock in upstreams.items():
        httpx.post(mock.url + ("/_mock/fail" if name in failing else "/_mock/recover"))
    candidates = {"eu-se", "eu-de", "eu-ie"}  # what the policy permits for a client in SE
    response = router.post(headers=router.headers(country="SE"))
    if response.status_code == 200:
        served = response.headers["x-geopin-endpoint"]
        assert served in candidates and served not in failing
        assert response.json()["region"] == served
    else:
        # Every candidate failed, or its breaker is still open from earlier failures.
        assert response.status_code == 503 and "retry-after" in response.headers
    assert router.post(headers=router.headers(country="US")).headers.get("x-geopin-endpoint") in (
        None,
        "us",
    )


@pytest.fixture
def router_4(tmp_path_factory, mocks):
    tmp: Path = tmp_path_factory.mktemp("four")
    upstreams = {name: mocks(name) for name in ("eu-se", "eu-de", "eu-ie", "us")}
    endpoints = [
        endpoint_yaml("eu-se", upstreams["eu-se"].url + "/v1", "SE"),
        endpoint_yaml("eu-de", upstreams["eu-de"].url + "/v1", "DE"),
        endpoint_yaml("eu-ie", upstreams["eu-ie"].url + "/v1", "IE"),
        endpoint_yaml("us", upstreams["us"].url + "/v1", "US"),
    ]
    router = start_router(tmp, write_policy(tmp / "p", endpoints))
    yield router, upstreams
    router.stop()


class _SwitchedAudit:
    """The audit database at its edge, taken down and brought back by the test."""

    def __init__(self) -> None:
        self.down = False
        self.committed: list[str] = []

    async def commit(self, record_id, body):
        if self.down:
            raise AuditUnavailable("database is down")
        self.committed.append(record_id)

    def submit(self, record_id, body):
        if self.down:
            raise AuditUnavailable("database is down")


def test_readiness_goes_false_while_decisions_cannot_be_recorded(tmp_path, mocks):
    se = mocks("eu-se")
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", se.url + "/v1", "SE")])
    audit = _SwitchedAudit()
    router = start_router(tmp_path, policy, audit=audit, upstream={"retry_after_s": 1})
    ready = router.url + "/_geopin/readyz"
    try:
        assert httpx.get(ready).status_code == 200
        audit.down = True
        assert router.post(headers=router.headers(country="SE")).status_code == 503
        assert httpx.get(ready).status_code == 503
        assert httpx.get(router.url + "/_geopin/healthz").status_code == 200  # alive, not ready
        time.sleep(1.1)  # after upstream.retry_after_s a balancer may try this router again
        assert httpx.get(ready).status_code == 200
        assert router.post(headers=router.headers(country="SE")).status_code == 503
        assert httpx.get(ready).status_code == 503
        audit.down = False
        assert router.post(headers=router.headers(country="SE")).status_code == 200
        assert httpx.get(ready).status_code == 200  # one record committed: ready at once
        assert len(audit.committed) == 1
    finally:
        router.stop()


class _DownAudit:
    """The audit database at its edge: down, and no spool."""

    async def commit(self, record_id, body):
        raise AuditUnavailable("database is down")

    def submit(self, record_id, body):
        raise AuditUnavailable("database is down")


class _BrokenAudit:
    """A fault that is nobody's edge: a bug raising something geopin does not expect."""

    async def commit(self, record_id, body):
        raise RuntimeError("a bug")

    def submit(self, record_id, body):
        raise RuntimeError("a bug")


def test_a_fault_in_geopin_is_a_json_500_and_the_router_keeps_serving(tmp_path, mocks):
    se = mocks("eu-se")
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", se.url + "/v1", "SE")])
    router = start_router(tmp_path, policy, audit=_BrokenAudit())
    try:
        for _ in range(2):
            response = router.post(headers=router.headers(country="SE"))
            assert response.status_code == 500
            error = response.json()["error"]
            assert error["code"] == "internal_error" and "a bug" not in error["message"]
            assert "x-geopin-decision-id" in response.headers
        assert last_request(se) is None
    finally:
        router.stop()


def test_nothing_is_forwarded_unrecorded(tmp_path, mocks):
    se = mocks("eu-se")
    policy = write_policy(tmp_path / "p", [endpoint_yaml("eu-se", se.url + "/v1", "SE")])
    router = start_router(tmp_path, policy, audit=_DownAudit())
    try:
        response = router.post(headers=router.headers(country="SE"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "audit_unavailable"
        assert "x-geopin-decision-id" in response.headers and "retry-after" in response.headers
        assert last_request(se) is None
    finally:
        router.stop()
