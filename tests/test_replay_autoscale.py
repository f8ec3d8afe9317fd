"""The replay's autoscaling what-if (issue #15 item 5): an autoscaled substrate's replicas follow
the plane's own rule (``plane.autoscale``) on simulated time, start after a delay, drain when
removed, and are paid per replica-second; a fixed substrate is as before.

The fleet: ``pool`` (vLLM, 4 slots per replica, 1-3 replicas, 4 requests per replica wanted, up
after 1 s, down after 8 s quiet; one GPU at $3.60 an hour: $0.001 per replica-second) and a
provider API ``api`` the overflow spills to. The workload: a burst of 5 requests a second for 20 s,
each decoding 200 tokens at 50 tokens a second (4 s: ~20 wanted at once), then one short request
every 5 s until 60 s, so the quiet period passes while the simulation still runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inferplane.config import ConfigError
from inferplane.plane.autoscale import DemandCounter
from inferplane.replay.baselines import baseline
from inferplane.replay.outcome import fixed_cost_usd
from inferplane.replay.plane_router import PlaneRouter
from inferplane.replay.scenario import BaselineSection, load_scenario
from inferplane.replay.simulator import Simulator
from inferplane.replay.substrate_physics import physics_for
from inferplane.replay.workload import ReplayRequest
from inferplane.telemetry.cost import usd_per_replica_second
from tests.builders import fleet, substrate

START_S = 5.0
PER_REPLICA = 4
SCENARIOS = Path(__file__).resolve().parent.parent / "configs" / "scenarios"


def _fleet(replicas: dict):
    pool = (substrate("pool").kind("vllm").cls("gpu_cluster").tier("reserved").capacity(12, queued=6)
            .latency(base_ttft_ms=100, rtt_ms=10, prefill=10_000, decode=50).cost(gpu_hour=3.6, gpus=1))
    pool._replicas = replicas
    api = (substrate("api").kind("openai_compatible").cls("provider_api").tier("burst").capacity(200)
           .latency(base_ttft_ms=300, rtt_ms=20, prefill=20_000, decode=80).cost(input_per_1m=1, output_per_1m=1))
    return fleet(pool, api).build()


AUTOSCALED = {"autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4,
                              "upscale_delay_s": 1, "downscale_delay_s": 8}}


def _requests() -> tuple[ReplayRequest, ...]:
    times = [k * 0.2 for k in range(100)] + [25.0 + 5 * k for k in range(8)]
    return tuple(ReplayRequest(index=i, request_id=f"r{i}", trace_index=i, copy=0, arrival_s=t, tenant="t",
                               sla_class="interactive", model="m", input_tokens=200,
                               output_tokens=201 if t < 20 else 11, max_tokens=256)
                 for i, t in enumerate(times))


def _run(built, router: str = "inferplane", probe_s: float = 0.05):
    """One run; every ``probe_s`` the pool's replicas (live, starting, draining), its slots, what it
    runs and the capacity the plane's authority publishes for it."""
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    requests = _requests()
    sim = Simulator(built, physics, requests, replica_start_s=(START_S, 0.0))
    r = (PlaneRouter(built, sim.loads(), heartbeat_s=0.25, start_s=sim.start_s) if router == "inferplane"
         else baseline(router, built, BaselineSection()))
    pool = sim.substrates[0]
    probes = []

    def probe(now: float) -> None:
        cap = None
        if isinstance(r, PlaneRouter) and r._state._published is not None:
            cap = r._state._published.signals[0].capacity
        probes.append((now, pool.replicas_live if pool.elastic else None, pool.replicas_starting,
                       pool.replicas_draining if pool.elastic else 0, pool.slots, pool.running, cap))
        if now < 70.0:
            sim.queue.at(now + probe_s, probe)
    sim.queue.at(sim.start_s, probe)
    return sim.run(r), r, probes, sim


def test_a_burst_scales_up_after_the_start_delay_and_down_after_the_quiet_period():
    result, router, probes, _ = _run(_fleet(AUTOSCALED))
    ups = [(t, k) for t, n, k, why in router.scaling if why.startswith("up")]
    downs = [(t, k) for t, n, k, why in router.scaling if why.startswith("down")]
    assert ups and ups[0][0] < 5.0, router.scaling  # the burst wants ~20 at once: 3 replicas, within seconds
    assert max(k for _, k in ups) == 3
    t_up = ups[0][0]
    # Before the start delay has passed nothing new is live, and the plane admits one replica's slots.
    before = [p for p in probes if t_up <= p[0] < t_up + START_S - 0.01]
    assert before and all(p[1] == 1 and p[2] >= 1 for p in before)
    assert all(p[6] is None or p[6][0] <= PER_REPLICA for p in before)
    # After it (and one heartbeat), 3 live, and the plane admits 3 x 4.
    after = [p for p in probes if t_up + START_S + 0.3 <= p[0] < 20.0]
    assert after and all(p[1] == 3 for p in after)
    assert all(p[6][0] == 3 * PER_REPLICA for p in after)
    # Down only after 8 s without demand for 3 (the burst's last request ends by ~24 s), to 1.
    assert downs and downs[-1][1] == 1 and all(t >= 20.0 + 8.0 for t, _ in downs), router.scaling
    assert probes[-1][1] == 1
    assert all(o.status == "completed" for o in result.outcomes)


def test_admission_never_exceeds_the_live_replicas_capacity():
    _, _, probes, _ = _run(_fleet(AUTOSCALED))
    live_at = {round(p[0], 2): p[1] for p in probes}
    for t, live, starting, draining, slots, running, cap in probes:
        assert slots == PER_REPLICA * live  # the pool admits on live replicas only
        assert running <= PER_REPLICA * (live + draining)  # a draining replica only finishes its own
        if cap is not None:
            # The plane's capacity is that of replicas live one heartbeat ago at most (a heartbeat
            # carries the new count; a stopping replica leaves the pool at once, the plane at the next).
            recent = [v for k, v in live_at.items() if t - 0.3 <= k <= t]
            assert cap[0] <= PER_REPLICA * max(recent)


def test_owned_cost_is_the_billed_replica_seconds_times_the_price():
    built = _fleet(AUTOSCALED)
    result, _, probes, _ = _run(built, probe_s=0.01)
    (pool_s, api_s) = result.replica_s
    assert api_s is None
    # Billed replicas (live + starting + draining) integrated from the probes, first to last arrival.
    t0 = 0.0
    t1 = t0 + result.span_s
    by_probe = sum((p1[0] - p0[0]) * (p0[1] + p0[2] + p0[3]) for p0, p1 in zip(probes, probes[1:])
                   if t0 <= p0[0] and p1[0] <= t1)
    assert pool_s == pytest.approx(by_probe, abs=3 * 0.01 * 3)
    assert 1.0 * result.span_s < pool_s < 3.0 * result.span_s  # it did scale, and not throughout
    price = usd_per_replica_second(built.fleet.substrates[0])
    assert price == pytest.approx(3.6 / 3600)
    assert fixed_cost_usd(built.fleet, result.span_s, {"pool": pool_s}) == pytest.approx(pool_s * price)


def test_a_baseline_runs_the_autoscaled_pool_at_its_starting_replicas():
    result, _, probes, _ = _run(_fleet(AUTOSCALED), router="least_outstanding")
    assert result.scaling == ()
    assert all(p[1] == 1 and p[4] == PER_REPLICA for p in probes)
    assert result.replica_s[0] == pytest.approx(result.span_s)


def test_a_fixed_pool_is_not_elastic_and_runs_as_before():
    built = _fleet({"num_replicas": 3})
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    runs = []
    for starts in (None, (START_S, 0.0)):
        sim = Simulator(built, physics, _requests(), replica_start_s=starts)
        router = PlaneRouter(built, sim.loads(), heartbeat_s=0.25, start_s=sim.start_s)
        runs.append((sim, sim.run(router), router))
    (sim, first, router), (_, second, _) = runs
    assert not sim.substrates[0].elastic and sim.substrates[0].slots == 12
    assert first.outcomes == second.outcomes and router.scaling == []
    assert first.replica_s == (3 * first.span_s, None)
    spec = built.fleet.substrates[0]
    assert fixed_cost_usd(built.fleet, first.span_s) == pytest.approx(3 * first.span_s * usd_per_replica_second(spec))


def test_demand_samples_count_totals_from_the_first_sample_on():
    class Reading:
        def __init__(self, value):
            self.value = value

    class Signals:
        in_flight, queued = Reading(7.0), Reading(2.0)

    class Published:
        signals = (Signals(),)
        demand = {"ingress-0": {"pool": {70: 3}}, "ingress-1": {"pool": {10: 1}, "api": {70: 5}}}

    counter = DemandCounter()
    first = counter.sample(1.0, Published(), 0, "pool", 40, 6)
    assert (first.running, first.held, first.admitted, first.overflowed) == (9.0, 4.0, 0, 0)
    second = counter.sample(2.0, Published(), 0, "pool", 50, 11)
    assert (second.admitted, second.overflowed) == (10, 5)
    assert second.demand == pytest.approx(9.0 + 4.0 + 9.0 * 5 / 10)


def test_the_whatif_scenarios_differ_only_in_gpu_fra_replicas():
    fixed = load_scenario(SCENARIOS / "autoscale-whatif-fixed.yaml")
    auto = load_scenario(SCENARIOS / "autoscale-whatif-autoscale.yaml")
    f = {s.name: s for s in fixed.built.fleet.substrates}
    a = {s.name: s for s in auto.built.fleet.substrates}
    assert (f["gpu-fra"].max_concurrent, f["gpu-fra"].max_queued, f["gpu-fra"].replicas) == (24, 12, 2)
    assert (a["gpu-fra"].max_concurrent, a["gpu-fra"].max_queued, a["gpu-fra"].replicas) == (48, 24, 4)
    assert usd_per_replica_second(a["gpu-fra"]) == pytest.approx(usd_per_replica_second(f["gpu-fra"]))
    for name in f.keys() - {"gpu-fra"}:
        assert f[name] == a[name]
    assert auto.simulation.physics["gpu-fra"].replica_start_s == 120


def test_a_provider_api_replicas_cannot_be_replaced(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"scenario_version: 1\nconfig: {SCENARIOS / 'enterprise-burst.fleet.yaml'}\n"
                    "replicas: {groq-us: {num_replicas: 2}, nowhere: {num_replicas: 1}}\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    text = str(err.value)
    assert "groq-us" in text and "fleet-level" in text and "nowhere" in text


def test_a_removed_replica_takes_no_new_work_and_is_billed_until_its_requests_finish():
    # 3 replicas (min 3) run 12 requests from 0 s, each decoding 200 tokens (4 s + first token). At
    # 1 s the pool is scaled to 1: its slots drop to 4 at once, the 12 running finish, and 4 more
    # arriving at 2 s wait until they have (the pool runs 12 > 4). The two removed replicas are
    # billed until the running requests fit in one (checked every second).
    built = _fleet({"autoscaling": {"min_replicas": 3, "max_replicas": 3, "target_ongoing_requests": 4}})
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    requests = tuple(ReplayRequest(index=i, request_id=f"r{i}", trace_index=i, copy=0,
                                   arrival_s=0.0 if i < 12 else 2.0, tenant="t", sla_class="interactive",
                                   model="m", input_tokens=200, output_tokens=201, max_tokens=256)
                     for i in range(16))
    sim = Simulator(built, physics, requests, replica_start_s=(START_S, 0.0))
    pool = sim.substrates[0]
    sim.queue.at(1.0, lambda now: sim.scale("pool", 1, now))
    seen = []
    sim.queue.at(1.5, lambda now: seen.append((pool.slots, pool.running, len(pool.waiting), pool.replicas_draining)))
    result = sim.run(baseline("ordered_fallback", built, BaselineSection()))
    assert seen == [(4, 12, 0, 2)]
    first, later = result.outcomes[:12], result.outcomes[12:]
    done = max(o.e2e_s for o in first)
    assert all(o.status == "completed" and o.substrate == "pool" for o in result.outcomes)
    assert all(2.0 + o.ttft_s >= done for o in later)  # admitted only once the 12 had finished
    (t_down, billed), = [(t, n) for t, n in pool.replica_log if 0.5 < t < done + 1.5 and n < 3][:1]
    assert done <= t_down <= done + 1.0 and billed == 1


def test_the_replay_pays_the_autoscaled_pool_per_replica_second_and_says_so():
    from inferplane.cli.replay import render
    from inferplane.replay.runner import ReplayOptions, replay

    trace = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
    report, results = replay(ReplayOptions(scenario=str(SCENARIOS / "autoscale-whatif-autoscale.yaml"),
                                           trace=str(trace), routers=("inferplane", "round_robin"), limit=600,
                                           bound=False))
    fleet_spec = load_scenario(SCENARIOS / "autoscale-whatif-autoscale.yaml").built.fleet
    fra = fleet_spec.substrate("gpu-fra")
    others = sum(s.cost.usd_per_slot_second * s.max_concurrent for s in fleet_spec.substrates if s.name != "gpu-fra")
    for run, result in zip(report["runs"], results):
        rs = run["replica_seconds"]["gpu-fra"]
        assert run["fixed_cost_usd"] == pytest.approx(rs * usd_per_replica_second(fra) + others * result.span_s)
    plane, rr = report["runs"]
    assert plane["scaling"] and plane["replica_seconds"]["gpu-fra"] > rr["replica_seconds"]["gpu-fra"]
    assert rr["scaling"] == () and rr["replica_seconds"]["gpu-fra"] == pytest.approx(results[1].span_s)
    assert "inferplane: replica-seconds billed (first to last arrival): gpu-fra" in render(report)
