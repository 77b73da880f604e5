"""Ordering a decision's candidates into the order the proxy tries them (its failover order).

``order(decision, health, affinity)`` only ever reorders and drops: its result is a
subsequence of ``decision.candidates``, so a request is never routed outside the set the policy
permitted, however many endpoints fail. When nothing is left the proxy answers 503.

The order, from the most significant criterion to the least:

1. **Tier preference, locality and priority**: the rank the policy gave each candidate
   (``decision.candidate_ranks``). A lower rank is always tried before a higher one, whatever
   their health.
2. **Health**: endpoints whose circuit breaker is open are left out entirely; closed and
   half-open ones stay.
3. **Latency band**: within a rank, the endpoints whose average latency is within
   ``factor`` x the best average of that rank + ``slack_s`` (1.5 x best + 5 ms by default),
   and those with no latency measured yet, form the band. The band comes first; the rest of
   the rank follows in increasing latency.
4. **Weight via rendezvous hash**: the band is ordered by weighted rendezvous (highest random
   weight) hashing of the client's ``affinity`` key with each endpoint id, so a client keeps
   to the same endpoint while the band holds it, endpoints are chosen in proportion to their
   ``weight`` across clients, and an endpoint leaving the band moves only its own clients.

``home(ranked, affinity)`` is the one endpoint for a call that names no model: the
best rank's highest rendezvous score, health and latency aside (its objects live there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import blake2b

from geopin.policy.decision import Decision, Endpoint
from geopin.routing.health import BreakerState, HealthSnapshot


@dataclass(frozen=True, slots=True)
class LatencyBand:
    """How far behind the best endpoint of a rank another may be and still share its load."""

    factor: float = 1.5
    slack_s: float = 0.005

    def limit(self, best_s: float) -> float:
        return best_s * self.factor + self.slack_s


DEFAULT_BAND = LatencyBand()


def order(
    decision: Decision,
    health: HealthSnapshot,
    affinity: bytes,
    *,
    band: LatencyBand = DEFAULT_BAND,
) -> tuple[Endpoint, ...]:
    """The candidates to try, in order; open breakers left out. Pure and deterministic.

    A half-open endpoint stays in the order; the proxy asks ``HealthBoard.acquire`` before each
    attempt and skips the endpoints it refuses (their trial slots are taken).
    """
    candidates = decision.candidates
    ranks = decision.candidate_ranks
    if len(ranks) != len(candidates):
        raise ValueError(
            f"decision has {len(candidates)} candidates but {len(ranks)} candidate ranks"
        )
    groups: dict[int, list[Endpoint]] = {}
    for endpoint, rank in zip(candidates, ranks, strict=True):
        groups.setdefault(rank, []).append(endpoint)
    result: list[Endpoint] = []
    for rank in sorted(groups):
        result.extend(_order_rank(groups[rank], health, affinity, band))
    return tuple(result)


class OrderMemo:
    """``order``'s results for one health snapshot: the requests with the same decision (the
    policy engine's memoised object) and affinity between two snapshots are ordered once.
    Sound because ``order`` is pure in its arguments and both are immutable."""

    def __init__(self) -> None:
        self._health: HealthSnapshot | None = None
        self._orders: dict[tuple[int, bytes], tuple[Decision, tuple[Endpoint, ...]]] = {}

    def order(
        self, decision: Decision, health: HealthSnapshot, affinity: bytes
    ) -> tuple[Endpoint, ...]:
        if health is not self._health:
            self._health, self._orders = health, {}
        key = (id(decision), affinity)
        found = self._orders.get(key)
        if found is not None and found[0] is decision:  # held here: its id is not reused
            return found[1]
        ordered = order(decision, health, affinity)
        self._orders[key] = (decision, ordered)
        return ordered


def home(ranked: Iterable[tuple[Endpoint, int]], affinity: bytes) -> Endpoint | None:
    """The one endpoint for calls that name no model (uploads, batches, stored responses):
    of the (endpoint, rank) pairs of the best rank, the highest weighted rendezvous score for
    ``affinity``. Health and latency play no part, so the objects such calls create and read
    stay at one endpoint while the candidates hold; a subsequence of one, like ``order``'s."""
    pairs = list(ranked)
    best = min((rank for _, rank in pairs), default=None)
    group = [e for e, rank in pairs if rank == best]
    return max(group, key=lambda e: _rendezvous_score(affinity, e), default=None)


def _order_rank(
    group: list[Endpoint], health: HealthSnapshot, affinity: bytes, band: LatencyBand
) -> list[Endpoint]:
    latencies: dict[str, float | None] = {}
    available = []
    for endpoint in group:
        h = health.of(endpoint.id)
        if h.state is not BreakerState.OPEN:
            available.append(endpoint)
            latencies[endpoint.id] = h.latency_ewma_s
    if len(available) <= 1:
        return available
    measured = [lat for lat in latencies.values() if lat is not None]
    limit = band.limit(min(measured)) if measured else math.inf
    in_band = []
    behind = []
    for endpoint in available:
        latency = latencies[endpoint.id]
        if latency is None or latency <= limit:
            in_band.append(endpoint)
        else:
            behind.append(endpoint)
    in_band.sort(key=lambda e: _rendezvous_score(affinity, e), reverse=True)
    # Python's sort is stable: equal latencies keep the policy's order.
    behind.sort(key=lambda e: latencies[e.id] or 0.0)
    return in_band + behind


def _rendezvous_score(affinity: bytes, endpoint: Endpoint) -> tuple[float, str]:
    """Weighted rendezvous score: -weight / ln(u), u uniform in (0, 1) from a hash.

    The endpoint with the highest score wins with probability weight / total weight. The id
    breaks the (practically impossible) ties so the order never depends on the input order.
    """
    if endpoint.weight <= 0:
        return (0.0, endpoint.id)  # never preferred, still a failover target
    ident = endpoint.id.encode()
    digest = blake2b(len(ident).to_bytes(4, "big") + ident + affinity, digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
    return (-endpoint.weight / math.log(u), endpoint.id)
