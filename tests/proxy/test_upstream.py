"""Shaping a call for each provider kind; which client headers an upstream may see."""

from __future__ import annotations

import json

import pytest

from geopin.errors import ConfigError
from geopin.policy.decision import CredentialRef, Endpoint, ProviderKind, Tier
from geopin.proxy.upstream import (
    Api,
    ClientCall,
    build_request,
    forwardable_headers,
    prepare_route,
)


def make_endpoint(**overrides) -> Endpoint:
    values = {
        "id": "ep",
        "url": "https://eu.api.example.com/v1",
        "kind": ProviderKind.OPENAI,
        "country": "SE",
        "tier": Tier.REGIONAL,
        "models": {"gpt-4o": "gpt-4o-eu"},
        "credentials": CredentialRef(env="EP_KEY"),
    }
    values.update(overrides)
    return Endpoint(**values)


def make_call(**overrides) -> ClientCall:
    body = {"model": "gpt-4o", "messages": []}
    values = {
        "api": Api.OPENAI,
        "method": "POST",
        "operation": "/chat/completions",
        "model": "gpt-4o",
        "body": body,
        "raw_body": json.dumps(body).encode(),
        "query": "",
    }
    values.update(overrides)
    return ClientCall(**values)


def test_openai_compatible(monkeypatch):
    monkeypatch.setenv("EP_KEY", "sk-1")
    request = build_request(prepare_route(make_endpoint()), make_call(), [])
    assert request.origin.host == "eu.api.example.com" and request.origin.port == 443
    assert request.target == "/v1/chat/completions"
    assert (b"authorization", b"Bearer sk-1") in request.headers
    assert json.loads(request.body)["model"] == "gpt-4o-eu"


def test_no_credential_and_no_prompt_shows_in_what_a_log_line_could_print(monkeypatch):
    monkeypatch.setenv("EP_KEY", "sk-secret-1")
    route = prepare_route(make_endpoint())
    call = make_call(body={"model": "gpt-4o", "messages": ["a private prompt"]},
                     raw_body=b'{"messages": ["a private prompt"]}')  # fmt: skip
    request = build_request(route, call, [(b"authorization", b"Bearer sk-secret-1")])
    for shown in (repr(route), repr(call), repr(request), str(request)):
        assert "sk-secret-1" not in shown and "private prompt" not in shown, shown
    assert "eu.api.example.com" in repr(request) and "/chat/completions" in repr(request)


def test_azure_deployment_url_and_api_key(monkeypatch):
    monkeypatch.setenv("EP_KEY", "az-1")
    endpoint = make_endpoint(
        kind=ProviderKind.AZURE_OPENAI, url="https://res.openai.azure.com", api_version="2024-10-21"
    )
    call = make_call(query="x=1")
    request = build_request(prepare_route(endpoint), call, [])
    assert request.target == (
        "/openai/deployments/gpt-4o-eu/chat/completions?api-version=2024-10-21&x=1"
    )
    assert request.headers == [(b"api-key", b"az-1")]


def test_anthropic_key_and_version(monkeypatch):
    monkeypatch.setenv("EP_KEY", "ant-1")
    endpoint = make_endpoint(kind=ProviderKind.ANTHROPIC, models={"claude": "claude-x"})
    call = make_call(api=Api.ANTHROPIC, operation="/messages", model="claude")
    request = build_request(prepare_route(endpoint), call, [])
    assert (b"x-api-key", b"ant-1") in request.headers
    assert (b"anthropic-version", b"2023-06-01") in request.headers
    mine = build_request(prepare_route(endpoint), call, [(b"anthropic-version", b"2024-01-01")])
    assert [v for n, v in mine.headers if n == b"anthropic-version"] == [b"2024-01-01"]


def test_the_clients_bytes_pass_untouched_when_the_name_is_already_right(monkeypatch):
    monkeypatch.setenv("EP_KEY", "k")
    raw = b'{"model":   "gpt-4o",  "messages": []}'
    call = make_call(raw_body=raw, body=json.loads(raw))
    route = prepare_route(make_endpoint(models={"gpt-4o": "gpt-4o"}))
    assert build_request(route, call, []).body is raw


def test_missing_credential_makes_the_route_unusable_without_revealing_anything(monkeypatch):
    monkeypatch.delenv("EP_KEY", raising=False)
    route = prepare_route(make_endpoint())
    assert not route.usable and route.problem == "credential env:EP_KEY is not set"
    assert route.auth == ()


def test_overrides_of_url_and_credential(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    route = prepare_route(
        make_endpoint(), "http://127.0.0.1:9001/v1", CredentialRef(file=str(secret))
    )
    assert route.origin.port == 9001 and route.base_path == "/v1"
    assert route.auth == ((b"authorization", b"Bearer from-file"),)
    with pytest.raises(ConfigError):
        prepare_route(make_endpoint(), "ftp://x")


def test_forwardable_headers():
    headers = [
        (b"content-type", b"application/json"),
        (b"connection", b"keep-alive, X-Custom-Hop"),
        (b"x-custom-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"authorization", b"Bearer gpk_x"),
        (b"api-key", b"gpk_x"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"cf-ipcountry", b"DE"),
        (b"x-geopin-data-class", b"pii"),
        (b"traceparent", b"00-abc-def-01"),
        (b"openai-beta", b"assistants=v2"),
    ]
    assert forwardable_headers(headers) == [
        (b"content-type", b"application/json"),
        (b"traceparent", b"00-abc-def-01"),
        (b"openai-beta", b"assistants=v2"),
    ]
