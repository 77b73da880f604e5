"""Where the objects upstreams made live, so the calls that name them find them again.

A stored response (``POST /v1/responses`` keeps one unless told not to), a file, a batch or a
stored chat completion lives at the endpoint that made it, and only there: the calls that read,
continue or delete it (``GET /v1/responses/{id}``, ``previous_response_id``,
``GET /v1/files/{id}/content``, ``POST /v1/batches/{id}/cancel``) must reach that endpoint. The
router learns an object's endpoint from the answer that made it (its ``id``: a JSON answer's, or
a stream's first event's) and pins a later call naming it, in its path or in
``previous_response_id``, to that endpoint, as ``X-Geopin-Endpoint`` does: the policy still
decides, and a call whose object lives outside the places it may now be processed in is
refused (451), never sent anywhere else.

Kept per tenant: in the process, the ``capacity`` most recently made or used objects, and, for
the other workers and routers of the same database and after a restart, in its
``object_homes`` table (``geopin.proxy.object_table``), looked in for an object the process
does not know. An object neither knows is routed as before (a call naming no model to its
tenant's home endpoint, where that tenant's files and batches are made anyway), and
``X-Geopin-Endpoint`` names the endpoint outright.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geopin.proxy.object_table import ObjectTable

# What an upstream keeps and lets a later call name (OpenAI's and Anthropic's object types).
_KEPT = frozenset(
    {
        "response",
        "file",
        "batch",
        "upload",
        "vector_store",
        "assistant",
        "thread",
        "conversation",
        "container",
        "fine_tuning.job",
        "message_batch",
    }
)
_STORED_COMPLETIONS = frozenset({"chat.completion", "chat.completion.chunk"})
_MIN_ID, _MAX_ID = 6, 256  # shorter or longer is not an id an upstream made


class ObjectHomes:
    """(tenant, object id) -> the id of the endpoint that holds it; bounded, least recently
    used first out, and backed by ``table`` when there is one."""

    def __init__(self, capacity: int = 100_000, table: ObjectTable | None = None) -> None:
        self.capacity = capacity
        self.table = table
        self._homes: OrderedDict[tuple[str, str], str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._homes)

    def learn(self, tenant: str | None, object_id: str, endpoint: str) -> None:
        """An answer from ``endpoint`` made ``object_id`` (or read it back: a stored
        response's or a file's answer names it too): here, and for the others sharing the
        table, unless this process already knew it there."""
        known = self._homes.get((tenant or "", object_id)) == endpoint
        self._keep(tenant, object_id, endpoint)
        if self.table is not None and not known:
            self.table.remember(tenant, object_id, endpoint)

    def _keep(self, tenant: str | None, object_id: str, endpoint: str) -> None:
        key = (tenant or "", object_id)
        homes = self._homes
        homes[key] = endpoint
        homes.move_to_end(key)
        while len(homes) > self.capacity:
            homes.popitem(last=False)

    def find(self, tenant: str | None, names: list[str]) -> tuple[str, str] | None:
        """The first of ``names`` this tenant's calls made, and its endpoint."""
        homes = self._homes
        who = tenant or ""
        for name in names:
            endpoint = homes.get((who, name))
            if endpoint is not None:
                homes.move_to_end((who, name))
                return name, endpoint
        return None

    async def locate(self, tenant: str | None, names: list[str]) -> tuple[str, str] | None:
        """As ``find``, and when this process knows none of ``names``, as the table has it."""
        found = self.find(tenant, names)
        if found is None and self.table is not None:
            found = await self.table.find(tenant, names)
            if found is not None:
                self._keep(tenant, *found)
        return found


def named_objects(operation: str, body: Any) -> list[str]:
    """What a call may name an object by: the path's segments after the collection that look
    like an upstream's ids (``/responses/resp_1/input_items``: ``resp_1``, ``input_items``) and,
    in its body, ``previous_response_id``."""
    names = [part for part in operation.split("/")[2:] if _looks_like_id(part)]
    if isinstance(body, dict):
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and previous:
            names.append(previous)
    return names


def made_object(answer: Any, *, stored_completion: bool) -> str | None:
    """The id of the object an answer (a parsed JSON body, or a stream's event) says was made
    and kept; chat completions only when the call asked for them to be stored."""
    if not isinstance(answer, dict):
        return None
    inner = answer.get("response")  # a Responses stream's events carry the response
    if isinstance(inner, dict) and inner.get("object") == "response":
        answer = inner
    kind, made = answer.get("object", answer.get("type")), answer.get("id")  # Anthropic: type
    if not isinstance(made, str) or "/" in made or not _looks_like_id(made):
        return None
    if kind in _KEPT or (stored_completion and kind in _STORED_COMPLETIONS):
        return made
    return None


def _looks_like_id(text: str) -> bool:
    """An upstream's object ids are prefixed (``resp_``, ``file-``, ``batch_``, ``msgbatch_``);
    a collection's name in a path (``completions``, ``content``) is not one."""
    return _MIN_ID <= len(text) <= _MAX_ID and ("_" in text or "-" in text)


def first_event(head: bytes) -> Any:
    """The first ``data:`` event of a stream's first bytes, parsed (None if it is not whole)."""
    for line in head.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                return json.loads(line[5:].strip())
            except ValueError:
                return None
    return None
