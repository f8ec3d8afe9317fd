"""The engine's rows for a substrate whose outcome readings are stale and load readings fresh (an
idle substrate: its recent_ttft / recent_tpot age past the bound) decide as the specification does:
the estimate ignores the stale readings, and ``DeadlineReachable`` holds the substrate to probes
while its last observed latencies are over the cut (for the request's expected output length:
with none learned, its max output tokens; learned shorter, the last per-token time weighs less)."""

from __future__ import annotations

import dataclasses

import pytest

from inferplane.placement import place
from inferplane.placement.signals import Reading
from inferplane.placement.snapshot import FleetSnapshot
from tests.builders import fleet, request, signals, substrate
from tests.strategies import Scenario
from tests.test_engine_equivalence import assert_same, reference

BOUND_AGES = {"recent_ttft_s": 60.0, "recent_tpot_s": 60.0}


@pytest.mark.parametrize(("in_flight", "ttft_s", "tpot_s", "ages", "offset_s"), [
    (0, 9.0, 0.01, BOUND_AGES, 0.0),      # last seen too slow: one probe may go
    (1, 9.0, 0.01, BOUND_AGES, 0.0),      # ... but not a second (half_open_probe_limit 1)
    (3, 1.0, 0.01, BOUND_AGES, 0.0),      # last seen fast enough: not held to probes
    (3, 0.2, 0.5, BOUND_AGES, 0.0),       # the last per-token time alone puts it over the e2e cut
    (3, None, 0.5, {"recent_tpot_s": 60.0}, 0.0),   # only a tpot reading, stale
    (3, 9.0, 0.01, {"recent_ttft_s": 60.0, "recent_tpot_s": 1.0}, 0.0),  # tpot still fresh: not the row
    (3, 9.0, 0.01, {"recent_ttft_s": 60.0, "recent_tpot_s": 1.0}, 1.5),  # ... until it is stale too
    (3, 9.0, 0.01, BOUND_AGES, 2.5),      # the load readings stale as well: not the row either
])
@pytest.mark.parametrize("learned", [None, 10.0, 37.5, 500.0])
@pytest.mark.parametrize("ratio", [None, 0.8, 2.5, 40.0])
def test_stale_outcome_readings_decide_as_the_specification(in_flight, ttft_s, tpot_s, ages, offset_s,
                                                            learned, ratio) -> None:
    """``ratio``: a learnt first-token ratio dated as recent_ttft (the authority dates both by the
    same outcomes): stale with it, it scales the probe's estimate instead of the median flooring it
    (``estimate.learnt_ttft_s``); 40 puts even an idle substrate over the 3x cut."""
    built = (fleet(substrate("x"), substrate("y"))
             .policy("health", drop_when_predicted_over_deadline=3.0).build())
    assert built.policy.signal_staleness_bound_s == 2.0 and built.policy.half_open_probe_limit == 1
    sig = signals(in_flight=in_flight, ttft_s=ttft_s, tpot_s=tpot_s, ages=ages)
    if ratio is not None and sig.recent_ttft_s is not None:
        sig = dataclasses.replace(sig, ttft_ratio=Reading(ratio, sig.recent_ttft_s.observed_at_s))
    now = sig.in_flight.observed_at_s
    others = tuple(signals(now=now) for _ in built.fleet.substrates[1:])
    for policy in (built.policy, None):  # rows folded with the snapshot, and folded by place()
        snap = FleetSnapshot(1, now, built.fleet, (sig, *others),
                             expected_output_tokens={} if learned is None else {("t", "m"): learned},
                             policy=policy)
        req = dataclasses.replace(request(now=now), arrived_at_s=now + offset_s)
        assert_same(place(req, snap, built.policy), reference(Scenario(built, snap, req), snap))


def test_a_stale_ratio_not_the_median_judges_a_probe() -> None:
    """Last seen with a 9 s median first-token time (long prompts) but a ratio of 1: a short prompt
    is predicted at its declared time, not held to probes; the same median without a ratio holds
    it (one probe already in flight)."""
    built = (fleet(substrate("x"), substrate("y"))
             .policy("health", drop_when_predicted_over_deadline=3.0).build())
    blind = signals(in_flight=3, ttft_s=9.0, tpot_s=0.01, ages=BOUND_AGES)
    learnt = dataclasses.replace(blind, ttft_ratio=Reading(1.0, blind.recent_ttft_s.observed_at_s))
    now = blind.in_flight.observed_at_s
    verdicts = {}
    for name, sig in (("blind", blind), ("learnt", learnt)):
        snap = FleetSnapshot(1, now, built.fleet, (sig, signals(now=now)), policy=built.policy)
        decision = place(request(now=now), snap, built.policy)
        verdicts[name] = {c.name: c for c in decision.candidates}["x"]
    assert not verdicts["blind"].eligible and "probing" in verdicts["blind"].summary
    assert verdicts["learnt"].eligible
