"""``policy.health.residual_drift: penalize``: the drift detector's floors reach placement through
the authority's snapshot (``FleetState.set_drift_floors``), and every decision that predicted with
one says so (``CandidateVerdict.drift``)."""

from __future__ import annotations

import pickle

import pytest

from inferplane.cli.explain import render
from inferplane.fleet_state import FleetState, Outcome, SubstrateReport
from inferplane.placement import place
from inferplane.placement.signals import DriftPenalty, Reading
from inferplane.placement.snapshot import FleetSnapshot
from inferplane.telemetry.audit import decision_from_record, recorded_decision
from inferplane.telemetry.drift import DriftDetector, DriftSettings, Floor
from inferplane.telemetry.journal import _candidate
from tests.builders import fleet, request, substrate

BOUND = 2.0
NOW = 100.0


def setup():
    """Two equivalent substrates, `a` (the primary) and `b`; placement by the best total."""
    built = (fleet(substrate("a").zone("eu-central", "eu-central-1a"),
                   substrate("b").zone("eu-central", "eu-central-1a"))
             .spillover(mode="scored").build())
    state = FleetState(built.fleet, built.policy.policy_hash, BOUND, latency_window_s=5.0)
    for name in ("a", "b"):
        state.report_substrate(name, "r1", SubstrateReport(in_flight=0), NOW)
    state.report_ingress("i1", {}, [], NOW)
    return built, state


def published(state: FleetState, now: float = NOW):
    return state.snapshot(now)


def signals_of(state: FleetState, name: str, now: float = NOW):
    return published(state, now).signals[[s.name for s in state._fleet.substrates].index(name)]


def decide(built, state: FleetState, now: float = NOW, *, scored: bool = True, request_id: str = "req-1"):
    pub = published(state, now)
    snap = FleetSnapshot(pub.version, pub.taken_at_s, built.fleet, pub.signals,
                         policy=built.policy if scored else None)
    return place(request(request_id=request_id, now=now), snap, built.policy)


TTFT_FLOOR = {"a": {"ttft": Floor(1.2, 1.8)}}


def test_floors_raise_the_readings_name_the_penalty_and_publish_a_new_version():
    _, state = setup()
    before = published(state)
    state.set_drift_floors(TTFT_FLOOR)
    after = published(state)
    assert after.version == before.version + 1
    a = signals_of(state, "a")
    assert a.recent_ttft_s == Reading(1.2, NOW) and a.recent_tpot_s is None
    assert a.drift == (DriftPenalty("ttft", 1.8, 1.2),)
    assert signals_of(state, "b").drift == ()
    # The same floors again change nothing: no new version.
    state.set_drift_floors({"a": {"ttft": Floor(1.2, 1.8)}})
    assert published(state).version == after.version
    status = {s["name"]: s for s in state.status(NOW)["substrates"]}
    assert status["a"]["drift_penalty"] == [{"kind": "ttft", "factor": 1.8, "floor_s": 1.2}]


def test_a_fresh_higher_reading_is_kept_and_a_stale_one_gives_way_to_the_floor():
    _, state = setup()
    state.report_ingress("i1", {}, [Outcome("a", True, 2.0, 0.05, NOW)], NOW)
    state.set_drift_floors({"a": {"ttft": Floor(1.2, 1.8), "tpot": Floor(0.1, 2.0)}})
    a = signals_of(state, "a")
    assert a.recent_ttft_s.value == 2.0  # observed slower than the floor: nothing to raise
    assert a.recent_tpot_s == Reading(0.1, NOW)
    assert a.drift == (DriftPenalty("tpot", 2.0, 0.1),)
    # Later the outcome reading is stale (the estimate would ignore it): the floor takes its place.
    later = NOW + 30.0
    for name in ("a", "b"):
        state.report_substrate(name, "r1", SubstrateReport(in_flight=0), later)
    state.report_ingress("i1", {}, [], later)
    a = signals_of(state, "a", later)
    assert a.recent_ttft_s == Reading(1.2, later)
    assert [p.kind for p in a.drift] == ["tpot", "ttft"]


def test_placement_prefers_the_unpenalized_equivalent_and_the_decision_says_why():
    built, state = setup()
    plain = decide(built, state)
    plain_a = {c.name: c for c in plain.candidates}["a"]
    assert all(not c.drift for c in plain.candidates)

    state.set_drift_floors(TTFT_FLOOR)
    for scored in (True, False):  # the arithmetic and the specification agree
        for rid in ("req-1", "req-2", "req-3"):
            d = decide(built, state, scored=scored, request_id=rid)
            assert d.substrate == "b"
            a = {c.name: c for c in d.candidates}["a"]
            assert a.eligible and a.ttft_s == 1.2 > plain_a.ttft_s and a.total < plain_a.total
            assert a.drift == (DriftPenalty("ttft", 1.8, 1.2),)
            assert a.drift_note() == "predicted with drift penalty ×1.80 (ttft ≥ 1.200 s)"
            assert {c.name: c for c in d.candidates}["b"].drift == ()
    assert decide(built, state, scored=True) == decide(built, state, scored=False)

    # Clearing the floors restores the placement as it was, in a new version.
    version = published(state).version
    state.set_drift_floors({})
    assert published(state).version == version + 1
    assert signals_of(state, "a").drift == () and signals_of(state, "a").recent_ttft_s is None
    restored = decide(built, state)
    assert restored.candidates == plain.candidates and restored.substrate == plain.substrate


def test_a_penalty_past_the_deadline_rejects_and_still_says_so():
    built, state = setup()
    state.set_drift_floors({"a": {"ttft": Floor(5.0, 3.0)}})  # the SLA's ttft deadline is 1.5 s
    d = decide(built, state)
    a = {c.name: c for c in d.candidates}["a"]
    assert not a.eligible and a.code.value == "predicted_too_slow"
    assert a.drift == (DriftPenalty("ttft", 3.0, 5.0),)


def test_a_penalty_whose_reading_went_stale_is_not_claimed():
    built, state = setup()
    state.set_drift_floors(TTFT_FLOOR)
    pub = published(state)
    # Placed after the bound on the same snapshot: the floor reading is stale, as the load readings;
    # the specification evaluates, the estimate ignores the floor and the verdict claims no penalty.
    snap = FleetSnapshot(pub.version, pub.taken_at_s, built.fleet, pub.signals, policy=built.policy)
    d = place(request(now=NOW + BOUND + 0.5), snap, built.policy)
    assert all(c.drift == () for c in d.candidates)


def test_report_mode_changes_nothing_in_placement():
    """The detector keeps floors in report mode too (status shows them); the actor hands them over
    only in penalize mode, so placement sees the snapshot it saw before."""
    built, state = setup()
    detector = DriftDetector(DriftSettings(penalize=False))
    for i in range(30):  # `a` three times slower than predicted
        detector.observe("a", NOW - 30 + i, 3.0, 1.0, 1000, 200, 0.6, 0.01)
    assert "ttft" in detector.flags(NOW)["a"] and detector.floors(NOW)["a"]["ttft"].factor == 3.0
    before = decide(built, state)
    penalize = False  # what the actor reads from policy.health.residual_drift
    if penalize:
        state.set_drift_floors(detector.floors(NOW))
    state.report_ingress("i1", {}, [], NOW)
    assert decide(built, state).candidates == before.candidates
    # ...and in penalize mode the same floors reach placement.
    state.set_drift_floors(detector.floors(NOW))
    a = {c.name: c for c in decide(built, state).candidates}["a"]
    assert a.drift == (DriftPenalty("ttft", 3.0, 0.6),) and a.ttft_s == 0.6


def test_the_penalty_survives_the_audit_row_the_journal_ray_and_explain():
    built, state = setup()
    state.set_drift_floors(TTFT_FLOOR)
    d = decide(built, state)
    recorded = recorded_decision(d, built.fleet)
    a = {c["name"]: c for c in recorded["candidates"]}["a"]
    assert a["drift"] == [{"kind": "ttft", "factor": 1.8, "floor_s": 1.2}]
    assert a["drift_note"] == "predicted with drift penalty ×1.80 (ttft ≥ 1.200 s)"
    assert decision_from_record(recorded) == d
    # An audit row from before drift penalties reads with none.
    for c in recorded["candidates"]:
        del c["drift"], c["drift_note"]
    assert all(c.drift == () for c in decision_from_record(recorded).candidates)
    # Journal lines: candidates as lists, with the penalty or (older lines) without it.
    verdict = {c.name: c for c in d.candidates}["a"]
    as_list = pickle.loads(pickle.dumps([*verdict[:-1], [list(p) for p in verdict.drift]]))
    assert _candidate(as_list) == verdict
    assert _candidate(as_list[:-1]).drift == ()
    # What an ingress replica receives from the actor (pickled by Ray) keeps it.
    pub = pickle.loads(pickle.dumps(published(state)))
    assert pub.signals[0].drift == (DriftPenalty("ttft", 1.8, 1.2),)
    text = render(d, built.fleet, "signals: test")
    assert "fallback 1 *" in text and "* a (emulated): predicted with drift penalty ×1.80 (ttft ≥ 1.200 s)" in text


def test_the_declared_prediction_ignores_penalties_and_observed_floors():
    """What the detector judges (``declared_ttft_s`` / ``declared_tpot_s``) is the profile's
    prediction at the placement's load: a penalty or a slow observed reading raises the decision's
    prediction, never its declared one, so the drift cannot look cured by the estimate learning it."""
    built, state = setup()
    plain = decide(built, state)
    assert plain.declared_ttft_s == plain.predicted_ttft_s  # no reading raised it: the same figure
    assert plain.declared_tpot_s == pytest.approx(plain.predicted_tpot_s)
    floors = {name: {"ttft": Floor(1.2, 1.8), "tpot": Floor(0.1, 2.0)} for name in ("a", "b")}
    state.set_drift_floors(floors)
    for scored in (True, False):  # the arithmetic and the specification agree
        d = decide(built, state, scored=scored)
        assert d.predicted_ttft_s == 1.2 and d.predicted_tpot_s == pytest.approx(0.1)
        assert d.declared_ttft_s == plain.declared_ttft_s and d.declared_tpot_s == plain.declared_tpot_s
    # A record of a request that took what the floors predicted is a residual of 1, a declared
    # residual of ttft / declared: the latter is what the detector is fed.
    assert d.declared_ttft_s < d.predicted_ttft_s and d.declared_tpot_s < 0.1
