"""The ingress replica's prefill-lane clock (``SubstrateSignals.prefill_clear_at_s``): a short
prompt dispatched behind a long one on a one-lane engine waits for the long one's prefill, which
the mean-field lane wait (every request taken to be like this one) does not see.

Measured on the suite's ``api-heavy`` x Azure code x1 cell (--limit 400; one 16-slot pool with
one prefill lane): replaying the plane's own dispatches through the clock put its first-token
times within 0.05 s of the observed ones on average (the mean field: 0.84 s), and the plane's
first-token misses on that pool went from 11 to 2 once it placed with the clock.
"""

from __future__ import annotations

import pytest

from inferplane.fleet_state import PublishedSnapshot
from inferplane.placement.estimate import estimate
from inferplane.plane.attempts import AttemptLoop, Dispatch
from inferplane.plane.state import ReplicaState
from tests.builders import NOW, fleet, request, signals, substrate


def at(offset_s: float):
    """``NOW + offset_s`` to a microsecond (``pytest.approx``'s default relative tolerance would
    accept a second off at ``NOW``)."""
    return pytest.approx(NOW + offset_s, rel=0, abs=1e-6)


def _state(lanes: int = 1, slots: int = 16):
    """``x``: ``slots`` slots, ``lanes`` prefill lanes, 100 ms base, prefill 10,000 tokens/s; the
    interactive class's first-token deadline is 10 s, so nothing here is refused for lateness."""
    built = (fleet(substrate("x").serves(window=32_768).capacity(slots)
                   .latency(base_ttft_ms=100, prefill=10_000, decode=100, prefill_lanes=lanes))
             .sla("interactive", ttft_ms=10_000, e2e_ms=60_000).build())
    state = ReplicaState(built.fleet, built.policy)
    report = state.take_report(NOW)
    assert state.publish(PublishedSnapshot(1, NOW, built.policy.policy_hash, (signals(in_flight=0.0, now=NOW),)),
                         report)
    return built, state


def _dispatch(state: ReplicaState, rid: str, tokens: int, at: float) -> Dispatch:
    loop = AttemptLoop(state, request(request_id=rid, now=at, input_tokens=tokens, max_output_tokens=10))
    step = loop.start()
    assert isinstance(step, Dispatch), step
    return step


def test_a_short_prompt_behind_a_long_one_waits_for_its_prefill():
    built, state = _state()
    _dispatch(state, "long", 20_000, NOW)  # its first-token phase: 0.1 + 2.0 s on the one lane
    view = state.view(NOW + 0.5)
    assert view.signals[0].prefill_clear_at_s == at(2.1)
    short = _dispatch(state, "short", 100, NOW + 0.5)
    # It waits the 1.6 s left of the long prefill, then its own 0.1 + 0.01 s.
    assert short.decision.predicted_ttft_s == pytest.approx(1.6 + 0.11)
    # The specification (``estimate``) reads the same clock off the view's signals.
    spec = built.fleet.substrate("x")
    est = estimate(spec, view.signals[0], 100, 10.0, None, NOW + 0.5, built.policy.signal_staleness_bound_s)
    assert est.ttft_s == pytest.approx(short.decision.predicted_ttft_s)
    # Without the clock the mean field sees one running request on the one lane and takes it to be
    # like this short one: a short wait only.
    blind = estimate(spec, signals(in_flight=1.0, now=NOW + 0.5), 100, 10.0, None, NOW + 0.5,
                     built.policy.signal_staleness_bound_s)
    assert blind.ttft_s < 0.5


def test_the_clock_adds_up_dispatches_and_clears():
    built, state = _state(lanes=2)
    for i in range(3):  # three 1.9 s first-token phases over two lanes: 2.85 s of lane time
        _dispatch(state, f"r{i}", 18_000, NOW)
    assert state.view(NOW).signals[0].prefill_clear_at_s == at(3 * 1.9 / 2)
    # Once cleared it says nothing: a later view carries no clock, and the next dispatch starts
    # the clock from its own dispatch time.
    later = NOW + 10.0
    report = state.take_report(later)
    assert state.publish(PublishedSnapshot(2, later, built.policy.policy_hash,
                                           (signals(in_flight=3.0, now=later),)), report)
    assert state.view(later).signals[0].prefill_clear_at_s is None
    _dispatch(state, "after", 1_000, later)
    assert state.view(later).signals[0].prefill_clear_at_s == at(later - NOW + 0.2 / 2)


def test_a_predicted_prefix_hit_is_not_prefilled_on_the_clock():
    built, state = _state()
    loop = AttemptLoop(state, request(request_id="cached", now=NOW, input_tokens=20_000, max_output_tokens=10,
                                      prefix_hits=(("x", 0.75),)))
    assert isinstance(loop.start(), Dispatch)
    # 25 % of 20,000 tokens prefilled: 0.1 + 0.5 s.
    assert state.view(NOW).signals[0].prefill_clear_at_s == at(0.6)


def test_no_clock_without_declared_lanes():
    built = fleet(substrate("x").serves(window=32_768).capacity(4)).build()
    state = ReplicaState(built.fleet, built.policy)
    report = state.take_report(NOW)
    assert state.publish(PublishedSnapshot(1, NOW, built.policy.policy_hash, (signals(in_flight=0.0, now=NOW),)),
                         report)
    _dispatch(state, "r", 20_000, NOW)
    assert state.view(NOW).signals[0].prefill_clear_at_s is None


def test_replicas_add_each_others_lane_work_through_the_authority():
    """Two ingress replicas in front of one lane: each reports its own clock with its sync, the
    authority publishes them, and each adds the others' work ahead to its own, so a short prompt at
    one replica waits for the long prefill the other dispatched. Measured on the suite's fleets run
    with two ingress replicas (--limit 400): deadlines met up 1 to 2 points on gpu-heavy and
    sovereign-pool x Azure code x4 against each replica seeing its own clock only."""
    from inferplane.fleet_state import FleetState
    from inferplane.health import BreakerSettings
    from inferplane.fleet_state import SubstrateReport

    built = (fleet(substrate("x").serves(window=32_768).capacity(16)
                   .latency(base_ttft_ms=100, prefill=10_000, decode=100, prefill_lanes=1))
             .sla("interactive", ttft_ms=10_000, e2e_ms=60_000).build())
    authority = FleetState(built.fleet, built.policy.policy_hash, 2.0, BreakerSettings(), latency_window_s=5.0)
    a = ReplicaState(built.fleet, built.policy, replica_id="a")
    b = ReplicaState(built.fleet, built.policy, replica_id="b")

    def sync(replica: ReplicaState, now: float) -> None:
        authority.report_substrate("x", "r0", SubstrateReport(in_flight=0), now)
        report = replica.take_report(now)
        authority.report_ingress(replica.replica_id, report.in_flight, report.outcomes, now, lanes=report.lanes)
        assert replica.publish(authority.snapshot(now), report)

    sync(a, NOW)
    sync(b, NOW)
    _dispatch(a, "long", 20_000, NOW)  # 0.1 + 2.0 s on the one lane
    assert b.view(NOW + 0.05).signals[0].prefill_clear_at_s is None  # b has not heard of it yet
    sync(a, NOW + 0.1)
    sync(b, NOW + 0.1)
    assert b.view(NOW + 0.1).signals[0].prefill_clear_at_s == at(2.1)
    short = _dispatch(b, "short", 100, NOW + 0.5)
    assert short.decision.predicted_ttft_s == pytest.approx(1.6 + 0.11)
    # b's own work runs on behind a's in its view; a's view adds b's at the next sync, and neither
    # counts its own work twice.
    assert b.view(NOW + 0.5).signals[0].prefill_clear_at_s == at(2.21)
    sync(b, NOW + 0.6)
    sync(a, NOW + 0.6)
    assert a.view(NOW + 0.6).signals[0].prefill_clear_at_s == at(2.21)
    assert b.view(NOW + 0.6).signals[0].prefill_clear_at_s == at(2.21)
    # Syncs that bring no new work add nothing, however many.
    for t in (0.7, 0.8):
        sync(a, NOW + t)
        sync(b, NOW + t)
    assert a.view(NOW + 0.8).signals[0].prefill_clear_at_s == at(2.21)
    assert b.view(NOW + 0.8).signals[0].prefill_clear_at_s == at(2.21)
    # A replica that joins now takes only the work still ahead, not all the others ever did.
    c = ReplicaState(built.fleet, built.policy, replica_id="c")
    sync(c, NOW + 0.9)
    assert c.view(NOW + 0.9).signals[0].prefill_clear_at_s == at(2.1)
    # Once everything has cleared, a view carries no clock.
    sync(c, NOW + 3.0)
    assert c.view(NOW + 3.0).signals[0].prefill_clear_at_s is None
