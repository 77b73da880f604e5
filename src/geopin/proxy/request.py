"""Reading a client's request: its route, body, call, declared data class and trace id."""

from __future__ import annotations

from typing import Any, NamedTuple

from geopin.keys import presented_key
from geopin.proxy import refusal
from geopin.proxy.form import FormError, FormModel, NoModelField, form_model, is_multipart
from geopin.proxy.jsonbody import DuplicateKey, parse_json
from geopin.proxy.objects import ObjectHomes
from geopin.proxy.refusal import ErrorResponse
from geopin.proxy.state import RuntimeState
from geopin.proxy.upstream import Api, ClientCall

DATA_CLASS_HEADER = b"x-geopin-data-class"
ENDPOINT_PIN_HEADER = b"x-geopin-endpoint"
AZURE_PREFIX = "/openai/deployments/"
# Operations that run a model on the request: a POST to one must name its model. A call to
# any other operation may name none (the Files and Batches APIs, a stored response).
MODEL_OPERATIONS = frozenset(
    (
        "/chat/completions",
        "/completions",
        "/embeddings",
        "/responses",
        "/messages",
        "/messages/count_tokens",
        "/audio/speech",
        "/audio/transcriptions",
        "/audio/translations",
    )
)
# Operations whose path is its own route; any other is reported as a template, so a client
# cannot grow the number of metric series by inventing paths.
_OPERATIONS = frozenset(
    ("/chat/completions", "/completions", "/embeddings", "/responses", "/messages", "/models")
)


class ClientGone(Exception):
    """The client disconnected; there is nobody left to answer."""


def route_template(path: str) -> str | None:
    """The low-cardinality route template of ``path`` (None: not a path geopin serves)."""
    if path.startswith("/v1/"):
        operation = path[3:]
        if operation in _OPERATIONS:
            return path
        if operation.startswith("/models/"):
            return "/v1/models/{model}"
        return "/v1/{operation}"
    if path.startswith(AZURE_PREFIX):
        operation = "/" + path[len(AZURE_PREFIX) :].partition("/")[2]
        shown = operation if operation in _OPERATIONS else "/{operation}"
        return "/openai/deployments/{deployment}" + shown
    return None


def declared_data_class(state: RuntimeState, headers: list) -> tuple[str | None, Any]:
    for name, value in headers:
        if name == DATA_CLASS_HEADER:
            declared = value.decode("latin-1").strip()
            if declared not in state.policy.data_classes:
                known = ", ".join(sorted(state.policy.data_classes)) or "none"
                return None, refusal.bad_request(
                    f"X-Geopin-Data-Class '{declared}' is not a data class of the policy "
                    f"(known: {known})",
                    "invalid_data_class",
                )
            return declared, None
    return None, None


def client_tenant(
    state: RuntimeState, headers: list, *, allow_anonymous: bool
) -> tuple[str | None, str | None]:
    """Who the client is, from its router key (never from a header it could set otherwise):
    (tenant, None); (None, None) for a client without a key where anonymous clients are
    served; (None, why) when it must be refused with a 401."""
    key = presented_key(headers)
    if key is None:
        return None, None if allow_anonymous else "a valid geopin API key is required"
    entry = state.keys.authenticate(key) if state.keys is not None else None
    if entry is None:
        return None, "the geopin API key is not valid"
    return entry.tenant, None


class Pin(NamedTuple):
    """The one endpoint a call must go to, if the decision lets it: it only narrows the
    decision's candidates to that one."""

    endpoint: str
    by: str  # what named it, for messages: "X-Geopin-Endpoint", "where resp_1 was made"
    object_id: str | None = None  # the object whose endpoint it is, when one was found


def pinned_endpoint(state: RuntimeState, headers: list) -> tuple[Pin | None, Any]:
    """The endpoint the client names with ``X-Geopin-Endpoint`` (the one an earlier answer
    named: the endpoint holding a file or a stored response); a name the catalogue does not
    hold is a 400."""
    for name, value in headers:
        if name == ENDPOINT_PIN_HEADER:
            wanted = value.decode("latin-1").strip()
            if wanted not in state.policy.endpoints:
                return None, refusal.bad_request(
                    f"X-Geopin-Endpoint '{wanted}' is not an endpoint of the policy",
                    "unknown_endpoint",
                )
            return Pin(wanted, "X-Geopin-Endpoint"), None
    return None, None


async def object_pin(
    state: RuntimeState, objects: ObjectHomes, tenant: str | None, names: list[str]
) -> Pin | None:
    """The endpoint holding an object the call names (``objects.named_objects``), if it is
    known where it was made and that endpoint is still in the catalogue
    (``geopin.proxy.objects``)."""
    found = await objects.locate(tenant, names)
    if found is None or found[1] not in state.policy.endpoints:
        return None
    return Pin(found[1], f"where {found[0]} was made", found[0])


def call_api(operation: str, headers: list) -> str:
    """Anthropic's API for its paths and for any call its SDKs make (they send an
    ``anthropic-version``), OpenAI's otherwise."""
    if operation.startswith("/messages"):
        return Api.ANTHROPIC
    for name, _ in headers:
        if name == b"anthropic-version":
            return Api.ANTHROPIC
    return Api.OPENAI


async def read_body(receive: Any, headers: list, limit: int) -> bytes | ErrorResponse:
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                return refusal.bad_request("invalid Content-Length", "invalid_content_length")
            if int(value) > limit:
                return refusal.too_large(limit)  # refused before a byte of it is read
    parts = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return refusal.too_large(limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def content_type(headers: list) -> bytes | None:
    for name, value in headers:
        if name == b"content-type":
            return value
    return None


def parse_call(
    method: str,
    operation: str,
    deployment: str | None,
    query: str,
    raw: bytes,
    kind: bytes | None = None,
    api: str = Api.OPENAI,
) -> tuple[ClientCall | None, ErrorResponse | None]:
    """The client's call from its body: JSON, or (``kind`` its Content-Type) a multipart form.

    The model comes from a POST's body (or the Azure deployment). A call that names none is a
    call on objects (``model`` None), forwarded as sent, except a POST to one of the
    ``MODEL_OPERATIONS``, which needs one.
    """
    needs_model = deployment is None and operation in MODEL_OPERATIONS
    free = deployment is None and not needs_model  # the call may name no model
    # ... and its body need not be JSON unless it says it is (an upload part's bytes, say)
    optional = free and not _declared_json(kind)
    if method != "POST" or (free and not raw):
        return _unnamed(api, method, operation, query, raw), None
    if kind is not None and is_multipart(kind):
        return _parse_form(method, operation, deployment, query, raw, kind, needs_model, api)
    try:
        body = parse_json(raw)
    except DuplicateKey as exc:  # which one an upstream would read is anybody's guess
        return None, refusal.bad_request(
            f"the request body names {exc.key!r} more than once", "duplicate_key", param=exc.key
        )
    except ValueError as exc:
        if optional:
            return _unnamed(api, method, operation, query, raw), None
        return None, refusal.bad_request(
            f"the request body is not valid JSON: {exc}", "invalid_json"
        )
    if not isinstance(body, dict):
        if optional:
            return _unnamed(api, method, operation, query, raw), None
        return None, refusal.bad_request("the request body must be a JSON object", "invalid_json")
    api_version = None
    model: Any
    if deployment is not None:
        model = deployment
        query, api_version = _azure_query(query)
    else:
        model = body.get("model")
        if model is None and not needs_model:
            return _unnamed(api, method, operation, query, raw), None
        if not isinstance(model, str) or not model:
            return None, refusal.bad_request(
                "the request body needs a 'model' string", "missing_model", param="model"
            )
    return ClientCall(api, method, operation, model, body, raw, query, api_version), None


def _unnamed(api: str, method: str, operation: str, query: str, raw: bytes) -> ClientCall:
    return ClientCall(api, method, operation, None, None, raw, query)


def _declared_json(kind: bytes | None) -> bool:
    """Does the Content-Type say JSON (``application/json``, ``...+json``)?"""
    if kind is None:
        return False
    return kind.partition(b";")[0].strip().lower().endswith(b"json")


def _parse_form(
    method: str,
    operation: str,
    deployment: str | None,
    query: str,
    raw: bytes,
    kind: bytes,
    needs_model: bool,
    api: str,
) -> tuple[ClientCall | None, ErrorResponse | None]:
    try:
        form: FormModel | None = form_model(kind, raw)
    except NoModelField as exc:
        if deployment is None and needs_model:
            return None, refusal.bad_request(str(exc), "missing_model", param="model")
        if deployment is None:  # an upload, say: a call that names no model
            return _unnamed(api, method, operation, query, raw), None
        form = None  # an Azure deployment URL names the model; the form need not
    except FormError as exc:
        return None, refusal.bad_request(str(exc), "invalid_form")
    api_version = None
    if deployment is not None:
        model = deployment
        query, api_version = _azure_query(query)
    else:
        assert form is not None
        model = form.model
    call = ClientCall(Api.OPENAI, method, operation, model, None, raw, query, api_version, form)
    return call, None


def _azure_query(query: str) -> tuple[str, str | None]:
    """The client's query less its ``api-version``, and that version."""
    params = [p for p in query.split("&") if p]
    versions = [p for p in params if p.startswith("api-version=")]
    api_version = versions[0].partition("=")[2] if versions else None
    return "&".join(p for p in params if not p.startswith("api-version=")), api_version


def client_trace_id(headers: list) -> str | None:
    """The trace id in the client's ``traceparent``, for when geopin records no trace."""
    for name, value in headers:
        if name == b"traceparent":
            parts = value.split(b"-")
            if len(parts) >= 4 and len(parts[1]) == 32:
                return parts[1].decode("latin-1")
    return None


def affinity_key(tenant: str | None, ip: Any) -> bytes:
    """Tenant and client network (/24 or /48): one client keeps to one endpoint."""
    prefix = b"" if ip is None else ip.packed[: 3 if ip.version == 4 else 6]
    return (tenant or "").encode() + b"|" + prefix
