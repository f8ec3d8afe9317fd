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


def test_an_ingress_replica_gone_silent_stops_dating_in_flight_but_its_counts_stay_until_the_bound():
    """An ingress replica Serve stopped (or that was killed) mid-load: had its last report kept
    dating every substrate's in_flight, the readings would near the bound with it and reach the
    replica still serving stale (every substrate refused ``stale_signals``, as the live ``models
    apply`` test saw during a rollout). Its counts stay (they can only overstate the load) until
    the bound drops them."""
    built, state = setup()
    state.report_ingress("gone", {"p": 4}, [], 100.0)
    t = 100.0
    while t < 101.9:
        t = round(t + 0.1, 3)
        state.report_substrate("p", "r1", SubstrateReport(in_flight=4), t)
        state.report_ingress("kept", {"p": 1}, [], t)
        s = sig(state, "p", t)
        assert s.in_flight.value == 5.0
        # silent for half the bound (1 s) or less, it still dates the reading; then no longer
        assert s.in_flight.observed_at_s == (100.0 if t <= 101.0 else t), t
        assert t - s.in_flight.observed_at_s <= BOUND / 2
    state.report_ingress("kept", {"p": 1}, [], 102.1)
    assert sig(state, "p", 102.1).in_flight.value == 1.0  # past the bound: dropped


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


def test_failures_with_a_retry_after_hold_the_substrate_and_do_not_count_as_ill_health():
    built, state = setup()
    # Six 429s in a row, each naming its time: more than the consecutive failures that open a circuit.
    for i in range(6):
        state.report_ingress("i1", {}, [Outcome("p", False, None, None, 100.0 + i, retry_after_s=1.0)], 100.0 + i)
    assert sig(state, "p", 105.5).circuit is CircuitState.OPEN      # held until 105 + 1
    state.report_ingress("i1", {}, [], 106.0)  # a sync: the next snapshot
    assert sig(state, "p", 106.0).circuit is CircuitState.CLOSED    # then open to all, not one probe at a time
    # The same six failures without a Retry-After are ill health: open, then half-open.
    for i in range(6):
        state.report_ingress("i1", {}, [Outcome("q", False, None, None, 100.0 + i)], 100.0 + i)
    assert sig(state, "q", 104.0).circuit is CircuitState.OPEN


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


def _outcome_part_by_definition(outcomes: list[Outcome], now_s: float, window_s: float,
                                loads: list[float] | None = None, counted: float = float("inf")):
    """The module doc's definition, outcome by outcome (the reference for ``_outcome_part``): the
    error rate over the window's outcomes, the medians over those whose load is at most
    ``counted`` (``loads[i]`` is ``outcomes[i]``'s; none given: unknown, so every one counts)."""
    loads = [-float("inf")] * len(outcomes) if loads is None else loads
    last = list(zip(outcomes, loads))[-fs.OUTCOME_WINDOW:]
    recent = [(o, load) for o, load in last if now_s - o.at_s <= window_s]
    valid_until = min(o.at_s for o, _ in recent) + window_s if recent else float("inf")
    if not recent and last:
        newest = last[-1][0].at_s
        recent = [(o, load) for o, load in last if newest - o.at_s <= window_s]
    if not recent:
        return (valid_until, None, None, None)
    at = max(o.at_s for o, _ in recent)
    chosen = [o for o, load in recent if load <= counted]
    chosen_at = max((o.at_s for o in chosen), default=None)
    ttfts = sorted(o.ttft_s for o in chosen if o.ttft_s is not None)
    tpots = sorted(o.tpot_s for o in chosen if o.tpot_s is not None)
    return (valid_until,
            Reading(ttfts[len(ttfts) // 2], chosen_at) if ttfts else None,
            Reading(tpots[len(tpots) // 2], chosen_at) if tpots else None,
            Reading(sum(1 for o, _ in recent if not o.ok) / len(recent), at))


_outcomes = st.lists(st.builds(
    lambda at, ok, ttft, tpot, declared: Outcome("p", ok, ttft, tpot, at, declared_ttft_s=declared),
    st.floats(0.0, 40.0), st.booleans(), st.none() | st.floats(0.0, 5.0), st.none() | st.floats(0.0, 1.0),
    st.none() | st.floats(0.01, 5.0)),
    max_size=150)


def _ratio_by_definition(outcomes: list[Outcome], now_s: float, window_s: float,
                         loads: list[float] | None = None, counted: float = float("inf")):
    """``ttft_ratio`` by the definition: the median of observed / declared first-token time over
    the outcomes the ttft median is taken over (those that carry both), dated as it."""
    loads = [-float("inf")] * len(outcomes) if loads is None else loads
    last = list(zip(outcomes, loads))[-fs.OUTCOME_WINDOW:]
    recent = [(o, load) for o, load in last if now_s - o.at_s <= window_s]
    if not recent and last:
        newest = last[-1][0].at_s
        recent = [(o, load) for o, load in last if newest - o.at_s <= window_s]
    chosen = [o for o, load in recent if load <= counted]
    ratios = sorted(o.ttft_s / o.declared_ttft_s for o in chosen
                    if o.ttft_s is not None and o.declared_ttft_s is not None)
    return Reading(ratios[len(ratios) // 2], max(o.at_s for o in chosen)) if ratios else None


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
    assert part.ttft_ratio == _ratio_by_definition(outcomes, now, window)


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


_LOADS = st.sampled_from([-float("inf"), 0.0, 3.0, 15.0, 16.0, 30.0])
_COUNTED = st.sampled_from([0.0, 3.0, 15.0, 16.0, 29.0, 30.0, float("inf")])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_outcomes.map(lambda os: os[:5]), st.lists(_LOADS, min_size=5, max_size=5),
                          st.floats(-5.0, 5.0), _COUNTED), max_size=40),
       st.sampled_from([0.5, 5.0, 10.0]), st.booleans(), st.sampled_from([2, 5, fs.OUTCOME_WINDOW]))
def test_outcome_part_counts_the_outcomes_whose_load_is_at_most_the_counted_one(steps, window, in_order, held):
    """As above, each outcome with the load it met and each look at a load that counts: the medians
    are over the outcomes that count, and the part holds for every load in its [from, until)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fs, "OUTCOME_WINDOW", held)
        kept, seen, loads, clock = fs._OutcomeWindow(), [], [], 0.0
        for batch, batch_loads, look, counted in steps:
            if in_order:
                batch = [dataclasses.replace(o, at_s=clock + i * 1.1 + o.at_s / 40.0) for i, o in enumerate(batch)]
                clock = max([clock, *(o.at_s for o in batch)])
            for o, load in zip(batch, batch_loads):
                kept.append(o, load)
                seen.append(o)
                loads.append(load)
            now = clock + look if in_order else 20.0 + look * 4.0
            part = fs._outcome_part(kept, now, window, counted)
            assert (part.valid_until_s, part.ttft, part.tpot, part.error_rate) == \
                _outcome_part_by_definition(seen, now, window, loads, counted)
            assert part.ttft_ratio == _ratio_by_definition(seen, now, window, loads, counted)
            inf = float("inf")
            assert part.load_from <= counted < part.load_until or counted == part.load_until == inf
            for other in (-inf, 0.0, 3.0, 15.0, 16.0, 29.0, 30.0, inf):
                if part.load_from <= other < part.load_until or other == part.load_until == inf:
                    want = _outcome_part_by_definition(seen, now, window, loads, other)
                    assert (part.ttft, part.tpot) == want[1:3], other


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
        assert part.ttft_ratio == _ratio_by_definition(seen, now, window)


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


# -- latency readings count at the load they bound -----------------------------------------------


def reading_at(state: FleetState, name: str, now: float, in_flight: int):
    state.report_substrate(name, "r1", SubstrateReport(in_flight=0), now)
    state.report_ingress("i1", {name: in_flight}, [], now)
    return sig(state, name, now)


def slow(at: float, dispatched: float, ttft: float = 9.0) -> Outcome:
    return Outcome("p", True, ttft, 0.2, at, dispatched_at_s=dispatched)


def test_readings_from_a_queue_count_only_while_the_queue_is_as_deep():
    built, state = setup()  # p: 16 slots, no queue of its own
    for i in range(10):  # idle, then 30 in flight from t=101
        reading_at(state, "p", 100.0 + i * 0.1, 0)
    for i in range(10):
        reading_at(state, "p", 101.0 + i * 0.1, 30)
    # Dispatched at 101.5 with 30 in flight: met a queue of 15.
    state.report_ingress("i1", {"p": 30}, [slow(102.0, 101.5)], 102.0)
    assert sig(state, "p", 102.0).recent_ttft_s.value == 9.0
    assert reading_at(state, "p", 102.1, 29).recent_ttft_s is None      # a shallower queue: not counted
    assert reading_at(state, "p", 102.2, 30).recent_ttft_s.value == 9.0  # as deep again: counted
    assert reading_at(state, "p", 102.3, 0).recent_ttft_s is None        # idle: not judged by it
    # An outcome that met no queue (15 others at most, 16 slots) counts at any load.
    state.report_ingress("i1", {"p": 0}, [Outcome("p", True, 0.4, 0.02, 102.4, dispatched_at_s=102.3)], 102.4)
    s = sig(state, "p", 102.4)
    assert (s.recent_ttft_s.value, s.recent_ttft_s.observed_at_s) == (0.4, 102.4)
    assert s.error_rate.value == 0.0  # the error rate counts every outcome
    # No dispatch time, or one before anything was recorded: its load is unknown, so it counts.
    state.report_ingress("i1", {"p": 0}, [Outcome("p", True, 7.0, 0.2, 102.5),
                                          Outcome("p", True, 7.0, 0.2, 102.5, dispatched_at_s=50.0)], 102.5)
    assert sig(state, "p", 102.5).recent_ttft_s.value == 7.0


def test_the_load_an_outcome_met_includes_a_burst_reported_after_its_dispatch():
    """Dispatches between two syncs reach the authority after them: a request dispatched into a
    burst that was not yet reported met the burst all the same (the most published while it ran)."""
    built, state = setup()
    reading_at(state, "p", 100.0, 0)
    reading_at(state, "p", 100.1, 40)   # the burst, reported after the dispatch at 100.05
    reading_at(state, "p", 100.2, 0)
    d = state._derived_by_name["p"]
    assert d.load_met(100.05) == 39.0   # 40 published since, itself among them
    assert d.load_met(100.15) == 40.0
    assert d.load_met(100.25) == 0.0
    assert d.load_met(99.0) == -float("inf") and d.load_met(None) == -float("inf")


def test_the_load_record_keeps_its_bound_and_its_peaks(monkeypatch):
    monkeypatch.setattr(fs, "LOAD_RECORD", 8)
    built, state = setup()
    d = state._derived_by_name["p"]
    values = [5, 3, 9, 1, 1, 4, 2, 8, 7, 0, 6, 3, 2, 5, 1, 0, 9, 2, 4, 3, 1]
    for i, v in enumerate(values):
        d.record_load(float(v), 100.0 + i)
    assert len(d.load_t) <= 2 * fs.LOAD_RECORD
    first = int(d.load_t[0] - 100.0)
    for i in range(first, len(values)):
        # in force at 100 + i, or the most after it less one
        after = values[i + 1:]
        want = max([values[i], *(v - 1 for v in after)])
        assert d.load_met(100.0 + i + 0.5) == want, i
    assert d.load_met(100.0 + first - 0.5) == -float("inf")


def test_an_idle_substrate_is_not_judged_by_the_burst_it_finished():
    """The user's case, on the plane's own bookkeeping and engine: a burst of batch requests fills
    a 16 + 8 vLLM pool, the EU tenant's interactive requests queue behind it for 8 to 12 s, and the
    pool drains. Right after, with the pool idle and those readings stale, 45 interactive requests
    arrive, one every 0.2 s, each done in 0.5 s: every one is placed (the readings of the burst,
    taken behind a queue 8 deep, do not count at an idle pool), none refused as predicted_too_slow
    ("last seen over 3x the deadlines; probing")."""
    built = (fleet(substrate("gpu").kind("vllm").jurisdiction("DE").capacity(16, queued=8)
                   .latency(base_ttft_ms=100, prefill=10_000, decode=50))
             .tenant("eu", allowed=["EU"], allowed_sla=["interactive", "batch"])
             .sla("interactive", ttft_ms=1500, e2e_ms=20_000).sla("batch", ttft_ms=60_000, e2e_ms=600_000)
             .policy("health", drop_when_predicted_over_deadline=3.0).build())
    policy = built.policy
    state = FleetState(built.fleet, policy.policy_hash, policy.signal_staleness_bound_s, latency_window_s=10.0)
    clock = 95.0
    in_flight = 0
    pending: list[Outcome] = []

    def sync(until: float) -> None:
        """Heartbeats and syncs every 0.1 s up to ``until``."""
        nonlocal clock, pending
        while clock < until:
            clock = round(clock + 0.1, 6)
            state.report_substrate("gpu", "r1", SubstrateReport(in_flight=in_flight, queued=max(0, in_flight - 16),
                                                                kv_cache_usage=min(1.0, in_flight / 16)), clock)
            state.report_ingress("i1", {"gpu": in_flight}, [o for o in pending if o.at_s <= clock], clock)
            pending = [o for o in pending if o.at_s > clock]
            state.snapshot(clock)

    sync(100.0)
    in_flight = 24  # 16 batch requests running and 8 waiting, from t = 100
    for i in range(16):
        pending.append(Outcome("gpu", True, 0.3, 0.05, 110.0, tenant="eu", model="m", output_tokens=200,
                               dispatched_at_s=100.0))
    for i in range(8):
        pending.append(Outcome("gpu", True, 10.0, 0.05, 111.0, tenant="eu", model="m", output_tokens=200,
                               dispatched_at_s=100.0))
    for i in range(12):  # the EU tenant's interactive requests, behind the queue
        pending.append(Outcome("gpu", True, 8.0 + i / 3, 0.05, 110.0 + i / 4, tenant="eu", model="m",
                               output_tokens=30, dispatched_at_s=101.0 + i / 4))
    sync(112.0)
    in_flight = 0
    sync(116.0)
    pub = state.snapshot(clock)
    assert all(o.at_s <= clock for o in pending)

    placed = refused = 0
    running: list[float] = []  # end times of the requests placed
    for i in range(45):
        now = round(116.0 + i * 0.2, 6)
        sync(now)
        running = [end for end in running if end > now]
        pub = state.snapshot(now)
        snap = FleetSnapshot(pub.version, pub.taken_at_s, built.fleet, pub.signals,
                             expected_output_tokens=pub.expected_output_tokens)
        view = snap.with_dispatches({"gpu": in_flight}, {"gpu": len(running)})
        d = place(request(request_id=f"r{i}", tenant="eu", now=now, max_output_tokens=256), view, policy)
        if d.placed:
            placed += 1
            running.append(now + 0.5)
            pending.append(Outcome("gpu", True, 0.15, 0.012, now + 0.5, tenant="eu", model="m", output_tokens=30,
                                   dispatched_at_s=now))
        else:
            refused += 1
        in_flight = len(running)
    assert (placed, refused) == (45, 0)
