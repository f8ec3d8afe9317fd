"""Rules that must hold for every fleet, tenant, signal and request (Hypothesis).

Fleets, signals and requests come from ``tests/strategies.py``. Jurisdictions are expanded here
independently of ``inferplane.jurisdiction``, from the groups the strategies define.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from inferplane.config.build import build
from inferplane.placement import PlacementDecision, place
from inferplane.placement.signals import Reading
from inferplane.placement.snapshot import FleetSnapshot
from tests.strategies import GROUPS, Scenario, scenarios


def countries(token: str) -> set[str] | None:
    """The countries a token stands for; None for `*` (anywhere)."""
    if token == "*":
        return None
    return set(GROUPS.get(token, [token]))


def may_execute_in(tenant_tokens: list[str], substrate_token: str) -> bool:
    allowed: set[str] = set()
    for token in tenant_tokens:
        expanded = countries(token)
        if expanded is None:
            return True
        allowed |= expanded
    return countries(substrate_token) <= allowed


def decide(sc: Scenario) -> PlacementDecision:
    return place(sc.request, sc.snapshot, sc.built.policy)


def eligible(d: PlacementDecision) -> set[str]:
    return {c.name for c in d.candidates if c.eligible}


@given(scenarios())
def test_forbidden_jurisdiction_is_never_chosen_nor_a_fallback(sc: Scenario) -> None:
    d = decide(sc)
    tenant = next(t for t in sc.built.config.tenants if t.name == sc.request.tenant)
    jurisdiction = {s.name: s.jurisdiction for s in sc.built.config.substrates}
    for name in ((d.substrate,) if d.placed else ()) + d.fallbacks:
        assert may_execute_in(tenant.allowed_jurisdictions, jurisdiction[name]), (name, jurisdiction[name])
    for c in d.candidates:
        if c.eligible:
            assert may_execute_in(tenant.allowed_jurisdictions, jurisdiction[c.name])


@given(scenarios())
def test_scores_and_totals_are_in_unit_interval(sc: Scenario) -> None:
    d = decide(sc)
    for c in d.candidates:
        assert 0.0 <= c.total <= 1.0, (c.name, c.total)
        if c.eligible:
            assert c.scores is not None and len(c.scores) == len(d.scorer_names)
            for name, value in zip(d.scorer_names, c.scores):
                assert 0.0 <= value <= 1.0, (c.name, name, value)
        else:
            assert c.scores is None and c.total == 0.0 and c.code is not None and c.reason


@given(scenarios())
def test_same_inputs_give_the_same_decision(sc: Scenario) -> None:
    first = decide(sc)
    assert decide(sc).to_dict() == first.to_dict()
    # And from a second build of the same config (no state carried over between policies/fleets).
    rebuilt = build(sc.built.config)
    snap = FleetSnapshot(sc.snapshot.version, sc.snapshot.taken_at_s, rebuilt.fleet, sc.snapshot.signals)
    assert place(sc.request, snap, rebuilt.policy).to_dict() == first.to_dict()


@given(scenarios(), st.data())
def test_excluding_never_adds_a_candidate(sc: Scenario, data: st.DataObject) -> None:
    base = decide(sc)
    names = [s.name for s in sc.built.fleet.substrates]
    more = frozenset(data.draw(st.lists(st.sampled_from(names), unique=True), label="more excluded"))
    wider = place(dataclasses.replace(sc.request, exclude=sc.request.exclude | more), sc.snapshot,
                  sc.built.policy)
    assert eligible(wider) <= eligible(base)
    assert eligible(wider).isdisjoint(more)


@given(scenarios())
def test_retry_never_widens_the_candidate_set(sc: Scenario) -> None:
    d = decide(sc)
    failed = d.substrate if d.placed else sc.built.fleet.substrates[0].name
    retry = place(sc.request.retry_excluding(failed), sc.snapshot, sc.built.policy)
    assert eligible(retry) <= eligible(d) - {failed}
    assert set(retry.fallbacks) | ({retry.substrate} if retry.placed else set()) <= eligible(d)
    assert retry.attempt == d.attempt + 1


@given(scenarios(), st.data())
def test_missing_or_stale_required_signal_is_never_eligible(sc: Scenario, data: st.DataObject) -> None:
    fleet = sc.built.fleet
    idx = data.draw(st.integers(0, len(fleet.substrates) - 1), label="substrate")
    spec = fleet.substrates[idx]
    signal = data.draw(st.sampled_from(spec.required_signals), label="signal")
    bound = sc.built.policy.signal_staleness_bound_s
    overage = data.draw(st.one_of(st.none(), st.floats(1e-3, 1e4)), label="seconds past the bound")
    now = sc.request.arrived_at_s
    old = getattr(sc.snapshot.signals[idx], signal)
    value = 0.0 if old is None else old.value
    reading = None if overage is None else Reading(value, now - bound - overage)
    sigs = list(sc.snapshot.signals)
    sigs[idx] = dataclasses.replace(sigs[idx], **{signal: reading})
    snap = FleetSnapshot(sc.snapshot.version, sc.snapshot.taken_at_s, fleet, tuple(sigs))
    d = place(sc.request, snap, sc.built.policy)
    assert spec.name not in eligible(d)
    assert d.substrate != spec.name and spec.name not in d.fallbacks


@given(scenarios())
def test_the_pick_is_eligible_and_best_unless_on_need_kept_the_primary(sc: Scenario) -> None:
    d = decide(sc)
    ok = eligible(d)
    assert d.placed == bool(ok) == (d.rejection_code is None)
    if not d.placed:
        assert d.rejection_message.startswith(f"0/{len(d.candidates)} substrates serving `{d.model}` eligible: ")
        assert d.fallbacks == () and d.spillover is False
        return
    by_name = {c.name: c for c in d.candidates}
    chosen = by_name[d.substrate]
    assert chosen.eligible
    assert [d.substrate, *d.fallbacks] == list(dict.fromkeys([d.substrate, *d.fallbacks]))
    assert {d.substrate, *d.fallbacks} == ok
    best = max(c.total for c in d.candidates if c.eligible)
    kept_primary = (sc.built.policy.spillover_mode == "on_need" and d.substrate == d.primary
                    and chosen.meets_sla)
    if not kept_primary:
        assert chosen.total == best
    totals = [by_name[n].total for n in d.fallbacks]
    assert totals == sorted(totals, reverse=True)
    assert d.spillover == (d.substrate != d.primary)
    assert (d.spillover_reason is None) == (not d.spillover)
    assert (d.predicted_ttft_s, d.predicted_e2e_s, d.estimated_cost_usd) == (chosen.ttft_s, chosen.e2e_s,
                                                                             chosen.cost_usd)

