"""Table-driven tests of every soft scorer against the formula in its docstring, and of the latency
and cost estimate (estimate.py) worked out by hand.

Scorers read an ``Estimate``; the rows give one directly so that each formula is tested alone.
The SLA class is 1.5 s to the first token, 20 s end to end; the request is 1000 + 200 tokens.
"""

from __future__ import annotations

import pytest

from inferplane.placement import place
from inferplane.placement.estimate import Estimate, estimate
from inferplane.placement.scorers import (
    SCORERS,
    CostScorer,
    Locality,
    MemoryPressure,
    PredictedLatency,
    PrefixLocality,
    QueuePressure,
    ReservedTier,
)
from inferplane.placement.signals import SubstrateSignals
from tests.builders import FleetBuilder, context, fleet, request, signals, snapshot, substrate


def est(ttft_s: float = 0.5, e2e_s: float = 5.0, cost_usd: float = 0.0, occupancy: float = 0.0) -> Estimate:
    return Estimate(ttft_s, e2e_s, cost_usd, occupancy)


def one(b=None) -> FleetBuilder:
    """A one-substrate fleet: ``x`` in eu-central / eu-central-1a, 16 slots, reserved."""
    return fleet(b or substrate("x").zone("eu-central", "eu-central-1a"))


def row(case_id: str, scorer, expected: float, *, builder: FleetBuilder | None = None,
        sig: SubstrateSignals | None = None, e: Estimate | None = None, **req) -> pytest.param:
    return pytest.param(scorer, builder or one(), sig or signals(), e or est(), req, expected, id=case_id)


ROWS = [
    # PredictedLatency: min(max(0, 1 - ttft/1.5), max(0, 1 - e2e/20))
    row("latency/instant", PredictedLatency(), 1.0, e=est(0.0, 0.0)),
    row("latency/ttft-binds", PredictedLatency(), 0.5, e=est(0.75, 4.0)),        # min(0.5, 0.8)
    row("latency/e2e-binds", PredictedLatency(), 0.25, e=est(0.15, 15.0)),       # min(0.9, 0.25)
    row("latency/at-ttft-deadline", PredictedLatency(), 0.0, e=est(1.5, 2.0)),
    row("latency/past-e2e-deadline", PredictedLatency(), 0.0, e=est(0.1, 30.0)),  # -0.5 -> 0
    row("latency/other-class", PredictedLatency(), 0.9,                          # 1 - 0.3/3 = 0.9
        builder=one().sla().sla("fast", ttft_ms=3000, e2e_ms=6000).tenant(allowed_sla=["fast"]),
        e=est(0.3, 0.3), sla_class="fast"),
    # QueuePressure: 1 - min(1, occupancy / 16)
    row("queue/idle", QueuePressure(), 1.0, e=est(occupancy=0)),
    row("queue/quarter", QueuePressure(), 0.75, e=est(occupancy=4)),
    row("queue/three-quarters", QueuePressure(), 0.25, e=est(occupancy=12)),
    row("queue/full", QueuePressure(), 0.0, e=est(occupancy=16)),
    row("queue/beyond", QueuePressure(), 0.0, e=est(occupancy=40)),
    # MemoryPressure: 1 - max(gpu, kv) over readings that exist; stale -> 0; none -> 1
    row("memory/not-reported", MemoryPressure(), 1.0, sig=signals(kv=None, gpu=None)),
    row("memory/kv-only", MemoryPressure(), 0.7, sig=signals(kv=0.3)),
    row("memory/gpu-only", MemoryPressure(), 0.4, sig=signals(gpu=0.6)),
    row("memory/worst-of-both", MemoryPressure(), 0.4, sig=signals(kv=0.3, gpu=0.6)),
    row("memory/empty-kv", MemoryPressure(), 1.0, sig=signals(kv=0.0)),
    row("memory/full", MemoryPressure(), 0.0, sig=signals(kv=1.0, gpu=0.2)),
    row("memory/over-full", MemoryPressure(), 0.0, sig=signals(kv=1.3)),
    row("memory/stale-kv", MemoryPressure(), 0.0, sig=signals(kv=0.1, gpu=0.1, ages={"kv_cache_usage": 3.0})),
    row("memory/stale-gpu", MemoryPressure(), 0.0, sig=signals(gpu=0.0, ages={"gpu_memory_used_ratio": 2.5})),
    row("memory/at-bound-is-fresh", MemoryPressure(), 0.5, sig=signals(kv=0.5, age_s=2.0)),
    # CostScorer: r / (r + c), c = cost / 1200 tokens, r = reference per token (default 1 USD/1M)
    row("cost/free", CostScorer(), 1.0, e=est(cost_usd=0.0)),
    row("cost/at-reference", CostScorer(), 0.5, e=est(cost_usd=0.0012)),          # c = 1e-6
    row("cost/three-times-reference", CostScorer(), 0.25, e=est(cost_usd=0.0036)),  # 1 / (1 + 3)
    row("cost/other-reference", CostScorer(), 2 / 3, builder=one().cost_reference(2.0),
        e=est(cost_usd=0.0012)),                                                    # 2 / (2 + 1)
    row("cost/other-size", CostScorer(), 0.8, e=est(cost_usd=0.00001),             # c = 0.25e-6
        input_tokens=30, max_output_tokens=10),
    # Locality: 1 same zone, 0.5 same region, 0 elsewhere or unknown
    row("locality/same-zone", Locality(), 1.0, ingress_region="eu-central", ingress_zone="eu-central-1a"),
    row("locality/zone-only-known", Locality(), 1.0, ingress_zone="eu-central-1a"),
    row("locality/same-region", Locality(), 0.5, ingress_region="eu-central", ingress_zone="eu-central-1b"),
    row("locality/other-region", Locality(), 0.0, ingress_region="us-east", ingress_zone="us-east-1a"),
    row("locality/unknown-ingress", Locality(), 0.0),
    row("locality/other-zone-region-unknown", Locality(), 0.0, ingress_zone="eu-central-1b"),
    # ReservedTier: 1 reserved, 0 burst
    row("tier/reserved", ReservedTier(), 1.0, builder=one(substrate("x").tier("reserved"))),
    row("tier/burst", ReservedTier(), 0.0, builder=one(substrate("x").tier("burst"))),
    # PrefixLocality: the request's predicted hit fraction on this substrate, 0 when it lists none
    row("prefix/none-predicted", PrefixLocality(), 0.0),
    row("prefix/other-substrate-only", PrefixLocality(), 0.0, prefix_hits=(("y", 0.9),)),
    row("prefix/partial", PrefixLocality(), 0.25, prefix_hits=(("y", 1.0), ("x", 0.25))),
    row("prefix/whole-prompt", PrefixLocality(), 1.0, prefix_hits=(("x", 1.0),)),
]


@pytest.mark.parametrize(("scorer", "builder", "sig", "e", "req", "expected"), ROWS)
def test_scorer(scorer, builder: FleetBuilder, sig: SubstrateSignals, e: Estimate, req: dict,
                expected: float) -> None:
    built = builder.build()
    value = scorer.score(context(built, request(**req)), built.fleet.substrate("x"), sig, e)
    assert value == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= value <= 1.0


def test_every_scorer_has_rows() -> None:
    assert {type(p.values[0]) for p in ROWS} == {type(s) for s in SCORERS.values()}
    assert set(SCORERS) == {"predicted_latency", "queue_pressure", "memory_pressure", "cost", "locality",
                            "reserved_tier", "prefix_locality"}


# -- The estimate, by hand ----------------------------------------------------------------------


def priced() -> FleetBuilder:
    """``x``: 4 slots (+4 queued), 20 ms RTT + 100 ms base TTFT, prefill 2000 tok/s, decode 50
    tok/s slowing 3x at a full batch; 0.5 / 1.5 USD per 1M in/out, one 3.60 USD/h GPU, 0.10 USD/GB
    egress; in eu-central."""
    return fleet(
        substrate("x").zone("eu-central", "eu-central-1a").capacity(4, queued=4)
        .latency(base_ttft_ms=100, rtt_ms=20, prefill=2000, decode=50, slowdown=3.0)
        .cost(input_per_1m=0.5, output_per_1m=1.5, gpu_hour=3.6, gpus=1, egress_per_gb=0.1)
    )


def run_estimate(sig: SubstrateSignals, *, region: str | None = "us-east", input_tokens: int = 1000,
                 output_tokens: int = 100) -> Estimate:
    built = priced().build()
    spec = built.fleet.substrate("x")
    return estimate(spec, sig, input_tokens, output_tokens, region, 1_000_000.0,
                    built.policy.signal_staleness_bound_s)


def test_estimate_worked_by_hand() -> None:
    e = run_estimate(signals(in_flight=1, queued=0))
    # occupancy   = 1 + 0 = 1
    # batch_frac  = min(1, (1 + 1) / 4) = 0.5
    # decode_rate = 50 / (1 + (3 - 1) * 0.5) = 25 tok/s  -> 0.04 s per token
    # prefill     = 1000 / 2000 = 0.5 s;  decode = 100 * 0.04 = 4.0 s
    # queue_wait  = 0 (occupancy 1 < 4 slots)
    # ttft        = 0.020 rtt + 0.100 base + 0 + 0.5 = 0.62 s
    # e2e         = 0.62 + 4.0 = 4.62 s
    assert e.occupancy == 1.0
    assert e.ttft_s == pytest.approx(0.62)
    assert e.e2e_s == pytest.approx(4.62)
    # cost: input   1000 * 0.5e-6          = 0.000500
    #       output   100 * 1.5e-6          = 0.000150
    #       GPU     3.60 USD/h * 1 GPU * 1 replica / 3600 s / 4 slots = 0.00025 USD per slot-second,
    #               reserved: its opportunity, x batch_frac 0.5 = 0.000125, * e2e 4.62 s = 0.0005775
    #       egress  (eu-central vs ingress us-east) 1100 tokens * 4 B * 0.1e-9 USD/B = 0.00000044
    #       total                          = 0.00122794
    assert e.cost_usd == pytest.approx(0.00122794, rel=1e-9)


def test_estimate_same_region_pays_no_egress() -> None:
    assert run_estimate(signals(in_flight=1), region="eu-central").cost_usd == pytest.approx(0.0012275, rel=1e-9)


def test_estimate_queue_wait_when_full() -> None:
    e = run_estimate(signals(in_flight=6, queued=2))  # 6 dispatched, 2 of them waiting
    # occupancy 6 >= 4 slots; batch_frac = min(1, 5/4) = 1 -> decode_rate = 50/3 -> 0.06 s/token
    # service = 0.5 + 100 * 0.06 = 6.5 s; queue_wait = (6 - 4 + 1) / 4 * 6.5 = 4.875 s
    # ttft = 0.12 + 4.875 + 0.5 = 5.495 s; e2e = 5.495 + 6.0 = 11.495 s
    assert e.occupancy == 6.0
    assert e.ttft_s == pytest.approx(5.495)
    assert e.e2e_s == pytest.approx(11.495)


def test_estimate_unknown_load_counts_as_full() -> None:
    for sig in (signals(in_flight=None), signals(in_flight=0, age_s=9.0)):
        e = run_estimate(sig)
        # occupancy = 4 (full); batch_frac = 1 -> 0.06 s/token; queue_wait = 1/4 * 6.5 = 1.625
        assert e.occupancy == 4.0
        assert e.ttft_s == pytest.approx(0.12 + 1.625 + 0.5)
        assert e.e2e_s == pytest.approx(0.12 + 1.625 + 0.5 + 6.0)


def test_estimate_never_more_optimistic_than_observed() -> None:
    slow_first_token = run_estimate(signals(in_flight=1, ttft_s=0.9))
    assert slow_first_token.ttft_s == pytest.approx(0.9)
    assert slow_first_token.e2e_s == pytest.approx(0.9 + 4.0)
    slow_tokens = run_estimate(signals(in_flight=1, tpot_s=0.05))
    assert slow_tokens.ttft_s == pytest.approx(0.62)
    assert slow_tokens.e2e_s == pytest.approx(0.62 + 100 * 0.05)
    faster_than_model = run_estimate(signals(in_flight=1, ttft_s=0.1, tpot_s=0.01))
    assert (faster_than_model.ttft_s, faster_than_model.e2e_s) == pytest.approx((0.62, 4.62))
    stale = run_estimate(signals(in_flight=1, ttft_s=9.0, tpot_s=1.0, ages={"recent_ttft_s": 5.0,
                                                                          "recent_tpot_s": 5.0}))
    assert (stale.ttft_s, stale.e2e_s) == pytest.approx((0.62, 4.62))


def test_estimate_stale_load_reading_is_not_an_idle_substrate() -> None:
    """estimate.py: "A load signal that is missing or stale is taken as a full substrate". An
    in-flight reading of 7 (6 of them waiting) that is 3 s old (bound 2 s) is not read as idle: the
    last thing known is that it was over-full."""
    fresh = run_estimate(signals(in_flight=7, queued=6))
    stale = run_estimate(signals(in_flight=7, queued=6, ages={"in_flight": 3.0}))
    assert fresh.occupancy == 7.0
    assert stale.occupancy >= 7.0, "a stale load reading made the substrate look less loaded"
    assert stale.ttft_s >= fresh.ttft_s - 1e-9


def test_engine_reports_the_estimate_and_the_scores() -> None:
    """The same fleet through ``place``: the candidate carries the hand-computed estimate and each
    scorer's value, and the total is the weighted sum (default weights .35 .2 .1 .2 .1 .05 .05,
    normalised by their sum 1.05)."""
    built = priced().build()
    snap = snapshot(built, {"x": signals(in_flight=1, kv=0.25)})
    d = place(request(input_tokens=1000, max_output_tokens=100, ingress_region="us-east",
                      ingress_zone="us-east-1a"), snap, built.policy)
    assert d.substrate == "x"
    assert (d.predicted_ttft_s, d.predicted_e2e_s) == pytest.approx((0.62, 4.62))
    assert d.estimated_cost_usd == pytest.approx(0.00122794, rel=1e-9)  # the reserved slot's opportunity
    c = 0.00122794 / 1100
    expected = {
        "predicted_latency": min(1 - 0.62 / 1.5, 1 - 4.62 / 20),  # min(0.5867, 0.769)
        "queue_pressure": 1 - 1 / 4,
        "memory_pressure": 1 - 0.25,
        "cost": 1e-6 / (1e-6 + c),
        "locality": 0.0,
        "reserved_tier": 1.0,
        "prefix_locality": 0.0,
    }
    assert d.scores_of("x") == pytest.approx(expected)
    weights = {"predicted_latency": 0.35, "queue_pressure": 0.2, "memory_pressure": 0.1, "cost": 0.2,
               "locality": 0.1, "reserved_tier": 0.05, "prefix_locality": 0.05}
    total = sum(weights[n] * v for n, v in expected.items()) / 1.05
    assert d.candidates[0].total == pytest.approx(total)
