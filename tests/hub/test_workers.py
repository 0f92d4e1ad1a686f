"""The parts of ``tidings serve --workers`` that need no process: how many
workers, and when a dead one is started again (tidings.hub.workers; the
processes themselves are tests/cluster/test_workers.py's)."""

from __future__ import annotations

import os

import pytest

from tidings.hub.workers import MAX_QUICK_FAILURES, restart_delay, worker_count


def test_a_worker_that_keeps_dying_at_start_backs_off_then_the_parent_gives_up() -> (
    None
):
    assert restart_delay(0) == 0  # it had run steadily: at once
    delays = [restart_delay(n) for n in range(1, MAX_QUICK_FAILURES)]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(MAX_QUICK_FAILURES) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_zero_workers_is_one_per_core_this_process_may_use() -> None:
    assert worker_count(3) == 3
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert worker_count(0) == 1
    finally:
        os.sched_setaffinity(0, before)
