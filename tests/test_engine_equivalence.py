"""``place()`` decides exactly as the ``Filter`` and ``Scorer`` objects say (Hypothesis).

The engine decides most substrates by arithmetic on the policy's plan and the snapshot's prepared
entries. Here a reference evaluates the specification directly, with nothing precomputed: every
filter of ``DEFAULT_FILTERS`` in order, ``estimate``, ``DEADLINE_FILTER``, every scorer of the
policy, total = sum of weight x score, ranked by total then by the request's tie key. Requests
arrive at random times around the readings' ages (so some readings expire and some substrates
leave the prepared window), on snapshots built directly or derived with ``with_dispatches``, with
learned output lengths for some (tenant, model) pairs (predictions use them, capped at the
request's max output tokens; the hard limits use the max).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from operator import mul

from hypothesis import given
from hypothesis import strategies as st

from inferplane.placement import PlacementDecision, place
from inferplane.placement.context import PlacementContext
from inferplane.placement.engine import _tie_key
from inferplane.placement.estimate import estimate
from inferplane.placement.filters import DEADLINE_FILTER, DEFAULT_FILTERS
from inferplane.placement.scorers import SCORERS
from inferplane.placement.signals import limits
from inferplane.placement.snapshot import FleetSnapshot
from tests.strategies import Scenario, scenarios

TOLERANCE = 1e-9


def reference(sc: Scenario, snapshot: FleetSnapshot) -> dict:
    """The decision the specification makes, as plain data (requests the strategies draw always
    name a known model, tenant and SLA class the tenant may use; no budgets)."""
    request, policy, fleet = sc.request, sc.built.policy, snapshot.fleet
    route = fleet.resolve_model(request.model)
    tenant, sla = policy.tenants[request.tenant], policy.sla_classes[request.sla_class]
    ctx = PlacementContext(request, tenant, sla, route, policy, policy.spill_classes(route.name),
                           request.arrived_at_s, policy.signal_staleness_bound_s)
    # Predictions use the output length learned for (tenant, model), never more than max_tokens.
    learned = snapshot.expected_output_tokens.get((request.tenant, route.name))
    out = request.max_output_tokens if learned is None else min(learned, request.max_output_tokens)
    candidates = []
    for idx in route.substrate_indices:
        spec, sig = fleet.substrates[idx], snapshot.signals[idx]
        row = {"index": idx, "name": spec.name, "eligible": False, "scores": None, "total": 0.0,
               "ttft": None, "e2e": None, "cost": None, "meets": False, "starts_now": False}
        rejection = next((r for f in DEFAULT_FILTERS if (r := f.check(ctx, spec, sig)) is not None), None)
        if rejection is None:
            hit = request.prefix_hit(spec.name)  # the predicted prefix-cache hit: only the rest is prefilled
            est = estimate(spec, sig, request.input_tokens, out, request.ingress_region,
                           request.arrived_at_s, policy.signal_staleness_bound_s, hit)
            full = estimate(spec, sig, request.input_tokens, request.max_output_tokens, request.ingress_region,
                            request.arrived_at_s, policy.signal_staleness_bound_s, hit)
            row.update(ttft=est.ttft_s, e2e=est.e2e_s, cost=est.cost_usd, starts_now=est.occupancy < limits(spec, sig)[0],
                       meets_in_full=full.ttft_s <= sla.ttft_deadline_s and full.e2e_s <= sla.e2e_deadline_s)
            rejection = DEADLINE_FILTER.check_estimate(ctx, spec, est, sig, out)
            if rejection is None:
                scores = [SCORERS[w.scorer].score(ctx, spec, sig, est) for w in policy.weights]
                row.update(eligible=True, scores=scores, total=sum(map(mul, (w.weight for w in policy.weights), scores)),
                           meets=est.ttft_s <= sla.ttft_deadline_s and est.e2e_s <= sla.e2e_deadline_s)
        if rejection is not None:
            row.update(code=rejection.code, summary=rejection.summary, reason=rejection.detail)
        else:
            row.update(code=None, summary=None, reason=None)
        candidates.append(row)
    seed = zlib.crc32(request.request_id.encode())
    ranked = sorted((c for c in candidates if c["eligible"]), key=lambda c: (-c["total"], _tie_key(seed, c["index"])))
    primary = next((c for c in candidates if c["name"] == route.primary), None)
    if (policy.spillover_mode == "on_need" and primary is not None and primary["meets"] and primary["starts_now"]
            and primary["meets_in_full"]):
        ranked.remove(primary)
        ranked.insert(0, primary)
    return {"candidates": candidates, "order": [c["name"] for c in ranked],
            "codes": {c["code"] for c in candidates if c["code"] is not None}}


def assert_same(d: PlacementDecision, ref: dict) -> None:
    assert [d.substrate, *d.fallbacks] == (ref["order"] or [None])
    if not ref["order"]:
        assert d.rejection_code in ref["codes"]
    assert len(d.candidates) == len(ref["candidates"])
    assert d.eligible_count == sum(c["eligible"] for c in ref["candidates"])
    for got, want in zip(d.candidates, ref["candidates"]):
        assert (got.name, got.eligible, got.code, got.summary, got.reason, got.meets_sla) == (
            want["name"], want["eligible"], want["code"], want["summary"], want["reason"], want["meets"]), got
        assert math.isclose(got.total, want["total"], rel_tol=TOLERANCE, abs_tol=TOLERANCE), got.name
        if want["scores"] is None:
            assert got.scores is None
        else:
            assert len(got.scores) == len(want["scores"])
            for a, b in zip(got.scores, want["scores"]):
                assert math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (got.name, got.scores, want["scores"])
        for a, b in ((got.ttft_s, want["ttft"]), (got.e2e_s, want["e2e"]), (got.cost_usd, want["cost"])):
            assert (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=TOLERANCE)), got.name
    if d.placed:
        chosen = next(c for c in ref["candidates"] if c["name"] == d.substrate)
        assert (d.predicted_ttft_s, d.predicted_e2e_s, d.estimated_cost_usd) == (
            chosen["ttft"], chosen["e2e"], chosen["cost"])


# Around the bound: readings in the strategies are up to 5 bounds old, so a request a little later
# (or earlier) moves some of them across it.
_offsets_in_bounds = st.sampled_from((0.0, 0.0, -0.5, 0.25, 0.5, 1.0, 2.0))


@given(scenarios(learned=True), _offsets_in_bounds)
def test_place_agrees_with_the_filters_and_scorers(sc: Scenario, offset: float) -> None:
    bound = sc.built.policy.signal_staleness_bound_s
    request = dataclasses.replace(sc.request, arrived_at_s=sc.request.arrived_at_s + offset * bound)
    sc = Scenario(sc.built, sc.snapshot, request)
    assert_same(place(request, sc.snapshot, sc.built.policy), reference(sc, sc.snapshot))


@given(scenarios(learned=True), st.data())
def test_a_view_with_dispatches_prepares_what_a_fresh_snapshot_does(sc: Scenario, data: st.DataObject) -> None:
    names = [s.name for s in sc.built.fleet.substrates]
    counts = st.dictionaries(st.sampled_from(names), st.integers(0, 40), max_size=len(names))
    reported, current = data.draw(counts, label="reported"), data.draw(counts, label="current")
    view = sc.snapshot.with_dispatches(reported, current)
    rebuilt = FleetSnapshot(view.version, view.taken_at_s, view.fleet, view.signals, view.tenant_spend_usd,
                            view.expected_output_tokens)
    assert view.prepared == rebuilt.prepared
    assert_same(place(sc.request, view, sc.built.policy), reference(sc, view))


@given(scenarios(learned=True))
def test_a_policy_without_its_plan_decides_the_same(sc: Scenario) -> None:
    """A copy made with ``dataclasses.replace`` has no plan and works its route out on the fly."""
    copy = dataclasses.replace(sc.built.policy)
    assert copy.plan is None
    planned = place(sc.request, sc.snapshot, sc.built.policy)
    assert place(sc.request, sc.snapshot, copy).to_dict() == planned.to_dict()


def _for_policy(sc: Scenario, snapshot: FleetSnapshot, previous: FleetSnapshot | None = None) -> FleetSnapshot:
    """``snapshot`` rebuilt as an ingress replica builds it: for its policy, maybe from a previous one."""
    return FleetSnapshot(snapshot.version, snapshot.taken_at_s, snapshot.fleet, snapshot.signals,
                         snapshot.tenant_spend_usd, snapshot.expected_output_tokens, policy=sc.built.policy,
                         previous=previous)


@given(scenarios(learned=True), _offsets_in_bounds, st.data())
def test_a_snapshot_built_for_the_policy_decides_the_same(sc: Scenario, offset: float, data: st.DataObject) -> None:
    """The scoring rows folded in at build time, reused from a previous snapshot for unchanged
    signals and updated by ``with_dispatches``, decide as the specification does."""
    bound = sc.built.policy.signal_staleness_bound_s
    request = dataclasses.replace(sc.request, arrived_at_s=sc.request.arrived_at_s + offset * bound)
    sc = Scenario(sc.built, sc.snapshot, request)
    names = [s.name for s in sc.built.fleet.substrates]
    counts = st.dictionaries(st.sampled_from(names), st.integers(0, 40), max_size=len(names))
    scored = _for_policy(sc, sc.snapshot)
    assert scored.scored_for is sc.built.policy and scored.prepared == sc.snapshot.prepared
    view = scored.with_dispatches(data.draw(counts, label="reported"), data.draw(counts, label="current"))
    # A newer snapshot in which some substrates keep their very signals objects and others do not.
    kept = data.draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)), label="kept")
    newer = FleetSnapshot(view.version + 1, view.taken_at_s, view.fleet,
                          tuple(v if k else dataclasses.replace(v) for v, k in zip(view.signals, kept)),
                          expected_output_tokens=view.expected_output_tokens, policy=sc.built.policy,
                          previous=scored)
    for snapshot in (scored, view, newer):
        rebuilt = _for_policy(sc, snapshot)
        assert snapshot.prepared == rebuilt.prepared and snapshot.scoring == rebuilt.scoring
        assert_same(place(request, snapshot, sc.built.policy), reference(sc, snapshot))
        assert place(request, snapshot, sc.built.policy).to_dict() == place(
            request, FleetSnapshot(snapshot.version, snapshot.taken_at_s, snapshot.fleet, snapshot.signals,
                                   snapshot.tenant_spend_usd, snapshot.expected_output_tokens),
            sc.built.policy).to_dict()
