"""Work a response leaves behind: done while a request waits for its upstream, after
``max_delay_s`` at most, or at once with no event loop; a failure does not stop the rest."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from geopin.proxy.later import Later
from geopin.telemetry.accesslog import configure_logging

from .conftest import (
    Router,
    audit_records,
    chat_body,
    endpoint_yaml,
    requests_seen,
    start_router,
    write_policy,
)


def test_work_runs_in_order_when_run_is_called_and_not_before():
    done: list[int] = []

    async def main() -> None:
        later = Later(max_delay_s=10)
        for n in (1, 2, 3):
            later.add(_append, to=done, value=n)
        await asyncio.sleep(0.01)
        assert done == [] and len(later) == 3  # the timer is 10 s away
        later.run()
        assert done == [1, 2, 3] and len(later) == 0
        later.run()  # nothing twice
        assert done == [1, 2, 3]

    asyncio.run(main())


def _append(*, to: list[int], value: int) -> None:
    to.append(value)


def test_the_timer_runs_what_nobody_ran_within_max_delay():
    done: list[float] = []

    async def main() -> None:
        later = Later(max_delay_s=0.02)
        queued = time.monotonic()
        later.add(lambda: done.append(time.monotonic() - queued))
        later.add(lambda: done.append(time.monotonic() - queued))
        deadline = time.monotonic() + 5
        while len(done) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert len(done) == 2 and 0.015 <= done[0] < 2
        # A new piece of work after a run arms a new timer.
        later.add(lambda: done.append(-1.0))
        await asyncio.sleep(0.1)
        assert done[-1] == -1.0

    asyncio.run(main())


def test_run_cancels_the_timer():
    calls: list[str] = []

    async def main() -> None:
        later = Later(max_delay_s=0.02)
        later.add(lambda: calls.append("work"))
        later.run()
        await asyncio.sleep(0.06)
        assert calls == ["work"]
        assert later._timer is None

    asyncio.run(main())


def test_work_queued_by_work_runs_in_the_same_run_and_arms_no_timer():
    done: list[str] = []

    async def main() -> None:
        later = Later(max_delay_s=10)
        later.add(lambda: later.add(lambda: done.append("queued by the first")))
        later.run()
        assert done == ["queued by the first"] and len(later) == 0
        assert later._timer is None  # nothing left for a timer to run

    asyncio.run(main())


def test_run_soon_runs_the_queue_after_what_the_turn_scheduled_before():
    order: list[str] = []

    async def main() -> None:
        later = Later(max_delay_s=10)
        later.add(lambda: order.append("work"))
        asyncio.get_running_loop().call_soon(lambda: order.append("held write sent"))
        later.run_soon()
        assert order == []
        await asyncio.sleep(0)
        assert order == ["held write sent", "work"] and len(later) == 0

    asyncio.run(main())


def test_with_no_event_loop_the_work_is_done_at_once():
    done: list[int] = []
    Later().add(_append, to=done, value=7)
    assert done == [7]


def test_a_failing_piece_is_logged_and_the_rest_runs(caplog):
    done: list[int] = []

    def broken() -> None:
        raise ValueError("broken on purpose")

    async def main() -> None:
        later = Later(max_delay_s=10)
        later.add(broken)
        later.add(_append, to=done, value=2)
        with caplog.at_level(logging.ERROR, logger="geopin.proxy.later"):
            later.run()

    asyncio.run(main())
    assert done == [2]
    assert "work after a response failed: broken" in caplog.text
    assert "broken on purpose" in caplog.text


@contextmanager
def _after_a_first_answer(
    tmp_path: Path, mocks: Any, **upstream_options: Any
) -> Iterator[tuple[Router, Any, io.StringIO, str]]:
    """A router whose queue's timer is set far off, after one answer whose access line and
    outcome wait in the queue; yields the router, its upstream, the log and that answer's id."""
    upstream = mocks("eu-se", **upstream_options)
    policy = write_policy(tmp_path / "policy", [endpoint_yaml("eu-se", upstream.url + "/v1", "SE")])
    out = io.StringIO()
    configure_logging("warning", stream=out)
    router = start_router(tmp_path, policy, telemetry={"access_log_flush_s": 0})
    try:
        router.call(lambda: setattr(router.app.runtime.later, "max_delay_s", 60.0))
        first = router.post(headers=router.headers(country="SE"))
        assert first.status_code == 200
        first_id = first.headers["x-geopin-decision-id"]
        assert router.call(lambda: len(router.app.runtime.later)) == 2  # outcome, access line
        assert first_id not in out.getvalue()
        yield router, upstream, out, first_id
    finally:
        router.stop()
        configure_logging("info")


def test_a_responses_line_and_outcome_are_written_while_the_next_request_waits(tmp_path, mocks):
    """End to end over real sockets: the first answer's access line and outcome record wait
    (the timer is set far off) until the second request has gone upstream, and are written
    while it waits there; the second's are written at shutdown."""
    with _after_a_first_answer(tmp_path, mocks, latency_ms=400) as (router, _, out, first_id):
        second: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: second.append(router.post(headers=router.headers(country="SE")))
        )
        thread.start()
        deadline = time.monotonic() + 10
        while first_id not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert first_id in out.getvalue()
        assert thread.is_alive(), "written only once the second request had its answer"
        thread.join(30)
        assert second and second[0].status_code == 200
        second_id = second[0].headers["x-geopin-decision-id"]
    assert second_id in out.getvalue()  # written at shutdown
    outcomes = {r["decision_id"] for r in audit_records(tmp_path) if r["kind"] == "outcome"}
    assert outcomes == {first_id, second_id}


def test_before_a_streamed_call_the_work_waits_for_its_first_event(tmp_path, mocks):
    """End to end: a streamed call does not do what the previous answer left while it waits
    for its head (1 s here), but once its first event has gone, while the rest of the stream
    is still coming."""
    slow = {"latency_ms": 1000, "stream_chunks": 6, "chunk_delay_ms": 200}
    with _after_a_first_answer(tmp_path, mocks, **slow) as (router, upstream, out, first_id):
        first_event_at: list[float] = []
        ended: list[bytes] = []

        def stream() -> None:
            with router.stream("SE") as response:
                chunks = response.iter_raw()
                head = next(chunks)
                first_event_at.append(time.monotonic())
                ended.append(head + b"".join(chunks))

        thread = threading.Thread(target=stream)
        thread.start()
        deadline = time.monotonic() + 10
        while requests_seen(upstream) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert requests_seen(upstream) == 2  # the streamed call waits upstream now
        time.sleep(0.15)
        assert first_id not in out.getvalue(), "written while the stream waited for its head"
        while first_id not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert first_id in out.getvalue()
        assert not ended, "written only once the stream had ended"
        thread.join(30)
        assert first_event_at and ended and ended[0].rstrip().endswith(b"data: [DONE]")


def test_where_an_answers_object_lives_is_known_at_once_its_usage_later(tmp_path, mocks):
    """A streamed chat completion the call asked to store: its endpoint is learned as the answer
    ends (a call naming it may come at once); its usage and outcome record wait in the queue."""
    upstream = mocks("eu-se")
    policy = write_policy(tmp_path / "policy", [endpoint_yaml("eu-se", upstream.url + "/v1", "SE")])
    router = start_router(tmp_path, policy)
    try:
        router.call(lambda: setattr(router.app.runtime.later, "max_delay_s", 60.0))
        body = chat_body(stream=True, store=True, stream_options={"include_usage": True})
        made = router.post(headers=router.headers(country="SE"), json_body=body)
        assert made.status_code == 200
        events = [json.loads(line[5:]) for line in made.content.splitlines()
                  if line.startswith(b"data: {")]  # fmt: skip
        ident = events[0]["id"]
        assert events[-1]["usage"]["prompt_tokens"] > 0
        objects = router.app.runtime.objects
        assert router.call(lambda: objects.find("t1", [ident])) == (ident, "eu-se")
        queued = router.call(lambda: [fn.__name__ for fn, _ in router.app.runtime.later._work])
        assert "_after_answer" in queued  # its usage and outcome record, still to come
        read = httpx.get(
            f"{router.url}/v1/chat/completions/{ident}",
            headers=router.headers(country="SE"),
            timeout=30,
        )
        assert read.headers["x-geopin-endpoint"] == "eu-se"
    finally:
        router.stop()
    (outcome,) = [
        r for r in audit_records(tmp_path) if r["kind"] == "outcome" and r["status"] == 200
        and r["object"] == ident
    ]  # fmt: skip
    assert outcome["usage"]["prompt_tokens"] == events[-1]["usage"]["prompt_tokens"]
