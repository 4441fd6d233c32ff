"""The pool's target from the recent arrival rate (pure arithmetic, no kernels)."""

from __future__ import annotations

import pytest

from noteburst.jupyter.demand import DEMAND_WINDOW_SECONDS, SMOOTHING, Demand


def test_demand_is_the_rate_of_recent_takes_times_how_long_each_occupies_a_kernel() -> (
    None
):
    demand = Demand()
    assert demand.target(1, 4, now=0.0) == 1
    demand.record_start(0.3)
    demand.record_held(0.1)
    demand.record_take(10.0)
    assert demand.rate(10.0) == 0  # one take says nothing of a rate
    for moment in (10.2, 10.4, 10.6):
        demand.record_take(moment)
    assert demand.rate(10.6) == pytest.approx(5.0)
    # 5 a second, each holding its kernel 0.1 s and its replacement
    # starting 0.3 s: 2 kernels in use or starting, plus the 1 kept ready.
    assert demand.target(1, 4, now=10.6) == 3
    assert demand.target(1, 2, now=10.6) == 2  # the limit
    assert demand.target(1, 1, now=10.6) == 1  # a fixed pool
    assert demand.target(2, 4, now=10.6) == 4
    # Takes older than the window no longer count.
    assert demand.target(1, 4, now=10.6 + DEMAND_WINDOW_SECONDS + 1) == 1
    # Durations are moving averages.
    demand.record_start(0.6)
    assert demand.start_seconds == pytest.approx(0.3 + SMOOTHING * 0.3)


def test_a_burst_after_a_pause_is_seen_from_its_third_request() -> None:
    demand = Demand()
    demand.record_start(0.1)
    demand.record_held(0.3)
    demand.record_take(0.0)  # the last request before a pause
    demand.record_take(8.0)
    demand.record_take(8.1)
    assert demand.rate(8.1) < 1  # the pause still weighs half
    demand.record_take(8.2)
    # The pause is one interval of three: the median is the burst's.
    assert demand.rate(8.2) == pytest.approx(10.0)
    assert demand.target(1, 8, now=8.2) == 5  # 1 ready + 10/s x 0.4 s


def test_the_rate_follows_the_last_intervals_only() -> None:
    demand = Demand()
    for moment in (0.0, 1.0, 2.0, 3.0, 4.0):
        demand.record_take(moment)
    assert demand.rate(4.0) == pytest.approx(1.0)
    for moment in (4.1, 4.2, 4.3):
        demand.record_take(moment)
    assert demand.rate(4.3) == pytest.approx(10.0)
    # Takes at once (a burst of requests): the rate is bounded, not infinite.
    for _ in range(5):
        demand.record_take(5.0)
    assert demand.rate(5.0) == pytest.approx(1000.0)
