"""Capacity follows live replicas (issue #15): per-replica slots times the replicas reporting, for
vLLM and emulated substrates; provider APIs keep their fleet-level limit."""

from __future__ import annotations

import pytest

from inferplane.fleet_state import FleetState, SubstrateReport
from inferplane.health import BreakerSettings
from inferplane.placement import place
from inferplane.placement.filters import RejectionCode
from inferplane.placement.signals import Capacity, limits
from inferplane.placement.snapshot import FleetSnapshot
from tests.builders import fleet, request, substrate

BOUND = 2.0
NOW = 100.0


def built_fleet():
    """``p``: emulated, 16 slots + 4 queued across 2 replicas (8 + 2 each); ``api``: a provider API
    with 16 slots whatever its adapter replicas; ``v``: vLLM, 10 slots across 3 replicas."""
    return fleet(
        substrate("p").capacity(16, queued=4).replicas(2),
        substrate("api").kind("openai_compatible").capacity(16).replicas(2),
        substrate("v").kind("vllm").capacity(10).replicas(3),
    ).model(primary="p").tenant().build()


def authority(built):
    return FleetState(built.fleet, built.policy.policy_hash, BOUND, BreakerSettings(), latency_window_s=5.0)


def signals_of(state: FleetState, name: str, now: float = NOW):
    return state.snapshot(now).signals[state._fleet.index[name]]


def beat(state: FleetState, name: str, replica: str, now: float = NOW, in_flight: int = 0, **kw) -> None:
    state.report_substrate(name, replica, SubstrateReport(in_flight=in_flight, **kw), now)


# -- the arithmetic ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, live, expected", [
    ("p", 0, (0, 0)), ("p", 1, (8, 2)), ("p", 2, (16, 4)), ("p", 3, (24, 6)),   # 3: scaled past the config
    ("v", 1, (4, 0)), ("v", 2, (7, 0)), ("v", 3, (10, 0)), ("v", 6, (20, 0)),  # ceil(10 * live / 3)
])
def test_capacity_is_per_replica_slots_times_live_replicas(name, live, expected):
    spec = built_fleet().fleet.substrate(name)
    assert spec.capacity_at(live) == Capacity(*expected)


def test_a_provider_api_keeps_its_fleet_level_limit():
    spec = built_fleet().fleet.substrate("api")
    assert spec.replicas is None
    assert spec.capacity_at(0) is None and spec.capacity_at(5) is None


# -- the authority counts live replicas ----------------------------------------------------------

def test_no_replica_reporting_is_zero_capacity_and_nothing_is_admitted():
    built = built_fleet()
    state = authority(built)
    beat(state, "api", "a1")
    beat(state, "v", "v1", kv_cache_usage=0.0)
    sig = signals_of(state, "p")
    assert sig.capacity == Capacity(0, 0) and sig.in_flight is None
    snap = FleetSnapshot(1, NOW, built.fleet, state.snapshot(NOW).signals, policy=built.policy)
    decision = place(request(now=NOW), snap, built.policy)
    assert decision.substrate != "p"
    assert next(c for c in decision.candidates if c.name == "p").code is not None
    assert state.status(NOW)["substrates"][0]["capacity"]["max_concurrent"] == 0


def test_each_replica_that_reports_adds_its_slots_and_silent_ones_take_them_away():
    state = authority(built_fleet())
    beat(state, "p", "r1")
    assert signals_of(state, "p").capacity == Capacity(8, 2)
    beat(state, "p", "r2")
    assert signals_of(state, "p").capacity == Capacity(16, 4)
    beat(state, "p", "r3")  # the platform team scaled past the config's count: it counts too
    assert signals_of(state, "p").capacity == Capacity(24, 6)
    later = NOW + BOUND + 0.5
    beat(state, "p", "r1", now=later)  # r2 and r3 went silent: their reports expire
    assert signals_of(state, "p", later).capacity == Capacity(8, 2)


def test_a_replica_serve_is_stopping_adds_no_capacity_while_its_load_still_counts():
    state = authority(built_fleet())
    for r, n in (("r1", 3), ("r2", 4), ("r3", 5)):
        beat(state, "p", r, in_flight=n)
    assert signals_of(state, "p").capacity == Capacity(24, 6)
    state.set_serve_replicas("p", target=1, starting=0, stopping=frozenset({"r2", "r3"}))
    sig = signals_of(state, "p", NOW + 0.1)
    assert sig.capacity == Capacity(8, 2)
    assert sig.in_flight.value == 12.0  # its draining requests still occupy the substrate
    counts = state.status(NOW + 0.1)["substrates"][0]["replicas_now"]
    assert counts == {"live": 1, "stopping": 2, "starting": 0, "target": 1}


def test_replicas_starting_are_shown_and_not_admitted_to():
    state = authority(built_fleet())
    beat(state, "p", "r1")
    state.set_serve_replicas("p", target=3, starting=2, stopping=frozenset())
    status = state.status(NOW)["substrates"][0]
    assert status["replicas_now"] == {"live": 1, "stopping": 0, "starting": 2, "target": 3}
    assert status["capacity"]["max_concurrent"] == 8 and status["capacity"]["per_replica_concurrent"] == 8.0


def test_one_report_may_speak_for_every_configured_replica():
    """The replay's simulator reports each substrate once for all its replicas."""
    state = authority(built_fleet())
    beat(state, "p", "replica-0", replicas=2)
    assert signals_of(state, "p").capacity == Capacity(16, 4)


def test_a_provider_api_with_one_adapter_replica_reporting_admits_its_whole_limit():
    built = built_fleet()
    state = authority(built)
    beat(state, "api", "a1")
    sig = signals_of(state, "api")
    assert sig.capacity is None
    assert limits(built.fleet.substrate("api"), sig) == (16, 0)


# -- placement admits what is live ---------------------------------------------------------------

def _admitted(built, state, in_flight: int, now: float = NOW) -> bool:
    state.report_ingress("i1", {"p": in_flight}, [], now)
    snap = FleetSnapshot(1, now, built.fleet, state.snapshot(now).signals, policy=built.policy)
    decision = place(request(now=now), snap, built.policy)
    verdict = next(c for c in decision.candidates if c.name == "p")
    return verdict.code is None


@pytest.mark.parametrize("live, in_flight, admitted", [
    (1, 9, True), (1, 10, False),    # one replica: 8 running + 2 queued
    (2, 19, True), (2, 20, False),   # the declared 16 + 4
    (3, 29, True), (3, 30, False),   # scaled to three: 24 + 6
])
def test_admission_follows_the_live_capacity(live, in_flight, admitted):
    built = built_fleet()
    state = authority(built)
    for i in range(live):
        beat(state, "p", f"r{i}")
    assert _admitted(built, state, in_flight) is admitted


def test_admission_rejects_at_capacity_with_the_live_limit_in_the_reason():
    built = built_fleet()
    state = authority(built)
    beat(state, "p", "r0")
    state.report_ingress("i1", {"p": 10}, [], NOW)
    snap = FleetSnapshot(1, NOW, built.fleet, state.snapshot(NOW).signals, policy=built.policy)
    verdict = next(c for c in place(request(now=NOW), snap, built.policy).candidates if c.name == "p")
    assert verdict.code is RejectionCode.CAPACITY and verdict.reason.endswith(">= 10")


def test_grants_split_the_live_capacity_among_ingress_replicas():
    built = built_fleet()
    state = authority(built)
    beat(state, "p", "r0")
    for i in ("i1", "i2", "i1"):  # a replica is granted slots at its sync once another is live
        state.report_ingress(i, {"p": 0}, [], NOW)
    grants = state.snapshot(NOW).grants
    assert grants["i1"]["p"] + grants["i2"]["p"] <= 10  # 8 + 2 of one replica, not the declared 16 + 4


def test_an_ingress_replica_saying_goodbye_gives_its_grant_back_at_once_but_not_with_requests_in_flight():
    """A replica Serve drained in a rollout says goodbye: the other is granted every free slot at
    its next sync, not half of them until the bound drops the silent one. A replica whose last
    report still held requests is kept: those may still run, and their counts must stay."""
    built = built_fleet()
    state = authority(built)
    beat(state, "p", "r0")
    for i in ("i1", "i2", "i1", "i2"):
        state.report_ingress(i, {"p": 0}, [], NOW)
    split = state.snapshot(NOW).grants["i2"]["p"]
    assert split < 10
    assert state.leave_ingress("i1")
    state.report_ingress("i2", {"p": 0}, [], NOW + 0.1)
    snap = state.snapshot(NOW + 0.1)
    assert snap.grants["i2"]["p"] == 10 and "i1" not in snap.grants
    assert len(state.status(NOW + 0.1)["ingress"]) == 1

    state.report_ingress("i3", {"p": 3}, [], NOW + 0.2)  # leaves with 3 requests still in flight
    assert not state.leave_ingress("i3")
    state.report_ingress("i2", {"p": 0}, [], NOW + 0.3)
    assert state.snapshot(NOW + 0.3).signals[0].in_flight.value == 3.0
    assert not state.leave_ingress("unknown")


# -- status, metrics and the hardware's cost follow the replicas -------------------------------------

def test_owned_hardware_cost_follows_live_replica_seconds():
    from inferplane.telemetry.cost import usd_per_replica_second

    built = fleet(substrate("p").capacity(16).replicas(2).cost(gpu_hour=3.6, gpus=1),
                  substrate("api").kind("openai_compatible").capacity(16)).model(primary="p").tenant().build()
    spec = built.fleet.substrate("p")
    assert usd_per_replica_second(spec) == pytest.approx(0.001)  # one GPU at $3.60 an hour
    assert usd_per_replica_second(built.fleet.substrate("api")) == 0.0
    state = authority(built)
    beat(state, "p", "r1", now=0.0)
    state.snapshot(0.0)
    assert state.replica_seconds(0.0)["p"] == 0.0
    for t in (0.5, 1.0, 1.5):  # one replica for 2 s
        beat(state, "p", "r1", now=t)
    state.snapshot(2.0)
    assert state.replica_seconds(2.0)["p"] == pytest.approx(2.0)
    for t in (2.0, 2.5, 3.0, 3.5):  # two for 2 s more
        beat(state, "p", "r1", now=t)
        beat(state, "p", "r2", now=t)
    state.snapshot(3.5)
    assert state.replica_seconds(4.0)["p"] == pytest.approx(6.0)


def test_metrics_show_replicas_by_state_capacity_and_owned_cost():
    from prometheus_client import generate_latest

    from inferplane.telemetry.metrics import PlaneMetrics

    built = fleet(substrate("p").capacity(16, queued=4).replicas(2).cost(gpu_hour=3.6, gpus=1),
                  substrate("api").kind("openai_compatible").capacity(16)).model(primary="p").tenant().build()
    state = authority(built)
    beat(state, "p", "r1", now=0.0)
    beat(state, "api", "a1", now=0.0)
    state.set_serve_replicas("p", target=3, starting=2, stopping=frozenset())
    published = state.snapshot(0.0)
    state.replica_seconds(0.0)
    metrics = PlaneMetrics()
    metrics.set_signals(FleetSnapshot(published.version, published.taken_at_s, built.fleet, published.signals), 0.0)
    metrics.set_replicas({n: c for n, (c, _) in state.capacities().items()}, state.replica_seconds(10.0))
    text = generate_latest(metrics.registry).decode()
    for line in ('inferplane_substrate_replicas{state="live",substrate="p"} 1.0',
                 'inferplane_substrate_replicas{state="starting",substrate="p"} 2.0',
                 'inferplane_substrate_replicas{state="target",substrate="p"} 3.0',
                 'inferplane_substrate_capacity_requests{limit="concurrent",substrate="p"} 8.0',
                 'inferplane_substrate_capacity_requests{limit="queued",substrate="p"} 2.0',
                 'inferplane_substrate_capacity_requests{limit="concurrent",substrate="api"} 16.0',
                 'inferplane_substrate_replica_seconds_total{substrate="p"} 10.0',
                 'inferplane_substrate_owned_cost_usd_total{substrate="p"} 0.01'):
        assert line in text, line
    assert 'inferplane_substrate_replica_seconds_total{substrate="api"}' not in text


# -- scaling from the dashboard: external scaling unless something autoscales ----------------------

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("config, ingress_autoscales", [("local.yaml", False), ("enterprise.example.yaml", False),
                                                      ("enterprise.example.yaml", True)])
def test_the_application_is_scaled_externally_unless_the_ingress_autoscales(config, ingress_autoscales, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from inferplane.cli.deploy import serve_config
    from inferplane.cli.validate import summary
    from inferplane.config import load_config
    from inferplane.config.sizing import external_scaling, plane_autoscaled

    path = CONFIGS / config
    if ingress_autoscales:
        text = path.read_text().replace("\ningress:\n", "\ningress:\n  replicas: {autoscaling: {min_replicas: 1, "
                                        "max_replicas: 2, target_ongoing_requests: 8}}\n", 1)
        path = tmp_path / config
        path.write_text(text)
    path = str(path)
    cfg = load_config(path)
    autoscaled = {s.name for s in cfg.substrates if s.settings.replicas.autoscaling is not None}
    assert bool(autoscaled) is (config == "enterprise.example.yaml")  # the shipped configs cover both
    enabled, why = external_scaling(cfg)
    assert enabled is not ingress_autoscales
    # the plane scales the autoscaled substrates exactly when the application is scaled externally
    assert plane_autoscaled(cfg) == (frozenset() if ingress_autoscales else autoscaled)
    doc = serve_config(path, "inferplane", gpu=False)
    assert doc["applications"][0]["external_scaler_enabled"] is enabled
    for dep in doc["applications"][0]["deployments"]:
        # Serve gets an autoscaling config only when its own autoscaler scales the deployment
        assert ("autoscaling_config" in dep) is (dep["name"] in autoscaled and ingress_autoscales)
    ServeDeploySchema(**doc)  # Serve refuses external scaling beside autoscaling: both must pass
    assert f"scaling: {why}" in summary(path)


def test_status_shows_capacity_now_with_replicas_live_starting_and_target():
    from inferplane.cli.status import render

    state = authority(built_fleet())
    beat(state, "p", "r1")
    beat(state, "api", "a1")
    state.set_serve_replicas("p", target=3, starting=2, stopping=frozenset())
    rows = {line.split()[0]: line for line in render(state.status(NOW)).splitlines()
            if line.split() and line.split()[0] in ("p", "api", "v")}
    assert "8+2 (1/2/3)" in rows["p"]       # one replica's slots admitted; two starting, not admitted
    assert "16+0 fleet" in rows["api"]      # a provider API's limit does not follow its replicas
    assert "0+0 (0/-/-)" in rows["v"]       # nothing live, and Serve not asked (no actor here)


def test_a_stopped_replica_serve_no_longer_lists_stays_out_until_its_last_report_expires():
    state = authority(built_fleet())
    beat(state, "p", "r1")
    beat(state, "p", "r2")
    state.set_serve_replicas("p", target=1, starting=0, stopping=frozenset({"r2"}))
    assert signals_of(state, "p", NOW + 0.1).capacity == Capacity(8, 2)
    state.set_serve_replicas("p", target=1, starting=0, stopping=frozenset())  # r2 gone from Serve's list
    assert signals_of(state, "p", NOW + 0.2).capacity == Capacity(8, 2)      # its report is still fresh
