"""Per-call cost of the policy decision; prints medians in microseconds.

    python bench/decision_bench.py [--policy DIR] [--rounds N]

*warm* is ``decide()`` for a request whose facts were seen before (a memo hit: the proxy's
usual case); *cold* is ``evaluate()``, the full computation a memo miss pays. Both run over
the same mix of requests against the shipped example policy (or DIR). Each figure is the
median of ROUNDS batches timed with ``time.perf_counter_ns``. Exits 1 when the warm median
misses its target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from geopin.geo.location import UNKNOWN, Location, LocationSource
from geopin.policy.compile import CompiledPolicy
from geopin.policy.decision import RequestContext
from geopin.policy.engine import decide, evaluate
from geopin.policy.explain import explain
from geopin.policy.loader import load_policy

SHIPPED = Path(__file__).resolve().parents[1] / "policies"
WARM_BATCH = 20_000
COLD_BATCH = 500
ROUNDS = 21
TARGET_WARM_US = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(SHIPPED), help="policy directory")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    policy = load_policy(args.policy)
    contexts = request_mix(policy)
    for ctx in contexts:  # fill the memo: every warm call below is a hit
        decide(policy, ctx)
    routed = sum(decide(policy, ctx).routed for ctx in contexts)

    cases: list[tuple[str, Callable[[RequestContext], object], int]] = [
        ("decide(), warm (memo hit)", lambda ctx: decide(policy, ctx), WARM_BATCH),
        ("evaluate(), cold (no memo)", lambda ctx: evaluate(policy, ctx), COLD_BATCH),
        ("explain(), for people", lambda ctx: explain(policy, ctx), COLD_BATCH // 5),
    ]
    print(
        f"decision benchmark: policy {args.policy} (version {policy.version}, "
        f"{len(policy.endpoints)} endpoints, {len(policy.all_rules())} rules)"
    )
    print(
        f"{len(contexts)} distinct requests ({routed} routed, {len(contexts) - routed} denied); "
        f"median of {args.rounds} rounds; python {sys.version.split()[0]}"
    )
    medians = []
    for name, call, batch in cases:
        medians.append(median_us(call, contexts, batch, args.rounds))
        print(f"{medians[-1]:9.2f} us  {name}")
    met = medians[0] <= TARGET_WARM_US
    print(f"warm target <= {TARGET_WARM_US} us: {'met' if met else 'MISSED'}")
    return 0 if met else 1


def request_mix(policy: CompiledPolicy) -> list[RequestContext]:
    """Requests from every country and subdivision the policy names, one it does not and an
    unknown location; for every model it serves and one it does not; with and without a
    tenant and a declared data class."""
    countries: set[str] = set()
    subdivisions: set[str] = set()
    for places in policy.jurisdictions.values():
        countries |= places.countries
        subdivisions |= places.subdivisions
    for rule in policy.all_rules():
        if rule.from_places is not None:
            countries |= rule.from_places.countries
            subdivisions |= rule.from_places.subdivisions
    locations = [Location(c, source=LocationSource.MMDB) for c in sorted(countries | {"BR"})]
    locations += [Location(s[:2], s, LocationSource.MMDB) for s in sorted(subdivisions)]
    locations.append(UNKNOWN)
    models = sorted(policy.models) + ["no-such-model"]
    tenants = [None, *sorted(policy.tenants)]
    classes = [None, *sorted(policy.data_classes)[:1]]
    return [
        RequestContext(location=loc, model=model, tenant=tenant, data_class=data_class)
        for loc in locations
        for model in models
        for tenant in tenants
        for data_class in classes
    ]


def median_us(
    call: Callable[[RequestContext], object],
    contexts: list[RequestContext],
    batch: int,
    rounds: int,
) -> float:
    # Cycle through the whole mix so no single request's cache line flatters the figure.
    sequence = [contexts[(i * 7919) % len(contexts)] for i in range(batch)]
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for ctx in sequence:
            call(ctx)
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    return statistics.median(samples)


if __name__ == "__main__":
    raise SystemExit(main())
