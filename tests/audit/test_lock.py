from __future__ import annotations

import os
import threading

import pytest

from geopin.audit.lock import FileLock, background_priority


def test_the_lock_file_admits_one_holder_at_a_time(tmp_path):
    first, second = FileLock(tmp_path / "seq.lock"), FileLock(tmp_path / "seq.lock")
    assert first.acquire(wait=False)
    assert not second.acquire(wait=False)  # at once, not after a timeout
    first.release()
    assert second.acquire(wait=False)
    second.release()
    assert first._fd is None and second._fd is None  # no descriptor kept between runs


def test_an_unusable_lock_file_leaves_the_exclusion_to_sqlite(tmp_path):
    lock = FileLock(tmp_path / "missing-directory" / "seq.lock")
    assert lock.acquire(wait=False) and lock.acquire(wait=False)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_background_priority_applies_to_the_calling_thread_only():
    seen: dict[str, int] = {}

    def background() -> None:
        background_priority()
        seen["background"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen["background"] == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # this thread is untouched
