"""The estimate's wait for a prefill lane (``estimate.lane_wait_s``), by hand and in a placement.

An engine that prefills one prompt at a time makes a request that has a slot wait while the others
prefill; slots alone do not show it, so a primary with free slots looked idle to long prompts.
"""

from __future__ import annotations

import pytest

from inferplane.placement import SpilloverReason, place
from inferplane.placement.estimate import estimate
from tests.builders import fleet, request, signals, snapshot, substrate


def one_lane(lanes: int | None = 1):
    """``x``: 16 slots, 100 ms base TTFT, prefill 10,000 tok/s, decode 100 tok/s, ``lanes`` prefill lanes."""
    return fleet(substrate("x").capacity(16).latency(base_ttft_ms=100, prefill=10_000, decode=100,
                                                     prefill_lanes=lanes))


def run(in_flight: float, *, lanes: int | None = 1, input_tokens: int = 4000, output_tokens: int = 20):
    built = one_lane(lanes).build()
    spec = built.fleet.substrate("x")
    return estimate(spec, signals(in_flight=in_flight), input_tokens, output_tokens, None, 1_000_000.0,
                    built.policy.signal_staleness_bound_s)


def fixed_point_holds(w: float, lane_s: float, decode_s: float, running: float, lanes: float) -> bool:
    """W = max(0, running / lanes * (W + lane_s) / (W + lane_s + decode) - (lanes - 1) / lanes) * lane_s."""
    rhs = max(0.0, running / lanes * (w + lane_s) / (w + lane_s + decode_s) - (lanes - 1) / lanes) * lane_s
    return w == pytest.approx(rhs, rel=1e-9, abs=1e-12)


def test_lane_wait_worked_by_hand() -> None:
    e = run(8)
    # prefill = 4000 / 10000 = 0.4 s; lane_s = 0.1 + 0.4 = 0.5 s; decode = 20 / 100 = 0.2 s; s = 8, one lane
    # x^2 + (0.2 - 0.5 * (1 + 8)) x - 0.5 * 0.2 = 0 -> x = (4.3 + sqrt(4.3^2 + 0.4)) / 2 = 4.32313
    # W = x - 0.5 = 3.82313 s (8 * 4.32 / 4.52 = 7.65 requests in their first-token phase ahead)
    # ttft = 0.1 + 3.82313 + 0.4
    w = (4.3 + (4.3 ** 2 + 0.4) ** 0.5) / 2 - 0.5
    assert fixed_point_holds(w, 0.5, 0.2, 8, 1)
    assert e.ttft_s == pytest.approx(0.1 + w + 0.4)
    assert e.e2e_s == pytest.approx(e.ttft_s + 0.2)


def test_no_wait_without_declared_lanes_or_when_idle() -> None:
    assert run(8, lanes=None).ttft_s == pytest.approx(0.5)
    assert run(0).ttft_s == pytest.approx(0.5)
    # four lanes, 8 running: the fixed point with s = 2, (lanes - 1) / lanes = 0.75
    w = run(8, lanes=4).ttft_s - 0.5
    assert w > 0 and fixed_point_holds(w, 0.5, 0.2, 8, 4)
    # four lanes, 3 running: a lane is free even if all three prefill
    assert run(3, lanes=4).ttft_s == pytest.approx(0.5)


def test_no_decode_means_every_running_request_is_ahead() -> None:
    """With no decode at all every running request is in its first-token phase: W = (running + 1 -
    lanes) / lanes * lane_s."""
    from inferplane.placement.estimate import lane_wait_s
    assert lane_wait_s(0.1, 8 / 2, 1 / 2, -float("inf"), 0.4, 0.0, 0.0) == pytest.approx((8 + 1 - 2) / 2 * 0.5)


def test_decode_heavy_requests_barely_wait() -> None:
    """Short prompts with long outputs spend little of their time prefilling."""
    e = run(15, input_tokens=500, output_tokens=500)
    w = e.ttft_s - (0.1 + 0.05)
    assert fixed_point_holds(w, 0.15, 5.0, 15, 1)
    assert 0.0 < w < 0.15


def test_on_need_spills_long_prompts_off_a_one_lane_primary_with_free_slots() -> None:
    """The primary has 8 of 16 slots busy: free slots, but its one prefill lane is queued; 4000-token
    prompts would wait ~3.8 s there against a 1.5 s deadline, so on_need spills to the idle API."""
    def fleet_with(lanes):
        return fleet(
            substrate("p").tier("reserved").capacity(16).latency(base_ttft_ms=100, prefill=10_000, decode=100,
                                                                 prefill_lanes=lanes),
            substrate("api").cls("provider_api").tier("burst").capacity(64)
            .latency(base_ttft_ms=300, prefill=20_000, decode=100).cost(input_per_1m=1.0, output_per_1m=2.0),
        ).model("m", primary="p").sla(ttft_ms=1500.0)
    req = dict(input_tokens=4000, max_output_tokens=20)
    built = fleet_with(1).build()
    d = place(request(**req), snapshot(built, {"p": signals(in_flight=8)}), built.policy)
    assert (d.substrate, d.spillover_reason) == ("api", SpilloverReason.PRIMARY_CANNOT_MEET_SLA)
    built = fleet_with(None).build()  # every slot prefills: the primary keeps it, as before
    d = place(request(**req), snapshot(built, {"p": signals(in_flight=8)}), built.policy)
    assert d.substrate == "p" and not d.spillover


# -- Owned hardware: placement prices the opportunity, attribution amortises ------------------------


def _pool(tier: str):
    return fleet(substrate("x").tier(tier).capacity(8).latency(base_ttft_ms=100, prefill=10_000, decode=100)
                 .cost(gpu_hour=8.0, gpus=1))


def _cost(tier: str, in_flight: float | None) -> float:
    built = _pool(tier).build()
    spec = built.fleet.substrate("x")
    return estimate(spec, signals(in_flight=in_flight), 1000, 100, None, 1_000_000.0,
                    built.policy.signal_staleness_bound_s).cost_usd


def test_a_reserved_pool_costs_its_opportunity_rising_with_its_batch() -> None:
    slot_price = 8.0 / 3600 / 8
    idle, half, full = _cost("reserved", 0), _cost("reserved", 3), _cost("reserved", 7)
    # e2e = 0.1 + 0.1 + 100 tokens / the decode rate (100 tok/s, no slowdown) = 1.2 s
    assert idle == pytest.approx(slot_price * 1 / 8 * 1.2)
    assert half == pytest.approx(slot_price * 4 / 8 * 1.2)
    assert full == pytest.approx(slot_price * 1.2)
    assert _cost("reserved", None) >= full, "an unknown load is priced as a full pool (and a queue)"
    assert _cost("burst", 0) == pytest.approx(slot_price * 1.2), "burst-tier hardware pays its slot-time in full"


def test_attribution_keeps_amortising_reserved_hardware() -> None:
    from inferplane.telemetry.cost import request_cost
    built = _pool("reserved").build()
    spec = built.fleet.substrate("x")
    attributed = request_cost(spec, 1000, 100, 1.2, None)
    assert attributed.gpu_usd == pytest.approx(8.0 / 3600 / 8 * 1.2)
    assert _cost("reserved", 0) < attributed.total_usd
