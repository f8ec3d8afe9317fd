"""The plane's autoscaling rule (``plane.autoscale``) on hand-made demand series."""

from __future__ import annotations

import pytest

from inferplane.plane.autoscale import AutoscaleSettings, DemandSample, ScalerState, step, wanted_replicas

S = AutoscaleSettings(min_replicas=1, max_replicas=3, target_per_replica=4.0, upscale_delay_s=0.0,
                      downscale_delay_s=10.0, manual_hold_s=30.0)


def run(series, settings=S, serve_target=1, state=None):
    """Feed ``(at_s, running, held, admitted, overflowed)`` samples; Serve follows every change at
    once. Returns the target after each sample and the last decision."""
    state = state or ScalerState()
    targets, decision = [], None
    for at, running, held, admitted, overflowed in series:
        state, decision = step(state, DemandSample(at, running, held, admitted, overflowed), serve_target, settings)
        if decision.changed:
            serve_target = decision.target
        targets.append(decision.target)
    return targets, decision, state


def test_the_demand_counts_running_held_and_overflow_by_littles_law():
    assert DemandSample(0, running=4, held=2).demand == 6
    # 4 running, 4 admitted and 8 spilled in the interval: the spilled would have run 8 at once.
    assert DemandSample(0, running=4, admitted=4, overflowed=8).demand == 12
    # nothing admitted (no replica live): each refused request counts once
    assert DemandSample(0, running=0, admitted=0, overflowed=3).demand == 3


@pytest.mark.parametrize(("demand", "wanted"), [(0, 1), (4, 1), (4.5, 2), (8, 2), (12, 3), (40, 3)])
def test_wanted_is_demand_over_per_replica_target_within_bounds(demand, wanted):
    assert wanted_replicas(demand, S) == wanted


def test_scale_to_zero_only_with_min_zero_and_no_demand():
    zero = AutoscaleSettings(0, 2, 4.0)
    assert wanted_replicas(0, zero) == 0
    assert wanted_replicas(0.5, zero) == 1


def test_the_first_sample_adopts_serves_count_and_asks_nothing():
    state, d = step(ScalerState(), DemandSample(0, running=0), None, S)
    assert d.target is None and not d.changed
    state, d = step(state, DemandSample(1, running=0), 2, S)
    assert d.target == 2 and not d.changed  # a restarted actor does not scale a substrate down at once


def test_a_burst_over_capacity_scales_up_at_once_capped_at_max():
    # 4 running on one replica of 4; 12 spilled per interval while 4 admitted: demand 16 -> 4, capped at 3
    targets, d, _ = run([(0, 2, 0, 2, 0), (1, 4, 0, 4, 12)])
    assert targets == [1, 3]
    assert d.changed and "up 1 -> 3" in d.reason


def test_upscale_waits_its_delay_and_takes_the_most_wanted_meanwhile():
    slow = AutoscaleSettings(1, 3, 4.0, upscale_delay_s=2.0, downscale_delay_s=10.0)
    targets, _, _ = run([(0, 6, 0, 0, 0), (1, 12, 0, 0, 0), (2, 6, 0, 0, 0)], settings=slow)
    assert targets == [1, 1, 3]  # wanted 2, 3, 2: after 2 s the peak, 3
    # a blip shorter than the delay scales nothing
    targets, _, _ = run([(0, 12, 0, 0, 0), (1, 2, 0, 0, 0), (2, 12, 0, 0, 0)], settings=slow)
    assert targets == [1, 1, 1]


def test_scale_down_only_after_a_quiet_period_and_never_below_min():
    burst = [(t, 12, 0, 0, 0) for t in range(3)]
    quiet = [(3 + t, 0, 0, 0, 0) for t in range(15)]
    targets, _, _ = run(burst + quiet, serve_target=1)
    assert targets[:3] == [3, 3, 3]
    # quiet from t=3: still 3 until t=13 (10 s later), then min 1, never 0
    assert targets[3:13] == [3] * 10 and targets[13:] == [1] * 5


def test_demand_during_the_quiet_period_restarts_it():
    series = [(0, 12, 0, 0, 0)] + [(t, 0, 0, 0, 0) for t in range(1, 9)] + [(9, 12, 0, 0, 0)] + \
        [(t, 0, 0, 0, 0) for t in range(10, 22)]
    targets, _, _ = run(series)
    assert 1 not in targets[:20]  # t=9's burst reset the clock: not down before t=20
    assert targets[-1] == 1


def test_scale_down_goes_to_the_most_wanted_during_the_quiet_period():
    # from 3, demand wanting 2 at one point of the quiet period, 1 otherwise: down to 2 first
    series = [(0, 12, 0, 0, 0), (1, 6, 0, 0, 0)] + [(t, 0, 0, 0, 0) for t in range(2, 24)]
    targets, _, _ = run(series)
    assert targets[11] == 2 and targets[-1] == 1  # 10 s after t=1: 2; 10 s later: 1


def test_held_requests_alone_scale_up():
    targets, _, _ = run([(0, 4, 5, 0, 0)])
    assert targets == [3]  # 4 running + 5 waiting = 9 over 4 per replica


def test_a_manual_scale_is_respected_for_the_hold_period():
    state = ScalerState(target=1)
    # someone scales to 3 from the dashboard; no demand at all
    state, d = step(state, DemandSample(0, running=0), 3, S)
    assert d.target == 3 and not d.changed and "someone else" in d.reason
    for t in range(1, 30):
        state, d = step(state, DemandSample(t, running=0), 3, S)
        assert d.target == 3 and not d.changed  # left alone for manual_hold_s (30 s)
    # then the rule resumes: a quiet period (10 s) later it scales down to min
    for t in range(30, 41):
        state, d = step(state, DemandSample(t, running=0), 3, S)
    assert d.changed and d.target == 1


def test_a_manual_scale_down_under_load_is_not_undone_during_the_hold():
    state = ScalerState(target=3)
    state, d = step(state, DemandSample(0, running=12), 1, S)
    state, d = step(state, DemandSample(5, running=12), 1, S)
    assert d.target == 1 and not d.changed and d.wanted == 3
    state, d = step(state, DemandSample(31, running=12), 1, S)
    assert d.changed and d.target == 3


def test_each_decision_says_its_mode():
    slow = AutoscaleSettings(1, 3, 4.0, upscale_delay_s=2.0, downscale_delay_s=2.0)
    state, d = step(ScalerState(), DemandSample(0, running=0), None, slow)
    modes = [d.mode]
    for at, running, serve in [(1, 0, 1), (2, 12, 1), (4, 12, 1), (5, 0, 3), (7, 0, 3), (8, 0, 2)]:
        state, d = step(state, DemandSample(at, running=running), serve, slow)
        modes.append(d.mode)
    assert modes == ["waiting", "steady", "up_pending", "up", "down_pending", "down", "manual_hold"]


def test_status_shows_the_autoscalers_target_and_why():
    from inferplane.cli.status import render
    from tests.test_capacity import NOW, authority, built_fleet

    status = authority(built_fleet()).status(NOW)
    status["substrates"][0]["autoscaler"] = {"target": 3, "wanted": 3, "demand": 13.5, "min": 1, "max": 3,
                                             "reason": "up 1 -> 3: demand 13.5 over 4 per replica"}
    status["substrates"][0]["replica_start_s"] = {"last": 5.8, "max": 6.1, "count": 2}
    line = next(x for x in render(status).splitlines() if "up 1 -> 3" in x)
    assert line.split()[:6] == [status["substrates"][0]["name"], "3", "3", "13.5", "1-3", "5.8"]
    assert "autoscaled substrate" in render(status)
