"""The mock upstream as a raw ASGI app: an OpenAI-, Azure- and Anthropic-shaped model server.

No framework routing: it is the baseline in benchmarks, so each request costs one dict
lookup, one JSON parse and one JSON dump. Every answer names the region that served it.
Calls that name no model (the Files API, stored responses) reach an in-memory object store.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from geopin.mock import payloads
from geopin.mock.objects import MultipartError, ObjectStore, parse_form

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-3-5-sonnet-latest")
_AZURE_PREFIX = "/openai/deployments/"
_OBJECT_PREFIXES = (("/v1/files/", "file"), ("/v1/responses/", "response"))


@dataclass(frozen=True)
class MockOptions:
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    stream_chunks: int = 8
    chunk_delay_ms: float = 0.0
    embedding_dim: int = 8
    models: tuple[str, ...] = DEFAULT_MODELS
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.chunk_delay_ms < 0:
            raise ValueError("latency_ms and chunk_delay_ms must not be negative")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if self.stream_chunks < 1 or self.embedding_dim < 1:
            raise ValueError("stream_chunks and embedding_dim must be at least 1")


@dataclass
class MockState:
    """What the upstream has seen and whether it has been told to fail."""

    failing: bool = False
    requests: int = 0
    # Kept raw (scope, body) and decoded only when asked, to keep the hot path cheap.
    last: tuple[Scope, bytes] | None = None
    rng: random.Random = field(default_factory=random.Random)


class _BadRequest(Exception):
    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


class MockUpstream:
    """The ASGI app; ``state`` is exposed so in-process tests can inspect or flip it."""

    def __init__(self, region: str, options: MockOptions) -> None:
        self.region = region
        self.options = options
        self.state = MockState(rng=random.Random(options.seed))
        self.store = ObjectStore(region)
        self._region_header = (b"x-mock-region", region.encode())
        self._latency = options.latency_ms / 1000
        self._chunk_delay = options.chunk_delay_ms / 1000
        self._routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/v1/responses"): self._responses,
            ("GET", "/v1/models"): self._models,
        }
        self._object_routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("GET", "files"): self._list_files,
            ("POST", "files"): self._upload_file,
            ("GET", "file"): self._file,
            ("DELETE", "file"): self._delete_file,
            ("GET", "file content"): self._file_content,
            ("GET", "response"): self._stored_response,
            ("DELETE", "response"): self._delete_response,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if path.startswith("/_mock/") or path == "/healthz":
            await self._control(method, path, send)
            return
        body = await _read_body(receive)
        state = self.state
        state.requests += 1
        state.last = (scope, body)
        anthropic = path == "/v1/messages"
        if state.failing:
            message = f"mock upstream {self.region} is failing (switched by /_mock/fail)"
            await self._error(send, 503, message, "server_error", "upstream_failing", anthropic)
            return
        if self.options.fail_rate and state.rng.random() < self.options.fail_rate:
            message = f"mock upstream {self.region} failed at random (fail rate)"
            await self._error(send, 500, message, "server_error", "random_failure", anthropic)
            return
        handler, deployment = self._route(method, path, scope)
        if handler is None:
            await self._objects(method, path, scope, body, send)
            return
        try:
            request = _parse_json(body)
            if self._latency:
                await asyncio.sleep(self._latency)
            await handler(request, send, deployment)
        except _BadRequest as exc:
            await self._error(
                send, 400, str(exc), "invalid_request_error", exc.code, anthropic, exc.param
            )

    async def _objects(self, method: str, path: str, scope: Scope, body: bytes, send: Send) -> None:
        kind, ident = _object_path(path)
        handler = self._object_routes.get((method, kind))
        if handler is None:
            await self._error(send, 404, f"no route for {method} {path}", "not_found", "no_route")
            return
        try:
            if self._latency:
                await asyncio.sleep(self._latency)
            await handler(scope, body, send, ident)
        except _BadRequest as exc:
            await self._error(
                send, 400, str(exc), "invalid_request_error", exc.code, param=exc.param
            )

    def _route(self, method: str, path: str, scope: Scope) -> tuple[Any, str | None]:
        handler = self._routes.get((method, path))
        if handler is not None or not path.startswith(_AZURE_PREFIX):
            return handler, None
        deployment, _, operation = path[len(_AZURE_PREFIX) :].partition("/")
        azure = {
            "chat/completions": self._chat,
            "completions": self._completions,
            "embeddings": self._embeddings,
        }.get(operation)
        if method != "POST" or azure is None or not deployment:
            return None, None
        if b"api-version=" not in scope.get("query_string", b""):
            return self._azure_without_version, deployment
        return azure, deployment

    # ---- model endpoints -------------------------------------------------------------

    async def _chat(self, body: dict, send: Send, deployment: str | None) -> None:
        model = _model(body, deployment)
        if not isinstance(body.get("messages"), list):
            raise _BadRequest("'messages' must be a list", "invalid_messages")
        await self._answer(
            send, body, model, "chatcmpl", payloads.chat_completion, payloads.chat_chunks
        )

    async def _completions(self, body: dict, send: Send, deployment: str | None) -> None:
        model = _model(body, deployment)
        if "prompt" not in body:
            raise _BadRequest("'prompt' is required", "missing_prompt")
        await self._answer(
            send, body, model, "cmpl", payloads.text_completion, payloads.text_chunks
        )

    async def _messages(self, body: dict, send: Send, deployment: str | None) -> None:
        model = _model(body, deployment)
        if not isinstance(body.get("messages"), list):
            raise _BadRequest("'messages' must be a list", "invalid_messages")
        if not isinstance(body.get("max_tokens"), int):
            raise _BadRequest("'max_tokens' is required", "missing_max_tokens")
        await self._answer(
            send, body, model, "msg", payloads.anthropic_message, payloads.anthropic_events
        )

    async def _embeddings(self, body: dict, send: Send, deployment: str | None) -> None:
        model = _model(body, deployment)
        given = body.get("input")
        if given is None or given == [] or given == "":
            raise _BadRequest("'input' is required", "missing_input")
        inputs = given if isinstance(given, list) else [given]
        dimensions = body.get("dimensions", self.options.embedding_dim)
        if not isinstance(dimensions, int) or not 1 <= dimensions <= 4096:
            raise _BadRequest(
                "'dimensions' must be an integer from 1 to 4096", "invalid_dimensions"
            )
        await self._json(send, 200, payloads.embeddings(self.region, model, inputs, dimensions))

    async def _responses(self, body: dict, send: Send, deployment: str | None) -> None:
        model = _model(body, deployment)
        if body.get("stream"):
            message = "the mock answers responses whole, not streamed"
            raise _BadRequest(message, "unsupported_stream", "stream")
        ident = self.store.new_id("resp", "_")
        pieces = payloads.answer_pieces(self.region, model, self.options.stream_chunks)
        answer = payloads.response(self.region, ident, model, body, pieces)
        if body.get("store") is not False:
            self.store.responses[ident] = answer
        await self._json(send, 200, answer)

    async def _models(self, body: dict, send: Send, deployment: str | None) -> None:
        await self._json(send, 200, payloads.model_list(self.region, self.options.models))

    async def _azure_without_version(self, body: dict, send: Send, deployment: str | None) -> None:
        raise _BadRequest("the api-version query parameter is required", "missing_api_version")

    async def _answer(self, send, body, model, prefix, whole, stream) -> None:
        ident = f"{prefix}-mock-{self.region}-{self.state.requests}"
        pieces = payloads.answer_pieces(self.region, model, self.options.stream_chunks)
        if body.get("stream"):
            await self._stream(send, stream(self.region, ident, model, body, pieces))
        else:
            await self._json(send, 200, whole(self.region, ident, model, body, pieces))

    # ---- object endpoints --------------------------------------------------------------

    async def _upload_file(self, scope: Scope, body: bytes, send: Send, ident: str) -> None:
        try:
            parts = parse_form(_header(scope, b"content-type"), body)
        except MultipartError as exc:
            raise _BadRequest(str(exc), "invalid_multipart") from None
        fields = {part.name: part for part in reversed(parts)}
        file, purpose = fields.get("file"), fields.get("purpose")
        if file is None or file.filename is None:
            message = "'file' is required, as a form part with a filename"
            raise _BadRequest(message, "missing_file", "file")
        if purpose is None or purpose.filename is not None or not purpose.content:
            raise _BadRequest("'purpose' is required", "missing_purpose", "purpose")
        answer = payloads.file_object(
            self.region,
            self.store.new_id("file"),
            file.filename,
            purpose.content.decode("utf-8", "replace"),
            len(file.content),
        )
        self.store.add_file(answer, file.content)
        await self._json(send, 200, answer)

    async def _list_files(self, scope: Scope, body: bytes, send: Send, ident: str) -> None:
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        purpose = query.get("purpose")
        files = [f for f in self.store.files.values() if purpose in (None, f["purpose"])]
        await self._json(send, 200, payloads.object_list(self.region, files))

    async def _file(self, scope: Scope, body: bytes, send: Send, ident: str) -> None:
        file = self.store.files.get(ident)
        if file is None:
            await self._no_such_file(send, ident)
        else:
            await self._json(send, 200, file)

    async def _file_content(self, scope: Scope, body: bytes, send: Send, ident: str) -> None:
        content = self.store.contents.get(ident)
        if content is None:
            await self._no_such_file(send, ident)
        else:
            await self._octets(send, content)

    async def _delete_file(self, scope: Scope, body: bytes, send: Send, ident: str) -> None:
        if self.store.delete_file(ident):
            await self._json(send, 200, payloads.deleted(self.region, ident, "file"))
        else:
            await self._no_such_file(send, ident)

    async def _stored_response(self, scope: Scope, body: bytes, send: Send, ident: str) -> None:
        answer = self.store.responses.get(ident)
        if answer is None:
            await self._no_such_response(send, ident)
        else:
            await self._json(send, 200, answer)

    async def _delete_response(self, scope: Scope, body: bytes, send: Send, ident: str) -> None:
        if self.store.responses.pop(ident, None) is None:
            await self._no_such_response(send, ident)
        else:
            await self._json(send, 200, payloads.deleted(self.region, ident, "response"))

    async def _no_such_file(self, send: Send, ident: str) -> None:
        message = f"No such File object: {ident}"
        await self._error(send, 404, message, "invalid_request_error", None, param="id")

    async def _no_such_response(self, send: Send, ident: str) -> None:
        message = f"Response with id '{ident}' not found."
        await self._error(send, 404, message, "invalid_request_error", None)

    # ---- control endpoints -------------------------------------------------------------

    async def _control(self, method: str, path: str, send: Send) -> None:
        state = self.state
        if path == "/healthz" and method == "GET":
            status = 503 if state.failing else 200
            health = "failing" if state.failing else "ok"
            await self._json(send, status, {"status": health, "region": self.region})
        elif path == "/_mock/last-request" and method == "GET":
            await self._json(send, 200, self._describe_last())
        elif path == "/_mock/fail" and method == "POST":
            state.failing = True
            await self._json(send, 200, {"region": self.region, "failing": True})
        elif path == "/_mock/recover" and method == "POST":
            state.failing = False
            await self._json(send, 200, {"region": self.region, "failing": False})
        elif path == "/_mock/reset" and method == "POST":
            state.failing, state.requests, state.last = False, 0, None
            self.store.clear()
            await self._json(send, 200, {"region": self.region, "failing": False})
        else:
            await self._error(send, 404, f"no route for {method} {path}", "not_found", "no_route")

    def _describe_last(self) -> dict[str, Any]:
        described: dict[str, Any] = {"region": self.region, "requests": self.state.requests}
        if self.state.last is None:
            described["request"] = None
            return described
        scope, body = self.state.last
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        query_string = scope.get("query_string", b"").decode("latin-1")
        described["request"] = {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope.get("raw_path", b"").decode("latin-1"),
            "query": dict(parse_qsl(query_string, keep_blank_values=True)),
            "query_string": query_string,
            "headers": headers,
            "raw_headers": raw_headers,
            "json": parsed,
            "body": body.decode("utf-8", "replace"),
        }
        return described

    # ---- response writers --------------------------------------------------------------

    async def _json(self, send: Send, status: int, value: Any) -> None:
        await self._whole(send, status, b"application/json", payloads.dumps(value))

    async def _octets(self, send: Send, data: bytes) -> None:
        await self._whole(send, 200, b"application/octet-stream", data)

    async def _whole(self, send: Send, status: int, content_type: bytes, data: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(data)).encode()),
                    self._region_header,
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _stream(self, send: Send, events: list[bytes]) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    self._region_header,
                ],
            }
        )
        delay = self._chunk_delay
        for index, event in enumerate(events):
            if delay and index:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _error(self, send, status, message, type_, code, anthropic=False, param=None) -> None:
        if anthropic:
            anthropic_type = "api_error" if status >= 500 else type_
            await self._json(send, status, payloads.anthropic_error(message, anthropic_type))
        else:
            await self._json(send, status, payloads.openai_error(message, type_, code, param))


def create_app(region: str, **options: Any) -> MockUpstream:
    """An ASGI mock upstream for ``region``; ``options`` are the fields of ``MockOptions``."""
    if "models" in options:
        options["models"] = tuple(options["models"])
    return MockUpstream(region, MockOptions(**options))


def _model(body: dict, deployment: str | None) -> str:
    model = body.get("model") or deployment
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "missing_model")
    return model


def _object_path(path: str) -> tuple[str, str]:
    """``(kind, id)`` of an object API path, or ``("", "")`` for any other path. Azure
    OpenAI's own form (``/openai/files``) is the same path."""
    if path.startswith("/openai/"):
        path = "/v1/" + path[len("/openai/") :]
    if path == "/v1/files":
        return "files", ""
    for prefix, kind in _OBJECT_PREFIXES:
        if path.startswith(prefix):
            ident, slash, rest = path[len(prefix) :].partition("/")
            if ident and not slash:
                return kind, ident
            if ident and kind == "file" and rest == "content":
                return "file content", ident
    return "", ""


def _header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), "")


def _parse_json(body: bytes) -> dict:
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise _BadRequest(f"malformed JSON body: {exc}", "invalid_json") from None
    if not isinstance(parsed, dict):
        raise _BadRequest("the JSON body must be an object", "invalid_json")
    return parsed


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
