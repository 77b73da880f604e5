"""``GET /v1/models`` and ``/v1/models/{model}``: what a client may reach from where it is."""

from __future__ import annotations

import json
from typing import Any

from geopin.geo.location import Location
from geopin.policy.decision import RequestContext
from geopin.policy.engine import decide
from geopin.proxy import refusal
from geopin.proxy.refusal import ErrorResponse
from geopin.proxy.state import RuntimeState


async def send_models(
    state: RuntimeState,
    location: Location,
    operation: str,
    tenant: str | None,
    data_class: str | None,
    send: Any,
    request_id: str,
) -> ErrorResponse | None:
    """The models this client may reach from where it is: each one decided (and none
    recorded: nothing is processed; ``request_id`` names the answer in the access log)."""
    reachable = []
    for model in sorted(state.policy.models):
        decision = decide(state.policy, RequestContext(location, model, tenant, data_class))
        if decision.routed and any(
            (r := state.routes.get(e.id)) is not None and r.usable for e in decision.candidates
        ):
            reachable.append(model)
    entries = [{"id": m, "object": "model", "created": 0, "owned_by": "geopin"} for m in reachable]
    if operation == "/models":
        payload: dict[str, Any] = {"object": "list", "data": entries}
    else:
        wanted = operation[len("/models/") :]
        found = [e for e in entries if e["id"] == wanted]
        if not found:
            return refusal.not_found(f"model '{wanted}' is not available", "model_not_found")
        payload = found[0]
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (refusal.DECISION_HEADER, request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return None
