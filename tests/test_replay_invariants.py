"""What must hold in every replay: inferplane never executes a request outside the tenant's
jurisdictions and never spills without saying so; no router beats the bound."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.jurisdiction import is_within
from inferplane.replay.baselines import baseline
from inferplane.replay.bound import build_programme, least_cost_usd, max_met, solve_bound
from inferplane.replay.outcome import fixed_cost_usd
from inferplane.replay.plane_router import PlaneRouter
from inferplane.replay.report import run_report
from inferplane.replay.runner import ROUTERS, ReplayOptions, prepare, simulate
from inferplane.replay.scenario import BaselineSection, Event, EventKind
from inferplane.replay.simulator import Simulator
from inferplane.replay.substrate_physics import physics_for
from inferplane.replay.trace import load_trace
from inferplane.replay.workload import TenantShare, WorkloadSpec, build_workload
from tests.builders import fleet, substrate
from tests.test_replay_simulator import replay_of, req

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = str(ROOT / "configs" / "scenarios" / "enterprise-burst.yaml")
AZURE_CONV = str(ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv")
SUBSTRATES = ("gpu-fra", "gpu-iad", "sovereign-fra", "groq-us", "provider-de", "cerebras-us")

events = st.lists(
    st.builds(
        Event,
        kind=st.sampled_from(list(EventKind)),
        substrate=st.sampled_from(SUBSTRATES),
        at_s=st.floats(0.0, 40.0),
        for_s=st.floats(1.0, 60.0),
    ).map(lambda e: Event(e.kind, e.substrate, e.at_s, e.for_s,
                          None if e.kind is EventKind.OUTAGE else (0.7 if e.kind is EventKind.FAILURE_RATE else 3.0))),
    max_size=4,
)


def _check_plane(options: ReplayOptions) -> dict:
    prepared = prepare(options)
    result = simulate(prepared, "inferplane")
    built = prepared.scenario.built
    for o in result.outcomes:
        allowed = built.policy.tenants[o.tenant].allowed_countries
        for name in o.tried:
            assert is_within(built.fleet.substrate(name).countries, allowed), (o, name)
    report = run_report(result, 0.0)
    assert report["sovereignty_violations"] == 0
    assert report["unlogged_spillovers"] == 0
    return report


@settings(max_examples=12)
@given(faults=events, time_scale=st.sampled_from([0.05, 0.2, 1.0]), seed=st.integers(0, 5))
def test_a_forbidden_jurisdiction_never_appears_in_inferplanes_executions(faults, time_scale, seed):
    report = _check_plane(ReplayOptions(scenario=SCENARIO, trace=AZURE_CONV, limit=250, time_scale=time_scale,
                                        seed=seed, events=tuple(faults), bound=False))
    assert report["requests"] == 250


def test_even_with_every_eu_substrate_down_the_plane_refuses_rather_than_crosses():
    down = tuple(Event(EventKind.OUTAGE, name, 0.0, 3600.0) for name in ("gpu-fra", "sovereign-fra", "provider-de"))
    report = _check_plane(ReplayOptions(scenario=SCENARIO, trace=AZURE_CONV, limit=300, events=down, bound=False))
    eu = report["sla_attainment_by_tenant"]["eu-bank"]
    assert eu == 0.0  # nothing allowed is reachable: refused, never served from the US
    assert report["rejected"] + report["failed"] > 0
    assert report["sla_attainment_by_tenant"]["global-app"] > 0.9


# -- the bound --------------------------------------------------------------------------------------


def test_bound_by_hand_one_slot():
    # One slot; each request holds it for exactly 10 s (ttft 10 s, one output token, no rtt, no
    # prefill); deadlines 16 s. 12 requests arrive in the first minute: all of them must run inside
    # [0, 60 + 16] s, which holds 7.6 of them: the bound is 7.6 / 12.
    pool = (substrate("pool").kind("vllm").cls("gpu_cluster").capacity(1)
            .latency(base_ttft_ms=10_000, rtt_ms=0, prefill=1e9, decode=50))
    built = fleet(pool).sla("interactive", ttft_ms=16_000, e2e_ms=16_000).build()
    requests = tuple(req(i, 5.0 * i, 0, 1) for i in range(12))
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    programme = build_programme(built, physics, requests, span_s=55.0)
    assert max_met(programme) == pytest.approx(7.6)
    # Served first come first served, request 0 waits 0 s (done at 10 s), request 1 waits 5 s (15 s),
    # request 2 would wait 10 s (20 s): two meet their deadline, under the bound's 7.6.
    result = replay_of(built, list(requests), "round_robin", settings=BaselineSection(first_byte_timeout_s=1000))
    assert [o.met_sla for o in result.outcomes] == [True, True] + [False] * 10
    assert [o.ttft_s for o in result.outcomes[:3]] == pytest.approx([10.0, 15.0, 20.0])


def test_tight_bound_sees_a_burst_the_loose_one_does_not():
    # One slot; ten requests arrive at once, each needs the slot for 0.5 s before its first token,
    # which is due within 1 s. Served one after another, two meet it (first tokens at 0.5 and 1.0
    # s). The loose bound lets them use a minute's slot-seconds: all ten. The first-token rows
    # know every one of them must have its prefill inside [0, 2] s: four at most.
    pool = (substrate("pool").kind("vllm").cls("gpu_cluster").capacity(1)
            .latency(base_ttft_ms=500, rtt_ms=0, prefill=1e9, decode=50))
    built = fleet(pool).sla("interactive", ttft_ms=1000, e2e_ms=60_000).build()
    requests = tuple(req(i, 0.0, 0, 1) for i in range(10))
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    assert max_met(build_programme(built, physics, requests, span_s=1.0, first_token_rows=False)) == pytest.approx(10)
    assert max_met(build_programme(built, physics, requests, span_s=1.0)) == pytest.approx(4)
    result = replay_of(built, list(requests), "round_robin", settings=BaselineSection(first_byte_timeout_s=1000))
    assert sum(o.met_sla for o in result.outcomes) == 2


def test_bound_respects_jurisdiction_and_outages():
    us = substrate("us").kind("vllm").cls("gpu_cluster").jurisdiction("US").capacity(8)
    de = substrate("de").kind("vllm").cls("gpu_cluster").jurisdiction("DE").capacity(8)
    built = fleet(us, de).model("m", primary="us").tenant("eu", allowed=["EU"]).build()
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    requests = tuple(req(i, float(i), 100, 5, tenant="eu") for i in range(10))
    assert max_met(build_programme(built, physics, requests, span_s=9.0)) == pytest.approx(10)
    # With `de` down for the whole time, nothing the tenant may use is reachable.
    down = (Event(EventKind.OUTAGE, "de", 0.0, 100.0),)
    assert max_met(build_programme(built, physics, requests, down, span_s=9.0)) == 0.0


def _tight_fleet():
    """Small pools, a rate-limited API and an EU tenant: the bound binds under the Azure slice."""
    de = (substrate("de").kind("vllm").cls("gpu_cluster").jurisdiction("DE").capacity(4, queued=4)
          .latency(base_ttft_ms=80, rtt_ms=2, prefill=8000, decode=60, slowdown=2.0)
          .cost(gpu_hour=2.0, gpus=4))
    sov = (substrate("sov").kind("openai_compatible").cls("sovereign_onprem").jurisdiction("DE")
           .capacity(2, queued=2).latency(base_ttft_ms=150, rtt_ms=3, prefill=6000, decode=35, slowdown=1.5))
    api = (substrate("api").kind("openai_compatible").cls("provider_api").tier("burst").jurisdiction("US")
           .capacity(6, rpm=120).latency(base_ttft_ms=200, rtt_ms=90, prefill=20000, decode=150)
           .cost(input_per_1m=0.6, output_per_1m=0.8))
    return (fleet(de, sov, api).model("m", primary="de")
            .sla("interactive", ttft_ms=1500, e2e_ms=20_000).sla("batch", ttft_ms=30_000, e2e_ms=300_000)
            .tenant("eu", allowed=["EU"], allowed_sla=["interactive", "batch"])
            .tenant("world", allowed_sla=["interactive", "batch"])
            .spillover(mode="scored").build())


@pytest.mark.parametrize("time_scale", [0.5, 1.0])
def test_no_router_beats_the_bound(time_scale):
    built = _tight_fleet()
    rows = load_trace(AZURE_CONV, limit=400)
    spec = WorkloadSpec("m", (TenantShare("eu", 0.4, (("interactive", 0.8), ("batch", 0.2))),
                              TenantShare("world", 0.6, (("interactive", 0.7), ("batch", 0.3)))),
                        seed=1, time_scale=time_scale)
    requests = build_workload(rows, spec, built.policy)
    physics = tuple(physics_for(s, i, jitter_ratio=0.1, seed=1) for i, s in enumerate(built.config.substrates))
    span = requests[-1].arrival_s - requests[0].arrival_s
    programme = build_programme(built, physics, requests, span_s=span)
    bound = solve_bound(programme)
    assert bound.sla_attainment < 1.0  # the capacity constraints bind: the test means something
    for name in ROUTERS:
        sim = Simulator(built, physics, requests)
        router = (PlaneRouter(built, sim.loads(), heartbeat_s=0.25, start_s=sim.start_s) if name == "inferplane"
                  else baseline(name, built, BaselineSection()))
        report = run_report(sim.run(router), fixed_cost_usd(built.fleet, span))
        assert report["met_sla"] <= bound.met + 1e-6, name
        assert report["cost_usd"] >= least_cost_usd(programme, min(report["met_sla"], bound.met)) - 1e-6, name
    assert bound.cost_usd >= bound.fixed_cost_usd
    assert least_cost_usd(programme, bound.met / 2) <= bound.cost_usd + 1e-9
    loose = solve_bound(build_programme(built, physics, requests, span_s=span, first_token_rows=False))
    assert bound.met <= loose.met + 1e-6  # the tight bound's rows are a superset
