from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.errors import ConfigError
from geopin.routing.health import (
    HEALTHY,
    BreakerConfig,
    BreakerState,
    HealthBoard,
    HealthSnapshot,
)


def _fail(board: HealthBoard, endpoint_id: str, times: int, now: float) -> None:
    for _ in range(times):
        board.observe_failure(endpoint_id, "connect error", now)


def test_unknown_endpoints_are_healthy() -> None:
    board = HealthBoard()
    snap = board.snapshot(0.0)
    assert "x" not in snap
    assert snap.of("x") == HEALTHY
    assert snap.of("x").state is BreakerState.CLOSED
    assert snap.of("x").latency_ewma_s is None
    assert board.acquire("x", 0.0)


def test_latency_is_an_exponentially_weighted_average() -> None:
    board = HealthBoard(BreakerConfig(ewma_alpha=0.5))
    board.observe_success("a", 0.100, 1.0)
    assert board.snapshot(1.0).of("a").latency_ewma_s == pytest.approx(0.100)
    board.observe_success("a", 0.200, 2.0)
    assert board.snapshot(2.0).of("a").latency_ewma_s == pytest.approx(0.150)
    board.observe_success("a", 0.050, 3.0)
    assert board.snapshot(3.0).of("a").latency_ewma_s == pytest.approx(0.100)
    assert board.snapshot(3.0)["a"].successes == 3


def test_consecutive_failures_open_the_breaker() -> None:
    board = HealthBoard(BreakerConfig(failure_threshold=3, cooldown_s=5.0))
    _fail(board, "a", 2, 10.0)
    h = board.snapshot(10.0).of("a")
    assert h.state is BreakerState.CLOSED
    assert h.consecutive_failures == 2
    board.observe_success("a", 0.1, 10.5)  # a success resets the streak
    _fail(board, "a", 2, 11.0)
    assert board.snapshot(11.0).of("a").state is BreakerState.CLOSED
    board.observe_failure("a", "HTTP 502", 11.0)
    h = board.snapshot(11.0).of("a")
    assert h.state is BreakerState.OPEN
    assert h.open_until == pytest.approx(16.0)
    assert h.last_error == "HTTP 502"
    assert h.failures == 5
    assert not board.acquire("a", 15.9)


def test_half_open_lets_a_bounded_number_of_trials_through() -> None:
    board = HealthBoard(BreakerConfig(failure_threshold=1, cooldown_s=2.0, half_open_trials=2))
    board.observe_failure("a", "timeout", 0.0)
    assert board.snapshot(1.9).of("a").state is BreakerState.OPEN
    assert board.snapshot(2.0).of("a").state is BreakerState.HALF_OPEN
    assert board.acquire("a", 2.0)
    assert board.acquire("a", 2.1)
    assert not board.acquire("a", 2.2)
    assert board.snapshot(2.2).of("a").state is BreakerState.HALF_OPEN
    board.observe_success("a", 0.3, 2.5)
    h = board.snapshot(2.5).of("a")
    assert h.state is BreakerState.CLOSED
    assert h.open_until is None
    assert board.acquire("a", 2.5)


def test_unreported_trials_free_their_slot_after_a_timeout() -> None:
    board = HealthBoard(BreakerConfig(failure_threshold=1, cooldown_s=1.0, trial_timeout_s=10.0))
    board.observe_failure("a", "timeout", 0.0)
    assert board.acquire("a", 1.0)
    assert not board.acquire("a", 10.9)
    assert board.acquire("a", 11.0)


def test_cooldown_backs_off_exponentially_with_a_cap() -> None:
    cfg = BreakerConfig(failure_threshold=1, cooldown_s=1.0, max_cooldown_s=5.0)
    board = HealthBoard(cfg)
    now = 0.0
    board.observe_failure("a", "down", now)
    cooldowns = []
    for _ in range(5):
        open_until = board.snapshot(now).of("a").open_until
        assert open_until is not None
        cooldowns.append(open_until - now)
        now = open_until
        assert board.acquire("a", now)  # the trial...
        board.observe_failure("a", "still down", now)  # ...fails: open again, longer
    assert cooldowns == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])


def test_backoff_starts_over_after_a_calm_period() -> None:
    board = HealthBoard(BreakerConfig(failure_threshold=1, cooldown_s=1.0, max_cooldown_s=8.0))
    board.observe_failure("a", "down", 0.0)
    board.observe_failure("a", "down", 1.0)  # half-open trial fails: 2 s
    board.observe_success("a", 0.1, 3.0)  # closes
    board.observe_failure("a", "down", 4.0)  # soon after: still the same incident, 4 s
    assert board.snapshot(4.0).of("a").open_until == pytest.approx(8.0)
    board.observe_success("a", 0.1, 8.0)
    board.observe_failure("a", "down", 16.0)  # closed for max_cooldown_s: a new incident
    assert board.snapshot(16.0).of("a").open_until == pytest.approx(17.0)


def test_failure_rate_over_the_window_opens_the_breaker() -> None:
    cfg = BreakerConfig(failure_threshold=5, window_s=10.0, min_requests=10, failure_rate=0.5)
    board = HealthBoard(cfg)
    now = 0.0
    # Alternating outcomes never reach 5 consecutive failures...
    for _ in range(4):
        board.observe_success("a", 0.1, now)
        now += 0.1
        board.observe_failure("a", "HTTP 500", now)
        now += 0.1
    assert board.snapshot(now).of("a").state is BreakerState.CLOSED
    board.observe_success("a", 0.1, now)
    board.observe_failure("a", "HTTP 500", now)  # 10 outcomes, 50 % failed
    assert board.snapshot(now).of("a").state is BreakerState.OPEN


def test_failure_rate_forgets_outcomes_older_than_the_window() -> None:
    cfg = BreakerConfig(failure_threshold=100, window_s=10.0, min_requests=10, failure_rate=0.5)
    board = HealthBoard(cfg)
    for i in range(9):
        board.observe_failure("a", "HTTP 500", i * 0.1)
    for i in range(10):  # long after: the old failures are out of the window
        board.observe_success("a", 0.1, 30.0 + i * 0.1)
    board.observe_failure("a", "HTTP 500", 31.5)
    assert board.snapshot(31.5).of("a").state is BreakerState.CLOSED


def test_probes_close_a_half_open_breaker_and_reopen_it() -> None:
    board = HealthBoard(BreakerConfig(failure_threshold=2, cooldown_s=3.0))
    board.observe_probe("a", False, None, 0.0, "connect error")
    board.observe_probe("a", False, None, 1.0, "connect error")
    assert board.snapshot(1.0).of("a").state is BreakerState.OPEN
    board.observe_probe("a", True, 0.01, 2.0)  # during the cool-down: stays open
    assert board.snapshot(2.0).of("a").state is BreakerState.OPEN
    board.observe_probe("a", False, None, 4.0, "timeout")  # half-open probe fails: reopens
    h = board.snapshot(4.0).of("a")
    assert h.state is BreakerState.OPEN
    assert h.open_until == pytest.approx(10.0)
    board.observe_probe("a", True, 0.02, 10.0)
    h = board.snapshot(10.0).of("a")
    assert h.state is BreakerState.CLOSED
    assert h.last_probe_ok is True
    assert h.probe_latency_s == pytest.approx(0.02)
    assert h.latency_ewma_s is None  # probes do not count as request latency


def test_snapshot_is_immutable_and_not_affected_by_later_observations() -> None:
    board = HealthBoard()
    board.observe_success("a", 0.1, 0.0)
    snap = board.snapshot(0.0)
    board.observe_failure("a", "x", 1.0)
    assert snap["a"].failures == 0
    assert board.snapshot(1.0)["a"].failures == 1
    with pytest.raises(TypeError):
        snap._entries["b"] = HEALTHY  # type: ignore[index]


def test_snapshot_is_cached_until_something_changes() -> None:
    board = HealthBoard(BreakerConfig(failure_threshold=1, cooldown_s=5.0))
    board.observe_failure("a", "x", 0.0)
    first = board.snapshot(1.0)
    assert board.snapshot(2.0) is first
    assert board.snapshot(5.0) is not first  # the breaker turns half-open at 5.0
    assert board.snapshot(5.0).of("a").state is BreakerState.HALF_OPEN
    board.observe_success("b", 0.1, 6.0)
    assert "b" in board.snapshot(6.0)


def test_a_snapshot_may_lag_successes_by_max_age_s_but_never_a_breaker_change() -> None:
    """What the router routes with: latency averages and counters moved by successes may be
    up to ``max_age_s`` old; failures and breaker changes are in the next snapshot at once."""
    board = HealthBoard(BreakerConfig(failure_threshold=2, cooldown_s=5.0, ewma_alpha=0.5))
    board.observe_success("a", 0.100, 1.0)
    first = board.snapshot(1.0, max_age_s=0.05)
    board.observe_success("a", 0.300, 1.01)
    assert board.snapshot(1.02, max_age_s=0.05) is first  # 20 ms old: it will do
    later = board.snapshot(1.06, max_age_s=0.05)  # 60 ms old: built again
    assert later is not first and later.of("a").latency_ewma_s == pytest.approx(0.200)
    assert later.of("a").successes == 2
    board.observe_success("a", 0.100, 1.07)
    assert board.snapshot(1.07).of("a").successes == 3  # max_age_s 0: always exact

    board.observe_failure("a", "HTTP 502", 1.08)
    assert board.snapshot(1.08, max_age_s=10).of("a").consecutive_failures == 1
    board.observe_failure("a", "HTTP 502", 1.09)
    opened = board.snapshot(1.09, max_age_s=10)
    assert opened.of("a").state is BreakerState.OPEN
    assert board.snapshot(6.09, max_age_s=10).of("a").state is BreakerState.HALF_OPEN
    assert board.acquire("a", 6.1)
    assert board.snapshot(6.1, max_age_s=10).of("a").state is BreakerState.HALF_OPEN
    board.observe_success("a", 0.1, 6.1)  # the trial closes the breaker: seen at once
    assert board.snapshot(6.1, max_age_s=10).of("a").state is BreakerState.CLOSED


def test_forget_drops_endpoints_outside_the_catalogue() -> None:
    board = HealthBoard()
    for endpoint_id in ("a", "b", "c"):
        board.observe_success(endpoint_id, 0.1, 0.0)
    board.snapshot(0.0)
    board.forget(["b", "z"])
    assert set(board.snapshot(0.0)) == {"b"}


def test_invalid_config_names_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        BreakerConfig(failure_threshold=0, ewma_alpha=0.0, max_cooldown_s=1.0, cooldown_s=2.0)
    message = str(err.value)
    assert "failure_threshold" in message
    assert "ewma_alpha" in message
    assert "max_cooldown_s" in message


_events = st.lists(
    st.tuples(
        st.sampled_from(["success", "failure", "probe_ok", "probe_fail", "acquire"]),
        st.sampled_from(["a", "b"]),
        st.floats(min_value=0.0, max_value=3.0),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(_events)
def test_board_invariants_under_random_events(events) -> None:
    cfg = BreakerConfig(failure_threshold=3, cooldown_s=1.0, max_cooldown_s=4.0)
    board = HealthBoard(cfg)
    now = 0.0
    for kind, endpoint_id, step in events:
        now += step
        before = board.snapshot(now).of(endpoint_id)
        if kind == "success":
            board.observe_success(endpoint_id, 0.1, now)
        elif kind == "failure":
            board.observe_failure(endpoint_id, "x", now)
        elif kind == "probe_ok":
            board.observe_probe(endpoint_id, True, 0.01, now)
        elif kind == "probe_fail":
            board.observe_probe(endpoint_id, False, None, now, "x")
        else:
            granted = board.acquire(endpoint_id, now)
            # An open breaker inside its cool-down never lets a request through.
            if before.state is BreakerState.OPEN:
                assert not granted
            if before.state is BreakerState.CLOSED:
                assert granted
        snap = board.snapshot(now)
        assert isinstance(snap, HealthSnapshot)
        for h in snap.values():
            if h.state is BreakerState.OPEN:
                assert h.open_until is not None and h.open_until > now
                assert h.open_until - now <= cfg.max_cooldown_s + 1e-9
            if h.state is BreakerState.CLOSED:
                assert h.open_until is None
            assert h.consecutive_failures <= h.failures
