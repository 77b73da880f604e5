"""One JSON error shape for every refusal."""

from __future__ import annotations

import json

from geopin.policy.decision import Action, Decision, DenyCode
from geopin.proxy import refusal


def _deny(code: DenyCode, rule: str | None = "r1") -> Decision:
    return Decision(
        action=Action.DENY,
        policy_version="v",
        permitted=(),
        candidates=(),
        candidate_ranks=(),
        matched=(),
        reason="because",
        legal_basis="a law",
        deny_code=code,
        deny_rule=rule,
    )


def test_every_builder_answers_in_the_one_shape():
    responses = [
        refusal.denied(_deny(DenyCode.RULE), "d1"),
        refusal.denied(_deny(DenyCode.UNKNOWN_MODEL, None), "d1"),
        refusal.unavailable("d1", "down", 5),
        refusal.gateway_timeout("d1", "slow"),
        refusal.audit_unavailable("d1", 5),
        refusal.bad_request("bad", "invalid_json"),
        refusal.unauthorized(),
        refusal.too_large(10),
        refusal.not_found("x"),
        refusal.method_not_allowed("GET", "POST"),
        refusal.internal_error("d1"),
    ]
    for response in responses:
        error = json.loads(response.body)["error"]
        assert {"message", "type", "code", "param"} <= set(error)
        headers = dict(response.headers)
        assert headers[b"content-type"] == b"application/json"
        assert headers[b"cache-control"] == b"no-store"
        assert int(headers[b"content-length"]) == len(response.body)


def test_451_names_rule_law_and_blocked_by():
    response = refusal.denied(_deny(DenyCode.NO_COMPLIANT_ENDPOINT, "eu/rule"), "d9", "https://g")
    assert response.status == 451
    headers = dict(response.headers)
    assert headers[b"link"] == b'<https://g/_geopin/policy/rules/eu%2Frule>; rel="blocked-by"'
    assert headers[b"x-geopin-decision-id"] == b"d9"
    error = json.loads(response.body)["error"]
    assert error["code"] == "no_compliant_endpoint" and error["type"] == (
        "unavailable_for_legal_reasons"
    )
    assert (error["rule"], error["reason"], error["legal_basis"], error["decision_id"]) == (
        "eu/rule",
        "because",
        "a law",
        "d9",
    )


def test_unknown_model_is_404_model_not_found():
    response = refusal.denied(_deny(DenyCode.UNKNOWN_MODEL, None), "d1")
    assert response.status == 404
    assert json.loads(response.body)["error"]["code"] == "model_not_found"
