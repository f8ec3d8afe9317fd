"""The first-token floor learnt from outcomes is size- and hit-aware: each outcome carries the
first-token time the declared profile predicted for it, the authority keeps the median of observed
over declared (``SubstrateSignals.ttft_ratio``), and the estimate scales this request's prediction
by it (never below 1) instead of flooring every request with the size-blind median."""

from __future__ import annotations

from dataclasses import replace

import pytest

from inferplane.fleet_state import FleetState, Outcome, SubstrateReport
from inferplane.placement import place
from inferplane.placement.estimate import estimate
from inferplane.placement.signals import DriftPenalty, Reading
from inferplane.placement.snapshot import FleetSnapshot
from tests.builders import fleet, request, substrate

BOUND = 2.0


def setup():
    # Declared: 100 ms base, 10,000 prompt tokens/s: a 30k-token prompt 3.1 s idle, a 500-token one 0.15 s.
    built = (fleet(substrate("p").latency(base_ttft_ms=100, prefill=10_000, decode=50).capacity(8))
             .sla("interactive", ttft_ms=1000, e2e_ms=60_000).build())
    state = FleetState(built.fleet, built.policy.policy_hash, BOUND, latency_window_s=30.0)
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 100.0)
    return built, state


def declared(tokens: int) -> float:
    return 0.1 + tokens / 10_000


def learn(state: FleetState, prompts: list[int], slowness: float, with_declared: bool = True):
    outcomes = [Outcome("p", True, declared(n) * slowness, 0.02, 100.0 + i * 0.01, output_tokens=10,
                        dispatched_at_s=99.0, declared_ttft_s=declared(n) if with_declared else None)
                for i, n in enumerate(prompts)]
    state.report_ingress("i1", {}, outcomes, 100.2)
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 100.2)
    return state.snapshot(100.2).signals[0]


def predicted_ttft(built, signals, tokens: int) -> float:
    spec = built.fleet.substrates[0]
    return estimate(spec, signals, tokens, 10.0, None, 100.2, BOUND).ttft_s


def test_after_long_prompts_a_short_prompt_is_not_held_to_their_first_token_time():
    built, state = setup()
    signals = learn(state, [30_000] * 9, 1.0)
    assert signals.recent_ttft_s.value == pytest.approx(3.1)  # the size-blind median: over the 1 s deadline
    assert signals.ttft_ratio.value == pytest.approx(1.0)
    assert predicted_ttft(built, signals, 500) == pytest.approx(declared(500))
    pub = state.snapshot(100.2)
    snap = FleetSnapshot(pub.version, pub.taken_at_s, built.fleet, pub.signals)
    decision = place(request(input_tokens=500, max_output_tokens=10, now=100.2), snap, built.policy)
    assert decision.placed and decision.substrate == "p"
    assert decision.candidates[0].ttft_s == pytest.approx(declared(500))


def test_a_substrate_slower_than_declared_is_learnt_and_predicted_at_every_size():
    built, state = setup()
    signals = learn(state, [500, 30_000, 2_000, 8_000, 500, 12_000, 1_000], 1.3)
    assert signals.ttft_ratio.value == pytest.approx(1.3)
    # ``inferplane status`` shows what was learnt (the metric of the same name is in test_metrics).
    assert state.status(100.2)["substrates"][0]["signals"]["ttft_ratio"]["value"] == pytest.approx(1.3)
    for tokens in (200, 4_000, 40_000):
        assert predicted_ttft(built, signals, tokens) == pytest.approx(1.3 * declared(tokens))
    # After short prompts, a long one is protected by the ratio, not left at the short ones' median.
    built, state = setup()
    signals = learn(state, [500] * 9, 1.3)
    assert predicted_ttft(built, signals, 30_000) == pytest.approx(1.3 * declared(30_000))


def test_a_substrate_faster_than_declared_is_never_predicted_faster_than_its_profile():
    built, state = setup()
    signals = learn(state, [500, 30_000, 2_000], 0.7)
    assert signals.ttft_ratio.value == pytest.approx(0.7)
    assert predicted_ttft(built, signals, 2_000) == pytest.approx(declared(2_000))


def test_outcomes_without_a_declared_prediction_keep_the_median_floor():
    built, state = setup()
    signals = learn(state, [30_000] * 3, 1.0, with_declared=False)
    assert signals.ttft_ratio is None
    assert predicted_ttft(built, signals, 500) == pytest.approx(3.1)


def test_a_drift_penalty_still_floors_a_learnt_ratio():
    built, state = setup()
    signals = learn(state, [500] * 3, 1.0)
    penalized = replace(signals, recent_ttft_s=Reading(2.0, 100.2), drift=(DriftPenalty("ttft", 2.0, 2.0),))
    assert predicted_ttft(built, penalized, 500) == pytest.approx(2.0)

