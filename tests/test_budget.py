"""Tenant budgets: spend from the snapshot against the budget; 402, or a restriction to classes."""

from __future__ import annotations

import dataclasses

from inferplane.placement import place
from inferplane.placement.filters import RejectionCode, WithinBudget
from tests.builders import context, fleet, request, snapshot, substrate


def built(when: str = "reject", classes=("gpu_cluster",)):
    return (fleet(substrate("own").cls("gpu_cluster").tier("reserved"),
                  substrate("api").cls("provider_api").tier("burst"))
            .model("m", primary="api")
            .tenant("t", budget={"usd_per_period": 10.0, "period": "day", "when_exceeded": when,
                                 "restrict_to_classes": list(classes)})
            .tenant("free")
            .build())


def with_spend(b, usd: float):
    return dataclasses.replace(snapshot(b), tenant_spend_usd={"t": usd})


def test_under_budget_places_as_usual():
    b = built()
    d = place(request(tenant="t"), with_spend(b, 9.99), b.policy)
    assert d.substrate == "api" and not d.spillover


def test_over_budget_reject_is_402_with_the_figures():
    b = built()
    d = place(request(tenant="t"), with_spend(b, 10.0), b.policy)
    assert not d.placed and d.http_status == 402 and d.rejection_code is RejectionCode.OVER_BUDGET
    assert d.rejection_message == "tenant `t` has spent $10.00 of its $10.00 budget for this period"


def test_over_budget_restrict_moves_to_the_allowed_classes_as_a_spillover():
    b = built(when="restrict")
    d = place(request(tenant="t"), with_spend(b, 12.0), b.policy)
    assert d.substrate == "own" and d.spillover and d.spillover_reason.value == "over_budget"
    api = next(c for c in d.candidates if c.name == "api")
    assert api.code is RejectionCode.OVER_BUDGET and api.reason == "class provider_api closed to the tenant over budget"


def test_over_budget_restrict_with_nothing_left_is_402():
    b = built(when="restrict", classes=("giant_context",))
    d = place(request(tenant="t"), with_spend(b, 12.0), b.policy)
    assert d.http_status == 402
    assert d.rejection_message == "0/2 substrates serving `m` eligible: 2 over budget: only {giant_context}"


def test_tenants_without_a_budget_ignore_spend():
    b = built()
    d = place(request(tenant="free"), dataclasses.replace(snapshot(b), tenant_spend_usd={"t": 1e9, "free": 1e9}),
              b.policy)
    assert d.placed


def test_filter_admits_when_the_context_has_no_restriction():
    b = built(when="restrict")
    ctx = dataclasses.replace(context(b, request(tenant="t")), over_budget_classes=frozenset({"gpu_cluster"}))
    assert WithinBudget().check(ctx, b.fleet.substrate("own"), None) is None
    assert WithinBudget().check(ctx, b.fleet.substrate("api"), None).code is RejectionCode.OVER_BUDGET
