"""The one JSON error shape geopin answers with, and a builder for every refusal.

Every error, from the proxy path and the admin API alike, is OpenAI's error object (so SDKs
show the message) with geopin's additions when a policy decided it::

    {"error": {"message": ..., "type": ..., "code": ..., "param": null,
               "rule": ..., "reason": ..., "legal_basis": ..., "decision_id": ...}}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from geopin.policy.decision import Decision, DenyCode, Endpoint

DECISION_HEADER = b"x-geopin-decision-id"
ENDPOINT_HEADER = b"x-geopin-endpoint"
COUNTRY_HEADER = b"x-geopin-processing-country"
RULES_PATH = "/_geopin/policy/rules/"

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def asgi_start(self) -> dict[str, Any]:
        return {"type": "http.response.start", "status": self.status, "headers": self.headers}

    def naming(self, request_id: str) -> ErrorResponse:
        """This answer with ``X-Geopin-Decision-Id: request_id`` unless it names a decision."""
        if any(name == DECISION_HEADER for name, _ in self.headers):
            return self
        return ErrorResponse(
            self.status, self.body, (*self.headers, (DECISION_HEADER, request_id.encode()))
        )


def error_payload(
    message: str, type_: str, code: str, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param, **extra}}


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str,
    *,
    param: str | None = None,
    decision_id: str | None = None,
    headers: Headers = (),
    **extra: Any,
) -> ErrorResponse:
    if decision_id is not None:
        extra["decision_id"] = decision_id
    body = json.dumps(error_payload(message, type_, code, param, **extra)).encode()
    out = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # Refusals depend on where the client is and on the policy of the moment.
        (b"cache-control", b"no-store"),
    ]
    if decision_id is not None:
        out.append((DECISION_HEADER, decision_id.encode()))
    out.extend(headers)
    return ErrorResponse(status, body, tuple(out))


def denied(decision: Decision, decision_id: str, rules_base: str = "") -> ErrorResponse:
    """451 for a policy refusal (RFC 7725), 404 for a model nothing serves."""
    if decision.deny_code is DenyCode.UNKNOWN_MODEL:
        return error_response(
            404,
            decision.reason,
            "invalid_request_error",
            "model_not_found",
            param="model",
            decision_id=decision_id,
        )
    headers = []
    if decision.deny_rule:
        link = f"<{rules_base}{RULES_PATH}{quote(decision.deny_rule, safe='')}>"
        headers.append((b"link", f'{link}; rel="blocked-by"'.encode()))
    return error_response(
        451,
        f"geopin refused this request: {decision.reason}",
        "unavailable_for_legal_reasons",
        str(decision.deny_code or DenyCode.RULE),
        decision_id=decision_id,
        headers=headers,
        rule=decision.deny_rule,
        reason=decision.reason,
        legal_basis=decision.legal_basis,
    )


def unavailable(decision_id: str | None, message: str, retry_after_s: int) -> ErrorResponse:
    """503: compliant endpoints exist but none can serve now. Never a fallback elsewhere."""
    return error_response(
        503,
        message,
        "server_error",
        "no_endpoint_available",
        decision_id=decision_id,
        headers=[(b"retry-after", str(retry_after_s).encode())],
    )


def api_not_served(decision_id: str, model: str | None, api: str) -> ErrorResponse:
    """404: the request may be processed, but no endpoint it may use speaks the client's API
    for this model (an Anthropic Messages call for a model only OpenAI endpoints serve)."""
    if model is None:
        message = f"no endpoint this request may use speaks {_api_name(api)}"
        return error_response(
            404, message, "invalid_request_error", "not_found", decision_id=decision_id
        )
    return error_response(
        404,
        f"model '{model}' is not served through {_api_name(api, model)} by any endpoint this "
        "request may use",
        "invalid_request_error",
        "model_not_found",
        decision_id=decision_id,
    )


def endpoint_refused(
    decision: Decision,
    decision_id: str,
    endpoint: Endpoint,
    model: str | None,
    api: str,
    *,
    by: str,
) -> ErrorResponse:
    """The endpoint the call is pinned to (``by`` names what pinned it: ``X-Geopin-Endpoint``,
    or the object it names) cannot take this request: 451 when it processes outside the
    decision's permitted places, 400 when it is permitted but does not serve the call (its
    model, or its API)."""
    if endpoint.processes_within(decision.permitted_places()):
        what = "calls naming no model" if model is None else f"model '{model}'"
        return error_response(
            400,
            f"endpoint '{endpoint.id}' ({by}) does not serve {what} through "
            + _api_name(api, model),
            "invalid_request_error",
            "endpoint_cannot_serve",
            decision_id=decision_id,
        )
    where = endpoint.subdivision or endpoint.country
    reason = (
        f"endpoint '{endpoint.id}' ({by}) processes in {where}, where this "
        f"request may not be processed ({decision.reason})"
    )
    return error_response(
        451,
        f"geopin refused this request: {reason}",
        "unavailable_for_legal_reasons",
        "endpoint_not_permitted",
        decision_id=decision_id,
        rule=None,
        reason=reason,
        legal_basis=decision.legal_basis,
    )


def _api_name(api: str, model: str | None = None) -> str:
    """The client's API as a message names it (a model call to Anthropic's is a Messages one)."""
    if api != "anthropic":
        return "the OpenAI API"
    return "the Anthropic API" if model is None else "the Anthropic Messages API"


def gateway_timeout(decision_id: str, message: str) -> ErrorResponse:
    return error_response(504, message, "server_error", "upstream_timeout", decision_id=decision_id)


def audit_unavailable(decision_id: str, retry_after_s: int) -> ErrorResponse:
    """503 when the decision cannot be recorded: nothing is forwarded unrecorded."""
    return error_response(
        503,
        "the audit log cannot record this request now, so it was not forwarded",
        "server_error",
        "audit_unavailable",
        decision_id=decision_id,
        headers=[(b"retry-after", str(retry_after_s).encode())],
    )


def shutting_down(retry_after_s: int) -> ErrorResponse:
    """503 for a request that arrives while the router drains before exiting. ``Connection:
    close`` so the client's next request opens a connection to another instance."""
    return error_response(
        503,
        "this router is shutting down; retry on another instance",
        "server_error",
        "shutting_down",
        headers=[(b"retry-after", str(retry_after_s).encode()), (b"connection", b"close")],
    )


def bad_request(message: str, code: str, param: str | None = None) -> ErrorResponse:
    return error_response(400, message, "invalid_request_error", code, param=param)


def invalid_target(problem: str) -> ErrorResponse:
    """``problem``: what is wrong with the target and where (``target.BadTarget``'s message)."""
    return bad_request(
        f"{problem}; geopin does not forward such a target (see RFC 3986)",
        "invalid_request_target",
    )


def unauthorized(message: str = "a valid geopin API key is required") -> ErrorResponse:
    return error_response(
        401,
        message,
        "authentication_error",
        "invalid_api_key",
        headers=[(b"www-authenticate", b'Bearer realm="geopin"')],
    )


def too_large(limit: int) -> ErrorResponse:
    return error_response(
        413,
        f"the request body is larger than the limit of {limit} bytes",
        "invalid_request_error",
        "request_too_large",
    )


def not_found(message: str, code: str = "not_found") -> ErrorResponse:
    return error_response(404, message, "invalid_request_error", code)


def internal_error(decision_id: str | None) -> ErrorResponse:
    """A fault in geopin itself; the log has the details, the client only this."""
    return error_response(
        500,
        "geopin failed to handle the request; the router's log has the details",
        "server_error",
        "internal_error",
        decision_id=decision_id,
    )


def method_not_allowed(method: str, allowed: str) -> ErrorResponse:
    return error_response(
        405,
        f"method {method} is not supported here",
        "invalid_request_error",
        "method_not_allowed",
        headers=[(b"allow", allowed.encode())],
    )


async def send_error(send: Any, error: ErrorResponse) -> None:
    await send(error.asgi_start())
    await send({"type": "http.response.body", "body": error.body})
