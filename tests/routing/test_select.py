from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.routing.health import BreakerState, EndpointHealth, HealthSnapshot
from geopin.routing.select import DEFAULT_BAND, LatencyBand, OrderMemo, home, order

from .conftest import make_decision, make_endpoint, make_snapshot

_AFFINITIES = [f"tenant-{i}|198.51.100.0/24".encode() for i in range(3000)]


def _ids(endpoints) -> list[str]:
    return [e.id for e in endpoints]


def test_lower_rank_comes_first_whatever_its_latency() -> None:
    a, b, c = make_endpoint("a"), make_endpoint("b"), make_endpoint("c")
    decision = make_decision([a, b, c], ranks=[0, 0, 1])
    health = make_snapshot(a=2.0, b=3.0, c=0.001)
    assert _ids(order(decision, health, b"client"))[-1] == "c"


def test_open_breakers_are_left_out_and_nothing_else_is_added() -> None:
    a, b = make_endpoint("a"), make_endpoint("b")
    decision = make_decision([a, b], ranks=[0, 1])
    assert _ids(order(decision, make_snapshot(a="open"), b"k")) == ["b"]
    assert order(decision, make_snapshot(a="open", b="open"), b"k") == ()


def test_half_open_endpoints_stay_candidates() -> None:
    a = make_endpoint("a")
    health = HealthSnapshot({"a": EndpointHealth(state=BreakerState.HALF_OPEN, open_until=1.0)})
    assert order(make_decision([a]), health, b"k") == (a,)


def test_slow_endpoints_follow_the_band_in_latency_order() -> None:
    eps = [make_endpoint(i) for i in ("a", "b", "c", "d")]
    # best 0.100 -> band limit 0.155: a and b in band, d then c behind.
    health = make_snapshot(a=0.150, b=0.100, c=0.900, d=0.400)
    for affinity in _AFFINITIES[:50]:
        result = _ids(order(make_decision(eps), health, affinity))
        assert set(result[:2]) == {"a", "b"}
        assert result[2:] == ["d", "c"]


def test_endpoints_without_latency_data_are_in_the_band() -> None:
    eps = [make_endpoint("a"), make_endpoint("b"), make_endpoint("new")]
    health = make_snapshot(a=0.1, b=5.0)
    firsts = Counter(order(make_decision(eps), health, k)[0].id for k in _AFFINITIES[:600])
    assert firsts["new"] > 100  # new endpoints get traffic, so they get measured
    assert firsts["b"] == 0


def test_a_wider_band_shares_load_with_slower_endpoints() -> None:
    eps = [make_endpoint("a"), make_endpoint("b")]
    health = make_snapshot(a=0.1, b=0.3)
    narrow = {order(make_decision(eps), health, k)[0].id for k in _AFFINITIES[:200]}
    wide = {
        order(make_decision(eps), health, k, band=LatencyBand(factor=4.0))[0].id
        for k in _AFFINITIES[:200]
    }
    assert narrow == {"a"}
    assert wide == {"a", "b"}


def test_mismatched_ranks_are_an_error() -> None:
    with pytest.raises(ValueError, match="2 candidates but 1 candidate ranks"):
        order(
            make_decision([make_endpoint("a"), make_endpoint("b")], ranks=[0]), make_snapshot(), b""
        )


def test_weights_are_respected_across_clients() -> None:
    eps = [make_endpoint("a", weight=1), make_endpoint("b", weight=3), make_endpoint("c", weight=0)]
    firsts = Counter(order(make_decision(eps), make_snapshot(), k)[0].id for k in _AFFINITIES)
    assert firsts["c"] == 0
    assert firsts["b"] / len(_AFFINITIES) == pytest.approx(0.75, abs=0.04)


def test_only_the_clients_of_an_endpoint_that_opens_move() -> None:
    eps = [make_endpoint(i) for i in ("a", "b", "c", "d")]
    decision = make_decision(eps)
    before = {k: order(decision, make_snapshot(), k)[0].id for k in _AFFINITIES}
    after = {k: order(decision, make_snapshot(c="open"), k)[0].id for k in _AFFINITIES}
    moved = {k for k in _AFFINITIES if before[k] != after[k]}
    assert moved == {k for k in _AFFINITIES if before[k] == "c"}
    assert moved  # the sample does exercise a move


# -- properties -------------------------------------------------------------------------------

_health = st.one_of(
    st.none(),
    st.just("open"),
    st.floats(min_value=0.001, max_value=2.0),
    st.builds(
        EndpointHealth,
        state=st.just(BreakerState.HALF_OPEN),
        latency_ewma_s=st.one_of(st.none(), st.floats(min_value=0.001, max_value=2.0)),
    ),
)


@st.composite
def _scenarios(draw):
    n = draw(st.integers(min_value=0, max_value=8))
    ids = [f"ep{i}" for i in range(n)]
    eps = [make_endpoint(i, weight=draw(st.integers(min_value=0, max_value=5))) for i in ids]
    ranks = sorted(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    states = {i: draw(_health) for i in ids if draw(st.booleans())}
    # Health for endpoints outside the decision must not matter either.
    states["stranger"] = draw(_health)
    return make_decision(eps, ranks=ranks), make_snapshot(**states), draw(st.binary(max_size=24))


@settings(max_examples=300, deadline=None)
@given(_scenarios())
def test_order_is_a_subsequence_without_open_breakers_and_rank_monotone(scenario) -> None:
    decision, health, affinity = scenario
    result = order(decision, health, affinity)
    assert result == order(decision, health, affinity)  # deterministic
    rank_of = {e.id: r for e, r in zip(decision.candidates, decision.candidate_ranks, strict=True)}
    ids = [e.id for e in result]
    assert len(ids) == len(set(ids))
    assert all(any(e is c for c in decision.candidates) for e in result)
    # A subsequence as far as ranks go: never an interleaving of ranks.
    ranks = [rank_of[i] for i in ids]
    assert ranks == sorted(ranks)
    assert all(health.of(i).state is not BreakerState.OPEN for i in ids)
    # Every available candidate is still offered for failover.
    expected = {c.id for c in decision.candidates if health.of(c.id).state is not BreakerState.OPEN}
    assert set(ids) == expected


@st.composite
def _banded(draw):
    """One rank whose band holds the best endpoint and maybe others, with at least one behind."""
    best = draw(st.floats(min_value=0.001, max_value=1.0))
    limit = DEFAULT_BAND.limit(best)
    latencies = {"best": best}
    for i in range(draw(st.integers(0, 3))):
        latencies[f"in{i}"] = draw(st.one_of(st.none(), st.floats(best, limit)))
    for i in range(draw(st.integers(1, 3))):
        latencies[f"out{i}"] = draw(st.floats(limit * 1.001 + 1e-9, 10.0))
    names = draw(st.permutations(sorted(latencies)))
    eps = [make_endpoint(n, weight=draw(st.integers(1, 5))) for n in names]
    return make_decision(eps), latencies, limit


@settings(max_examples=300, deadline=None)
@given(_banded(), st.binary(max_size=24), st.data())
def test_changing_an_out_of_band_endpoint_does_not_move_a_client(banded, affinity, data) -> None:
    decision, latencies, limit = banded
    first = order(decision, make_snapshot(**latencies), affinity)[0]
    assert first.id == "best" or first.id.startswith("in")
    victim = data.draw(st.sampled_from(sorted(k for k in latencies if k.startswith("out"))))
    new = data.draw(
        st.one_of(
            st.just("open"),
            st.floats(min_value=limit * 1.001 + 1e-9, max_value=100.0),
            st.builds(
                EndpointHealth,
                state=st.just(BreakerState.HALF_OPEN),
                latency_ewma_s=st.floats(min_value=limit * 1.001 + 1e-9, max_value=100.0),
            ),
        )
    )
    changed = make_snapshot(**{**latencies, victim: new})
    assert order(decision, changed, affinity)[0] is first


@settings(max_examples=200, deadline=None)
@given(_banded(), st.binary(max_size=24), st.data())
def test_latency_moves_inside_the_band_do_not_move_a_client(banded, affinity, data) -> None:
    decision, latencies, limit = banded
    first = order(decision, make_snapshot(**latencies), affinity)[0]
    others = sorted(k for k in latencies if k.startswith("in") and latencies[k] is not None)
    if not others:
        return
    mover = data.draw(st.sampled_from(others))
    new = data.draw(st.floats(latencies["best"], limit))
    assert order(decision, make_snapshot(**{**latencies, mover: new}), affinity)[0] is first


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 2), min_size=1, max_size=6),
    st.lists(st.integers(0, 3), min_size=6, max_size=6),
    st.binary(max_size=8),
    st.randoms(use_true_random=False),
)
def test_home_is_one_best_ranked_candidate_whatever_their_order(
    ranks: list[int], weights: list[int], affinity: bytes, rnd
) -> None:
    endpoints = [make_endpoint(f"e{i}", weight=weights[i]) for i in range(len(ranks))]
    chosen = home(zip(endpoints, ranks, strict=True), affinity)
    assert chosen is not None
    assert ranks[endpoints.index(chosen)] == min(ranks)
    pairs = list(zip(endpoints, ranks, strict=True))
    rnd.shuffle(pairs)
    assert home(pairs, affinity) is chosen
    assert home([], affinity) is None


def test_home_spreads_tenants_by_weight_and_keeps_each() -> None:
    a, b = make_endpoint("a", weight=3), make_endpoint("b", weight=1)
    homes = Counter(home([(a, 0), (b, 0)], k).id for k in _AFFINITIES)
    assert 0.68 < homes["a"] / len(_AFFINITIES) < 0.82
    assert all(home([(b, 0), (a, 0)], k) is home([(a, 0), (b, 0)], k) for k in _AFFINITIES[:50])


def test_the_memo_orders_as_order_does_once_per_snapshot_decision_and_affinity() -> None:
    eps = [make_endpoint(i) for i in ("a", "b", "c")]
    decision, other = make_decision(eps), make_decision(eps[:2], ranks=[1, 0])
    health = make_snapshot(a=0.1, b=0.1, c=0.5)
    memo = OrderMemo()
    for affinity in _AFFINITIES[:40]:
        for d in (decision, other):
            assert memo.order(d, health, affinity) == order(d, health, affinity)
    first = memo.order(decision, health, b"k")
    assert memo.order(decision, health, b"k") is first  # remembered
    assert memo.order(decision, make_snapshot(a="open"), b"k") == order(
        decision, make_snapshot(a="open"), b"k"
    )  # a new snapshot: ordered afresh
    assert "a" not in _ids(memo.order(decision, make_snapshot(a="open"), b"k"))
