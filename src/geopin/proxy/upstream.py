"""Shaping a client's call into a request for one endpoint, by provider kind.

- ``openai-compatible``: ``{url}{operation}``, the JSON ``model`` set to the endpoint's name,
  ``Authorization: Bearer <credential>``.
- ``azure-openai``: ``{url}/openai/deployments/{deployment}{operation}?api-version=...``, the
  deployment being the endpoint's name for the model, ``api-key: <credential>``.
- ``anthropic``: ``{url}{operation}``, ``x-api-key: <credential>`` and an ``anthropic-version``.

A call that names no model (files, batches) keeps its body as sent; Azure gets it under
``{url}/openai{operation}?api-version=...``.

What the client sent otherwise passes unchanged, except the headers no upstream may see: its
own credentials (router keys are not upstream keys), hop-by-hop headers (RFC 9110 7.6.1),
forwarding and CDN headers (they locate the client) and geopin's own ``x-geopin-*``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from geopin.errors import ConfigError
from geopin.policy.decision import CredentialRef, Endpoint, ProviderKind
from geopin.proxy.form import FormModel
from geopin.proxy.forward import Origin, UpstreamRequest

ANTHROPIC_VERSION = b"2023-06-01"  # sent when neither the client nor the endpoint names one

# Never forwarded: hop-by-hop (RFC 9110 7.6.1), framing (recomputed), the client's credentials,
# and everything that says who or where the client is.
_DROPPED = frozenset(
    name.encode()
    for name in (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
        "authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "forwarded",
        "via",
        "x-real-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "fastly-client-ip",
        "x-akamai-edgescape",
    )
)
_DROPPED_PREFIXES = (b"x-forwarded-", b"cf-", b"cloudfront-viewer-", b"x-vercel-", b"x-geopin-")


class Api:
    """The wire format a client speaks; an endpoint of another format cannot serve it."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


API_OF_KIND = {
    ProviderKind.OPENAI: Api.OPENAI,
    ProviderKind.AZURE_OPENAI: Api.OPENAI,
    ProviderKind.ANTHROPIC: Api.ANTHROPIC,
}


@dataclass(frozen=True, slots=True)
class Route:
    """An endpoint made ready to forward to: its parsed URL and its credential header."""

    endpoint: Endpoint
    origin: Origin
    base_path: str  # the url's path without a trailing slash ("/v1", or "" for Azure)
    auth: tuple[tuple[bytes, bytes], ...] = field(repr=False)  # the credential: never shown
    problem: str | None = None  # why it cannot be used now (a missing credential)

    @property
    def usable(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class ClientCall:
    """What the client asked for, parsed once."""

    api: str
    method: str
    operation: str  # the path after ``/v1`` (or after the Azure deployment), "/chat/completions"
    model: str | None  # None: a call that names no model, forwarded as sent ("/files")
    body: dict[str, Any] | None = field(repr=False)  # the prompt: never shown
    raw_body: bytes = field(repr=False)
    query: str  # the client's query string, less an Azure ``api-version``
    api_version: str | None = None  # the client's Azure api-version
    form: FormModel | None = None  # a multipart body's model field (then ``body`` is None)

    @property
    def streamed(self) -> bool:
        """Does the call ask for its answer as a stream of events (``"stream": true``)?"""
        return isinstance(self.body, dict) and self.body.get("stream") is True


def prepare_route(
    endpoint: Endpoint, url: str | None = None, credentials: CredentialRef | None = None
) -> Route:
    """Parse the endpoint's URL and read its credential once (either may be overridden)."""
    parts = urlsplit(url or endpoint.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint {endpoint.id}: url {url or endpoint.url!r} is not http(s)")
    origin = Origin(parts.scheme, parts.hostname, parts.port or _default_port(parts.scheme))
    problem = None
    auth: tuple[tuple[bytes, bytes], ...] = ()
    credentials = credentials or endpoint.credentials
    if credentials is not None:
        try:
            auth = _auth_headers(endpoint.kind, read_credential(credentials))
        except ConfigError as exc:
            problem = str(exc)
    return Route(endpoint, origin, parts.path.rstrip("/"), auth, problem)


def read_credential(ref: CredentialRef) -> str:
    """The secret ``ref`` points at. Raises ConfigError naming the reference, never the value."""
    if ref.env:
        value = os.environ.get(ref.env, "").strip()
        if not value:
            raise ConfigError(f"credential {ref.describe()} is not set")
        return value
    try:
        value = Path(ref.file or "").read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"credential {ref.describe()} cannot be read: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"credential {ref.describe()} is empty")
    return value


def forwardable_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's headers an upstream may see (names lower-cased, as ASGI gives them)."""
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    return [
        (name, value)
        for name, value in headers
        if name not in _DROPPED and name not in named and not name.startswith(_DROPPED_PREFIXES)
    ]


def build_request(
    route: Route, call: ClientCall, headers: list[tuple[bytes, bytes]]
) -> UpstreamRequest:
    """The request ``route`` gets for ``call``; ``headers`` come from forwardable_headers()."""
    endpoint = route.endpoint
    if call.model is None:
        target, body = _unnamed_target(route, call), call.raw_body
    else:
        target, body = _model_target(route, call, endpoint.models[call.model])
    out = headers + list(route.auth)
    if endpoint.kind is ProviderKind.ANTHROPIC and not any(
        name == b"anthropic-version" for name, _ in headers
    ):
        version_header = endpoint.api_version.encode() if endpoint.api_version else None
        out.append((b"anthropic-version", version_header or ANTHROPIC_VERSION))
    return UpstreamRequest(route.origin, call.method, target, out, body)


def _model_target(route: Route, call: ClientCall, upstream_model: str) -> tuple[str, bytes]:
    """The target and body of a model call: the model set to the endpoint's name for it."""
    if route.endpoint.kind is ProviderKind.AZURE_OPENAI:
        deployment = quote(upstream_model, safe="")
        target = f"{route.base_path}/openai/deployments/{deployment}{call.operation}?"
        target += _azure_query(route, call)
        if (call.body is not None and "model" in call.body) or call.form is not None:
            return target, _with_model(call, upstream_model)
        return target, call.raw_body
    target = route.base_path + call.operation + ("?" + call.query if call.query else "")
    return target, _with_model(call, upstream_model)


def _unnamed_target(route: Route, call: ClientCall) -> str:
    """Where a call that names no model goes: Azure keeps such operations under ``/openai``
    (``/openai/files?api-version=...``), the others under their version prefix."""
    if route.endpoint.kind is ProviderKind.AZURE_OPENAI:
        return f"{route.base_path}/openai{call.operation}?{_azure_query(route, call)}"
    return route.base_path + call.operation + ("?" + call.query if call.query else "")


def _azure_query(route: Route, call: ClientCall) -> str:
    version = route.endpoint.api_version or call.api_version or ""
    query = "api-version=" + quote(version, safe="")
    return query + "&" + call.query if call.query else query


def _with_model(call: ClientCall, upstream_model: str) -> bytes:
    if call.form is not None:
        if call.form.model == upstream_model:
            return call.raw_body
        return call.form.replaced(call.raw_body, upstream_model)
    if call.body is None or call.body.get("model") == upstream_model:
        return call.raw_body  # byte for byte what the client sent
    rewritten = dict(call.body)
    rewritten["model"] = upstream_model
    return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()


def _auth_headers(kind: ProviderKind, secret: str) -> tuple[tuple[bytes, bytes], ...]:
    try:
        value = secret.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ConfigError("a credential must be Latin-1 text") from exc
    if b"\r" in value or b"\n" in value:
        raise ConfigError("a credential must be a single line")
    if kind is ProviderKind.AZURE_OPENAI:
        return ((b"api-key", value),)
    if kind is ProviderKind.ANTHROPIC:
        return ((b"x-api-key", value),)
    return ((b"authorization", b"Bearer " + value),)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80
