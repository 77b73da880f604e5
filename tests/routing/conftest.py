"""Factories for routing tests: endpoints, decisions and health snapshots with overrides."""

from __future__ import annotations

from typing import Any

from geopin.policy.decision import Action, Decision, Endpoint, ProviderKind, Tier
from geopin.routing.health import BreakerState, EndpointHealth, HealthSnapshot


def make_endpoint(id: str = "eu-se", **overrides: Any) -> Endpoint:
    fields: dict[str, Any] = {
        "id": id,
        "url": f"http://127.0.0.1:9/{id}/v1",
        "kind": ProviderKind.OPENAI,
        "country": "SE",
        "tier": Tier.REGIONAL,
        "models": {"gpt-4o": "gpt-4o"},
    }
    fields.update(overrides)
    return Endpoint(**fields)


def make_decision(
    candidates: tuple[Endpoint, ...] | list[Endpoint] = (),
    ranks: tuple[int, ...] | list[int] | None = None,
    **overrides: Any,
) -> Decision:
    candidates = tuple(candidates)
    fields: dict[str, Any] = {
        "action": Action.ROUTE,
        "policy_version": "test",
        "permitted": ("*",),
        "candidates": candidates,
        "candidate_ranks": tuple(ranks) if ranks is not None else (0,) * len(candidates),
        "matched": (),
        "reason": "test",
    }
    fields.update(overrides)
    return Decision(**fields)


def make_health(**overrides: Any) -> EndpointHealth:
    return EndpointHealth(**overrides)


def make_snapshot(**by_id: EndpointHealth | float | str | None) -> HealthSnapshot:
    """``make_snapshot(a=0.1, b="open", c=None)``: a latency, an open breaker, or no data."""
    entries = {}
    for endpoint_id, value in by_id.items():
        if isinstance(value, EndpointHealth):
            entries[endpoint_id] = value
        elif value == "open":
            entries[endpoint_id] = EndpointHealth(state=BreakerState.OPEN, open_until=1e9)
        elif value is None:
            entries[endpoint_id] = EndpointHealth()
        else:
            entries[endpoint_id] = EndpointHealth(latency_ewma_s=float(value))
    return HealthSnapshot(entries, at=0.0)
