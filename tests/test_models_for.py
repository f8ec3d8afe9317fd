"""`/v1/models` lists what a tenant may reach: its allowed models served by a substrate its rules admit."""

from __future__ import annotations

import dataclasses

from inferplane.placement.plan import models_for
from tests.builders import fleet, substrate


def _built():
    return (fleet(substrate("de").cls("gpu_cluster").jurisdiction("DE").serves("m-eu"),
                  substrate("us").cls("provider_api").jurisdiction("US").serves("m-us").serves("m-eu"))
            .model("m-eu", primary="de").model("m-us", primary="us")
            .tenant("eu", allowed=["EU"]).tenant("world", allowed=["*"]).build())


def test_a_tenant_sees_only_models_a_substrate_in_its_jurisdictions_serves():
    built = _built()
    assert models_for(built.policy, built.fleet, "eu") == ["m-eu"]
    assert models_for(built.policy, built.fleet, "world") == ["m-eu", "m-us"]


def test_without_a_compiled_plan_the_answer_is_the_same():
    built = _built()
    bare = dataclasses.replace(built.policy)  # a copy carries no plan
    assert bare.plan is None
    for tenant in ("eu", "world"):
        assert models_for(bare, built.fleet, tenant) == models_for(built.policy, built.fleet, tenant)
