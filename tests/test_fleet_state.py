"""The placement authority's bookkeeping on a virtual clock: what each report turns into."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane import fleet_state as fs

from inferplane.fleet_state import FleetState, Outcome, SubstrateReport
from inferplane.health import BreakerSettings
from inferplane.placement import place
from inferplane.placement.signals import CircuitState, Reading, fresh_value
from inferplane.placement.snapshot import FleetSnapshot
from tests.builders import fleet, request, substrate

BOUND = 2.0


def setup(**policy):
    builder = fleet(substrate("p").zone("eu-central", "eu-central-1a").jurisdiction("DE"),
                    substrate("q").zone("us-east", "us-east-1a").jurisdiction("US"),
                    substrate("v").kind("vllm").zone("eu-central", "eu-central-1b").jurisdiction("DE"))
    built = builder.tenant("eu", allowed=["EU"]).build()
    state = FleetState(built.fleet, built.policy.policy_hash, BOUND,
                       BreakerSettings(consecutive_failures=2, open_cooldown_s=1.0, probe_successes=1),
                       latency_window_s=5.0)
    return built, state


def sig(state: FleetState, name: str, now: float):
    snap = state.snapshot(now)
    names = [s.name for s in state._fleet.substrates]
    return snap.signals[names.index(name)]


def test_no_heartbeat_no_signal_even_if_the_ingress_reports_counts():
    built, state = setup()
    state.report_ingress("i1", {"p": 3}, [], 100.0)
    assert sig(state, "p", 100.0).in_flight is None
    state.report_substrate("p", "r1", SubstrateReport(in_flight=1, queued=2), 100.0)
    s = sig(state, "p", 100.5)
    assert s.in_flight.value == 3.0 and s.queued.value == 2.0   # ingress counts win for in-flight


def test_in_flight_sums_ingress_replicas_and_ages_with_the_oldest():
    built, state = setup()
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 100.0)
    state.report_ingress("i1", {"p": 2}, [], 99.8)
    state.report_ingress("i2", {"p": 5}, [], 100.0)
    s = sig(state, "p", 100.0)
    assert s.in_flight.value == 7.0 and s.in_flight.observed_at_s == 99.8


def test_silent_replicas_expire_after_the_bound():
    built, state = setup()
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 100.0)
    assert sig(state, "p", 101.0).in_flight is not None
    state.report_ingress("i1", {}, [], 102.5)  # something new, so a new snapshot is built
    assert sig(state, "p", 102.5).in_flight is None


def test_vllm_engine_stats_pass_through_max_and_sum_over_replicas():
    built, state = setup()
    state.report_substrate("v", "r1", SubstrateReport(in_flight=2, queued=1, kv_cache_usage=0.3), 100.0)
    state.report_substrate("v", "r2", SubstrateReport(in_flight=1, queued=4, kv_cache_usage=0.7), 100.1)
    s = sig(state, "v", 100.2)
    assert (s.queued.value, s.kv_cache_usage.value) == (5.0, 0.7)
    assert s.kv_cache_usage.observed_at_s == 100.0


def test_outcomes_give_medians_error_rate_and_open_the_circuit():
    built, state = setup()
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 100.0)
    outcomes = [Outcome("p", True, 0.1, 0.01, 100.0), Outcome("p", True, 0.3, 0.03, 100.1),
                Outcome("p", True, 0.2, 0.02, 100.2)]
    state.report_ingress("i1", {}, outcomes, 100.2)
    s = sig(state, "p", 100.2)
    assert (s.recent_ttft_s.value, s.recent_tpot_s.value, s.error_rate.value) == (0.2, 0.02, 0.0)
    state.report_ingress("i1", {}, [Outcome("p", False, None, None, 100.3), Outcome("p", False, None, None, 100.4)],
                         100.4)
    s = sig(state, "p", 100.4)
    assert s.circuit is CircuitState.OPEN and s.error_rate.value == pytest.approx(2 / 5)
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 101.5)
    assert sig(state, "p", 101.5).circuit is CircuitState.HALF_OPEN
    state.report_ingress("i1", {}, [Outcome("p", True, 0.1, 0.01, 101.6)], 101.6)
    assert sig(state, "p", 101.6).circuit is CircuitState.CLOSED


def test_old_outcomes_age_out_of_the_estimate_but_stay_known_with_their_age():
    built, state = setup()
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 100.0)
    state.report_ingress("i1", {}, [Outcome("p", True, 8.0, 0.5, 99.0), Outcome("p", True, 9.0, 0.5, 100.0)],
                         100.0)
    assert sig(state, "p", 100.0).recent_ttft_s.value == 9.0
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 105.5)
    last = sig(state, "p", 105.5).recent_ttft_s
    # The last window with outcomes, dated by its newest: too old for the estimate (bound 2 s) ...
    assert (last.value, last.observed_at_s) == (9.0, 100.0)
    assert fresh_value(last, 105.5, 2.0) is None
    # ... and a fresh outcome replaces it at once: a recovered substrate is believed again.
    state.report_ingress("i1", {}, [Outcome("p", True, 0.2, 0.01, 105.6)], 105.6)
    assert sig(state, "p", 105.6).recent_ttft_s.value == 0.2


def test_retry_after_from_a_replica_or_an_outcome_opens_the_circuit():
    built, state = setup()
    state.report_substrate("q", "r1", SubstrateReport(in_flight=0, retry_after_until_s=130.0), 100.0)
    assert sig(state, "q", 100.0).circuit is CircuitState.OPEN
    state.report_ingress("i1", {}, [Outcome("p", False, None, None, 100.0, retry_after_s=10.0)], 100.0)
    assert state._breakers["p"].open_until_s == 110.0


def test_node_labels_outside_the_declared_jurisdiction_keep_eu_tenants_away():
    built, state = setup()
    for name in ("p", "q", "v"):
        state.report_substrate(name, "r1", SubstrateReport(in_flight=0, kv_cache_usage=0.0,
                                                           node_jurisdiction="DE"), 100.0)
    # p is declared DE but a second replica landed on a US node.
    state.report_substrate("p", "r2", SubstrateReport(in_flight=0, node_id="n2", node_jurisdiction="US"), 100.0)
    state.report_ingress("i1", {}, [], 100.0)
    pub = state.snapshot(100.0)
    snap = FleetSnapshot(pub.version, pub.taken_at_s, built.fleet, pub.signals)
    decision = place(request(tenant="eu", now=100.0), snap, built.policy)
    assert decision.substrate == "v"
    verdict = {c.name: c for c in decision.candidates}["p"]
    assert verdict.code.value == "node_jurisdiction" and "{DE, US}" in verdict.reason
    assert state.status(100.0)["substrates"][0]["node_jurisdiction_mismatch"] == ["US"]


def test_external_signals_most_specific_scope_wins():
    built, state = setup()
    state.push_external("power_headroom", 0.9, "fleet", "*", 100.0)
    state.push_external("power_headroom", 0.5, "region", "eu-central", 100.0)
    state.push_external("power_headroom", 0.1, "zone", "eu-central-1a", 100.0)
    state.push_external("power_headroom", 0.7, "substrate", "v", 100.0)
    got = {name: dict(sig(state, name, 100.0).external)["power_headroom"].value for name in ("p", "q", "v")}
    assert got == {"p": 0.1, "q": 0.9, "v": 0.7}
    with pytest.raises(ValueError):
        state.push_external("x", 1.0, "planet", "earth", 100.0)
    with pytest.raises(KeyError):
        state.push_external("x", 1.0, "substrate", "nope", 100.0)


def test_snapshot_versions_only_move_when_something_changed():
    built, state = setup()
    a = state.snapshot(100.0)
    assert state.snapshot(100.5).version == a.version
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 100.6)
    assert state.snapshot(100.6).version == a.version + 1


def test_budget_spend_adds_up_per_period_and_resets_at_the_next():
    built, _ = setup()
    state = FleetState(built.fleet, built.policy.policy_hash, BOUND, budget_periods={"eu": "day"})
    day1 = 1_795_000_000.0  # 2026-11-18 UTC
    state.add_spend({"eu": 1.5, "t": 9.0}, day1)
    state.add_spend({"eu": 0.25}, day1 + 60)
    assert state.snapshot(day1 + 60).tenant_spend_usd == {"eu": 1.75}  # only budgeted tenants
    assert state.tenant_spend(day1 + 86_400) == {}                      # a new day starts at zero
    state.add_spend({"eu": 2.0}, day1 + 86_400)
    assert state.tenant_spend(day1 + 86_400) == {"eu": 2.0}


def _outcome_part_by_definition(outcomes: list[Outcome], now_s: float, window_s: float):
    """The module doc's definition, outcome by outcome (the reference for ``_outcome_part``)."""
    last = outcomes[-fs.OUTCOME_WINDOW:]
    recent = [o for o in last if now_s - o.at_s <= window_s]
    valid_until = min(o.at_s for o in recent) + window_s if recent else float("inf")
    if not recent and last:
        newest = last[-1].at_s
        recent = [o for o in last if newest - o.at_s <= window_s]
    if not recent:
        return (valid_until, None, None, None)
    at = max(o.at_s for o in recent)
    ttfts = sorted(o.ttft_s for o in recent if o.ttft_s is not None)
    tpots = sorted(o.tpot_s for o in recent if o.tpot_s is not None)
    return (valid_until,
            Reading(ttfts[len(ttfts) // 2], at) if ttfts else None,
            Reading(tpots[len(tpots) // 2], at) if tpots else None,
            Reading(sum(1 for o in recent if not o.ok) / len(recent), at))


_outcomes = st.lists(st.builds(
    lambda at, ok, ttft, tpot: Outcome("p", ok, ttft, tpot, at),
    st.floats(0.0, 40.0), st.booleans(), st.none() | st.floats(0.0, 5.0), st.none() | st.floats(0.0, 1.0)),
    max_size=150)


@settings(max_examples=300, deadline=None)
@given(_outcomes, st.floats(0.0, 60.0), st.sampled_from([0.5, 5.0, 10.0]), st.booleans())
def test_outcome_part_is_the_definition_in_or_out_of_time_order(outcomes, now, window, in_order):
    if in_order:
        outcomes = sorted(outcomes, key=lambda o: o.at_s)
    kept = fs._OutcomeWindow()
    for o in outcomes:
        kept.append(o)
    part = fs._outcome_part(kept, now, window)
    assert (part.valid_until_s, part.ttft, part.tpot, part.error_rate) == \
        _outcome_part_by_definition(outcomes, now, window)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_outcomes.map(lambda os: os[:5]), st.floats(-5.0, 5.0)), max_size=40),
       st.sampled_from([0.5, 5.0, 10.0]), st.booleans(), st.sampled_from([1, 2, 5, fs.OUTCOME_WINDOW]))
def test_outcome_part_stays_the_definition_as_outcomes_arrive_and_leave(steps, window, in_order, held):
    """Outcomes arriving in batches, each batch followed by a look at a time near the newest (the
    sliding reduction kept between looks, also when a look goes back in time), with windows of
    ``held`` outcomes (small ones, so that outcomes leave the window by count too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fs, "OUTCOME_WINDOW", held)
        _arrive_and_look(steps, window, in_order)


def _arrive_and_look(steps, window, in_order):
    kept, seen, clock = fs._OutcomeWindow(), [], 0.0
    for batch, look in steps:
        if in_order:
            batch = [dataclasses.replace(o, at_s=clock + i * 1.1 + o.at_s / 40.0) for i, o in enumerate(batch)]
            clock = max([clock, *(o.at_s for o in batch)])
        for o in batch:
            kept.append(o)
            seen.append(o)
        now = clock + look if in_order else 20.0 + look * 4.0
        part = fs._outcome_part(kept, now, window)
        assert (part.valid_until_s, part.ttft, part.tpot, part.error_rate) == \
            _outcome_part_by_definition(seen, now, window)


# -- occupancy: in_flight holds the waiting requests ---------------------------------------------


def test_without_ingress_reports_in_flight_is_what_the_replicas_hold_running_or_waiting():
    """The emulated adapter counts only the slots held (its queue apart), vLLM's every request in
    the engine (its waiting ones included): both become the requests held, and queued stays the
    waiting part."""
    built, state = setup()
    state.report_substrate("p", "r1", SubstrateReport(in_flight=4, queued=3), 100.0)
    state.report_substrate("v", "r1", SubstrateReport(in_flight=7, queued=3, kv_cache_usage=0.5), 100.0)
    p, v = sig(state, "p", 100.0), sig(state, "v", 100.0)
    assert (p.in_flight.value, p.queued.value) == (7.0, 3.0)
    assert (v.in_flight.value, v.queued.value) == (7.0, 3.0)
    state.report_substrate("p", "r2", SubstrateReport(in_flight=1, queued=2), 100.1)
    assert sig(state, "p", 100.1).in_flight.value == 10.0


# -- expected output lengths ---------------------------------------------------------------------


def done(tenant: str, model: str, tokens: int, at: float, ok: bool = True, substrate: str = "p") -> Outcome:
    return Outcome(substrate, ok, 0.1, 0.01, at, tenant=tenant, model=model, output_tokens=tokens)


def test_expected_output_length_is_the_mean_then_a_moving_average_per_tenant_and_model():
    built, state = setup()
    state.report_ingress("i1", {}, [done("eu", "m", 10, 100.0), done("eu", "m", 30, 100.1),
                                    done("us", "m", 500, 100.1), done("eu", "m", 4000, 100.2, ok=False),
                                    Outcome("p", True, 0.1, 0.01, 100.2)], 100.2)
    # A failed attempt's partial output and an outcome without tenant or model teach nothing.
    assert state.snapshot(100.2).expected_output_tokens == {("eu", "m"): 20.0, ("us", "m"): 500.0}
    n = 2
    for i in range(200):
        state.report_ingress("i1", {}, [done("eu", "m", 100, 101.0 + i)], 101.0 + i)
        n += 1
    mean = state.snapshot(301.0).expected_output_tokens[("eu", "m")]
    # The plain mean of the first 32 (two off by 80 on average: 100 - 80 * 2 / 32), then each new
    # one weighs 1/32: it has all but forgotten the first two.
    assert 99.0 < mean < 100.0
    assert mean == pytest.approx(100.0 - 80.0 * (2 / 32) * (1 - fs.OUTPUT_LENGTH_WEIGHT) ** (n - 32))


def test_expected_output_lengths_keep_a_bounded_number_of_pairs(monkeypatch):
    monkeypatch.setattr(fs, "OUTPUT_LENGTH_PAIRS", 3)
    built, state = setup()
    for i, tenant in enumerate(("a", "b", "c", "a", "d")):
        state.report_ingress("i1", {}, [done(tenant, "m", 10 * (i + 1), 100.0 + i)], 100.0 + i)
    # "b" was the least recently updated when "d" came.
    assert set(state.snapshot(105.0).expected_output_tokens) == {("c", "m"), ("a", "m"), ("d", "m")}


def test_a_published_snapshot_keeps_its_expected_lengths_object_until_an_outcome_changes_it():
    built, state = setup()
    state.report_ingress("i1", {}, [done("eu", "m", 10, 100.0)], 100.0)
    first = state.snapshot(100.0).expected_output_tokens
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 100.5)
    assert state.snapshot(100.5).expected_output_tokens is first
    state.report_ingress("i1", {}, [done("eu", "m", 30, 101.0)], 101.0)
    assert state.snapshot(101.0).expected_output_tokens == {("eu", "m"): 20.0}


def test_placement_predicts_with_the_learned_length_capped_at_max_tokens():
    built = (fleet(substrate("p").latency(base_ttft_ms=100, prefill=10_000, decode=10))
             .tenant("eu", allowed=["EU"]).build())
    state = FleetState(built.fleet, built.policy.policy_hash, BOUND)
    state.report_substrate("p", "r1", SubstrateReport(in_flight=0), 100.0)
    state.report_ingress("i1", {"p": 0}, [done("eu", "m", 20, 100.0)], 100.0)
    pub = state.snapshot(100.0)
    snap = FleetSnapshot(pub.version, pub.taken_at_s, built.fleet, pub.signals,
                         expected_output_tokens=pub.expected_output_tokens)
    # 1000 input tokens at 10k tok/s, 100 ms to the first token, 10 tok/s: 20 tokens take 2 s, not 20.
    d = place(request(tenant="eu", max_output_tokens=200, now=100.0), snap, built.policy)
    assert d.predicted_e2e_s == pytest.approx(0.2 + 2.0)
    d = place(request(tenant="eu", max_output_tokens=5, now=100.0), snap, built.policy)
    assert d.predicted_e2e_s == pytest.approx(0.2 + 0.5)
    d = place(request(tenant="other", max_output_tokens=200, now=100.0), snap, built.policy)
    assert d.placed is False or d.predicted_e2e_s == pytest.approx(0.2 + 20.0)
