"""Cost attribution of a finished request, checked against sums done by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferplane.placement.estimate import estimate
from inferplane.telemetry.cost import CostBreakdown, request_cost
from tests.builders import NOW, fleet, idle_for, substrate


def spec_of(builder, *, ingress=("eu-central", "eu-central-1a")):
    built = fleet(builder).ingress(*ingress).build()
    return built.fleet.substrates[0]


def api(**cost):
    """A provider API in us-east (the tests' ingress is in eu-central)."""
    return spec_of(substrate("api").cls("provider_api").jurisdiction("US").zone("us-east", "us-east-1a").cost(**cost))


def gpu(*, gpu_hour: float, gpus: int, slots: int, replicas: int = 1):
    return spec_of(substrate("gpu").kind("vllm").cls("gpu_cluster").capacity(slots).replicas(replicas)
                   .cost(gpu_hour=gpu_hour, gpus=gpus))


def test_tokens_at_the_substrates_prices() -> None:
    # $0.15 / 1M in, $0.60 / 1M out: 2000 in = $0.0003, 500 out = $0.0003.
    spec = api(input_per_1m=0.15, output_per_1m=0.60)
    cost = request_cost(spec, 2000, 500, 3.0, "us-east")
    assert cost == pytest.approx(CostBreakdown(0.0006, 0.0, 0.0, 0.0006), rel=1e-12)


def test_owned_hardware_is_amortised_over_slots_for_the_requests_time() -> None:
    # $3.60 per GPU-hour x 2 GPUs = $0.002 per second, shared by 4 slots = $0.0005 per slot-second;
    # 10 s end to end = $0.005.
    spec = gpu(gpu_hour=3.6, gpus=2, slots=4)
    assert spec.cost.usd_per_slot_second == pytest.approx(0.0005, rel=1e-12)
    cost = request_cost(spec, 1000, 100, 10.0, "eu-central")
    assert cost == pytest.approx(CostBreakdown(0.0, 0.005, 0.0, 0.005), rel=1e-12)


def test_replicas_multiply_the_hardware_and_the_slots_are_fleet_wide() -> None:
    # 2 replicas x 2 GPUs x $3.60 / 3600 s = $0.004 / s over 4 slots = $0.001 per slot-second.
    spec = gpu(gpu_hour=3.6, gpus=2, slots=4, replicas=2)
    assert request_cost(spec, 0, 0, 2.5, "eu-central").gpu_usd == pytest.approx(0.0025, rel=1e-12)


def test_idle_hardware_costs_a_request_nothing_beyond_its_time() -> None:
    spec = gpu(gpu_hour=3.6, gpus=2, slots=4)
    assert request_cost(spec, 1000, 100, 0.0, "eu-central") == CostBreakdown(0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("ingress_region", "charged"),
    [("eu-central", True), (None, True), ("us-east", False)],
    ids=["other-region", "unknown-region", "same-region"],
)
def test_egress_only_outside_the_ingress_region(ingress_region, charged: bool) -> None:
    # $0.09 / GB = 9e-11 per byte; (1000 + 200) tokens x 4 bytes = 4800 bytes = $4.32e-7.
    spec = api(egress_per_gb=0.09)
    cost = request_cost(spec, 1000, 200, 1.0, ingress_region)
    assert cost.egress_usd == pytest.approx(4.32e-7 if charged else 0.0, rel=1e-12)
    assert cost.total_usd == cost.egress_usd


def test_every_part_adds_up() -> None:
    # tokens: 1000 x $1e-6 + 200 x $2e-6 = $0.0014; hardware: $7.2 x 1 GPU / 3600 / 2 slots x 4 s
    # = $0.004; egress: 4800 bytes x $1e-10 = $4.8e-7.
    spec = spec_of(substrate("own").cls("sovereign_onprem").zone("us-east", "us-east-1a").capacity(2)
                   .cost(input_per_1m=1.0, output_per_1m=2.0, gpu_hour=7.2, gpus=1, egress_per_gb=0.1))
    cost = request_cost(spec, 1000, 200, 4.0, "eu-central")
    assert cost == pytest.approx(CostBreakdown(0.0014, 0.004, 4.8e-7, 0.0014 + 0.004 + 4.8e-7), rel=1e-12)


@pytest.mark.parametrize(("tokens_in", "tokens_out", "e2e"), [(-1, 0, 1.0), (0, -1, 1.0), (0, 0, -0.1),
                                                               (0, 0, math.nan)])
def test_impossible_inputs_are_refused(tokens_in: int, tokens_out: int, e2e: float) -> None:
    with pytest.raises(ValueError):
        request_cost(api(), tokens_in, tokens_out, e2e, None)


@given(
    tokens_in=st.integers(0, 100_000), tokens_out=st.integers(1, 4_000),
    price_in=st.floats(0, 20), price_out=st.floats(0, 60), gpu_hour=st.floats(0, 10), gpus=st.integers(0, 8),
    egress=st.floats(0, 0.2), region=st.sampled_from(["eu-central", "us-east", None]),
)
def test_attributed_cost_uses_the_engines_formula(tokens_in, tokens_out, price_in, price_out, gpu_hour, gpus,
                                                  egress, region) -> None:
    """Fed the engine's own predicted time and token counts, attribution equals the estimate for a
    burst-tier substrate. On the reserved tier placement prices only the slot's opportunity (the
    batch fraction's share, ``estimate``), while attribution keeps amortising the hardware."""
    reserved = spec_of(substrate("r").zone("us-east", "us-east-1a").serves(window=200_000).tier("reserved")
                       .cost(input_per_1m=price_in, output_per_1m=price_out, gpu_hour=gpu_hour, gpus=gpus,
                             egress_per_gb=egress))
    est = estimate(reserved, idle_for(reserved.kind), tokens_in, tokens_out, region, NOW, 2.0)
    cost = request_cost(reserved, tokens_in, tokens_out, est.e2e_s, region)
    batch_frac = min(1.0, 1.0 / reserved.max_concurrent)  # idle: this request's slot alone
    assert est.cost_usd == pytest.approx(cost.tokens_usd + cost.egress_usd + cost.gpu_usd * batch_frac,
                                         rel=1e-9, abs=1e-15)
    spec = spec_of(substrate("s").zone("us-east", "us-east-1a").serves(window=200_000).tier("burst")
                   .cost(input_per_1m=price_in, output_per_1m=price_out, gpu_hour=gpu_hour, gpus=gpus,
                         egress_per_gb=egress))
    est = estimate(spec, idle_for(spec.kind), tokens_in, tokens_out, region, NOW, 2.0)
    cost = request_cost(spec, tokens_in, tokens_out, est.e2e_s, region)
    assert cost.total_usd == pytest.approx(est.cost_usd, rel=1e-9, abs=1e-15)
    assert cost.total_usd == pytest.approx(cost.tokens_usd + cost.gpu_usd + cost.egress_usd, rel=1e-12)
