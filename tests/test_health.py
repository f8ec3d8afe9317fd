"""The circuit breaker on a virtual clock: every transition of its state machine."""

from __future__ import annotations

import pytest

from inferplane.health import BreakerSettings, CircuitBreaker
from inferplane.placement.signals import CircuitState

S = BreakerSettings(consecutive_failures=3, error_rate_to_open=0.5, min_samples=6, window_s=10.0,
                    open_cooldown_s=2.0, max_cooldown_s=5.0, probe_successes=2)


def breaker() -> CircuitBreaker:
    return CircuitBreaker(S)


def test_consecutive_failures_open_it_and_success_resets_the_count():
    b = breaker()
    b.record(False, 0.0), b.record(False, 0.1), b.record(True, 0.2), b.record(False, 0.3), b.record(False, 0.4)
    assert b.state(0.5) is CircuitState.CLOSED
    b.record(False, 0.5)
    assert b.state(0.5) is CircuitState.OPEN
    assert b.reason == "3 consecutive failures"


def test_error_rate_over_the_window_opens_it():
    b = breaker()
    for i, ok in enumerate([True, False, True, False, True, False]):  # 3/6 = 0.5, never 3 in a row
        b.record(ok, i * 0.1)
    assert b.state(0.6) is CircuitState.OPEN
    assert b.reason.startswith("error rate 3/6")


def test_old_outcomes_leave_the_window():
    b = breaker()
    for i, ok in enumerate([False, True, False, True, False]):
        b.record(ok, i * 0.1)
    b.record(True, 20.0)  # the failures above are older than the 10 s window now
    assert b.state(20.0) is CircuitState.CLOSED


def test_cooldown_then_half_open_then_closed_after_probes():
    b = breaker()
    for t in (0.0, 0.1, 0.2):
        b.record(False, t)
    assert b.state(2.1) is CircuitState.OPEN          # cool-down 2 s from 0.2
    assert b.state(2.2) is CircuitState.HALF_OPEN
    b.record(True, 2.3)
    assert b.state(2.3) is CircuitState.HALF_OPEN     # one probe is not enough
    b.record(True, 2.4)
    assert b.state(2.4) is CircuitState.CLOSED and b.reason is None


def test_a_failed_probe_reopens_with_a_doubled_cooldown_capped():
    b = breaker()
    for t in (0.0, 0.1, 0.2):
        b.record(False, t)
    assert b.state(2.2) is CircuitState.HALF_OPEN
    b.record(False, 2.2)
    assert b.state(6.1) is CircuitState.OPEN           # 4 s now
    assert b.state(6.2) is CircuitState.HALF_OPEN
    b.record(False, 6.2)
    assert b.state(11.1) is CircuitState.OPEN          # 8 s, capped at 5 s
    assert b.state(11.2) is CircuitState.HALF_OPEN


def test_retry_after_holds_a_healthy_substrate_until_then_and_never_shortens():
    b = breaker()
    b.retry_after(30.0, now_s=10.0)
    assert b.state(29.9) is CircuitState.OPEN and b.reason.startswith("Retry-After")
    b.retry_after(20.0, now_s=11.0)                    # an earlier time does not shorten it
    assert b.state(29.9) is CircuitState.OPEN
    assert b.state(30.0) is CircuitState.CLOSED and b.reason is None  # back-pressure, not ill health: no probing
    b.retry_after(5.0, now_s=31.0)                     # already past: ignored
    assert b.state(31.0) is CircuitState.CLOSED


def test_a_failure_while_held_makes_the_way_back_a_probe():
    b = breaker()
    b.retry_after(5.0, now_s=0.0)
    for i in range(5):                                 # failures of requests sent before the hold
        b.record(False, 0.1 + 0.01 * i)
    assert b.state(5.0) is CircuitState.HALF_OPEN


@pytest.mark.parametrize("probe_ok", [True, False])
def test_a_retry_after_while_open_for_failures_still_ends_in_a_probe(probe_ok):
    b = breaker()
    for i in range(5):
        b.record(False, 0.1 * i)
    b.retry_after(9.0, now_s=0.5)                      # keeps it open longer than its cool-down
    assert b.state(8.9) is CircuitState.OPEN and b.state(9.0) is CircuitState.HALF_OPEN
    b.record(probe_ok, 9.5)
    b.record(probe_ok, 9.6) if probe_ok else None
    assert b.state(9.7) is (CircuitState.CLOSED if probe_ok else CircuitState.OPEN)
