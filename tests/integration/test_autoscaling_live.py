"""Issue #15 item 3, live: a substrate autoscaled by the plane on placement demand. Real Ray and
Serve; every substrate emulated (``autoscaling.yaml``: ``local-gpu-emulated`` is the primary, 1-3
replicas of 4 slots, up after 1 s of demand, down after 8 quiet seconds, a manual scale left alone
for 20 s).

A burst of 12 closed-loop clients on one replica of 4 slots: its overflow spills to the burst APIs,
the plane's demand signal (running + held + spilled because full) wants 3 replicas, the placement
actor asks Serve for them (the controller call the dashboard's scale API makes), and placement
admits 3 x 4 once they report. The burst ends: after the quiet period the plane scales back to 1.
Then a scale the plane did not make (the same controller call, as the dashboard makes it) is left
alone for its hold period. Times are printed, not asserted."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import httpx
import pytest
import ray

from tests.integration.conftest import _deploy
from tests.integration.test_scaling_live import Load, substrate_status, wait_for_substrate

pytestmark = pytest.mark.integration

APP = "inferplane-autoscaling"
POOL = "local-gpu-emulated"
PER_REPLICA = 4
CONFIG = Path(__file__).parent / "autoscaling.yaml"


@pytest.fixture(scope="module")
def plane():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    plane, teardown = _deploy(CONFIG.read_text(), APP, 120)
    try:
        yield plane
    finally:
        teardown()
        ray.shutdown()


_pool = partial(substrate_status, APP, POOL)
_wait_for = partial(wait_for_substrate, APP, POOL)


def _metric(url: str, name: str, labels: str) -> float | None:
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith(f"{name}{{") and all(part in line for part in labels.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return None


def _spilled(rows) -> float:
    ok = [r for r in rows if r[1] == 200]
    return sum(1 for r in ok if r[3] == "true") / max(1, len(ok))


def test_a_burst_scales_the_substrate_up_on_placement_demand_and_a_quiet_period_down(plane):
    _, s = _wait_for(lambda s: s["replicas_now"]["live"] == 1 and (s["autoscaler"] or {}).get("target") == 1,
                     30, "one live replica under the autoscaler")
    assert s["capacity"]["max_concurrent"] == PER_REPLICA
    assert s["autoscaler"]["mode"] == "steady"  # no demand: it stays at min_replicas

    load = Load(plane.url).start()
    try:
        t_burst = time.monotonic()
        t_up, up = _wait_for(lambda s: (s["autoscaler"]["target"] or 0) > 1, 30, "the autoscaler scaling up")
        assert up["autoscaler"]["reason"].startswith("up 1 -> ")
        assert up["autoscaler"]["sample"]["overflowed"] > 0 or up["autoscaler"]["sample"]["held"] > 0
        spilled_before = _spilled(load.window(t_burst, t_up))
        t_first, _ = _wait_for(lambda s: s["replicas_now"]["live"] >= 2, 60, "a new replica admitting")
        t_full, full = _wait_for(lambda s: s["replicas_now"]["live"] == 3, 60, "three live replicas")
        assert full["capacity"]["max_concurrent"] == 3 * PER_REPLICA
        assert full["autoscaler"]["target"] == 3 and full["replicas_now"]["target"] == 3
        # Serve's STARTING -> RUNNING, measured by the actor (a replica may report, and be admitted
        # to, a poll or two before Serve calls it RUNNING)
        _, measured = _wait_for(lambda s: s["replica_start_s"] is not None, 15, "a measured replica start")
        time.sleep(1.0)
        assert _metric(plane.metrics_url, "inferplane_substrate_autoscale_replicas",
                       f'substrate="{POOL}",kind="target"') == 3
        assert _metric(plane.metrics_url, "inferplane_substrate_capacity_requests",
                       f'substrate="{POOL}",limit="concurrent"') == 3 * PER_REPLICA
        t3 = time.monotonic()
        time.sleep(6.0)
        spilled_after = _spilled(load.window(t3, time.monotonic()))
    finally:
        load.stop()
    t_quiet = time.monotonic()
    print(f"\nburst: autoscaler asked for {up['autoscaler']['target']} replicas {t_up - t_burst:.2f} s after it "
          f"began ({up['autoscaler']['reason']}); first new replica admitting {t_first - t_burst:.2f} s, "
          f"full admission ({3 * PER_REPLICA}) {t_full - t_burst:.2f} s after it; replica start "
          f"{measured['replica_start_s']['last']:.1f} s (Serve STARTING -> RUNNING)")
    print(f"spilled: {spilled_before:.0%} before the scale-up, {spilled_after:.0%} at 3 replicas")
    assert spilled_before > 0  # the overflow spilled while the substrate scaled up
    assert spilled_after < spilled_before
    assert {r[1] for r in load.results} == {200} and len(load.results) == load.sent

    # -- quiet: down to min_replicas after downscale_delay_s (8 s), not before
    _, waiting = _wait_for(lambda s: s["autoscaler"]["mode"] == "down_pending", 10, "a quiet period")
    assert waiting["autoscaler"]["target"] == 3
    t_down, down = _wait_for(lambda s: s["autoscaler"]["target"] == 1, 40, "the autoscaler scaling down")
    assert t_down - t_quiet >= 8.0 - 1.5  # the quiet period (less a sample interval and the drain of the last requests)
    assert "quiet" in down["autoscaler"]["reason"]
    t_one, one = _wait_for(lambda s: s["replicas_now"]["live"] == 1 and s["replicas_now"]["target"] == 1,
                           60, "one live replica again")
    assert one["capacity"]["max_concurrent"] == PER_REPLICA
    print(f"quiet: scaled down {t_down - t_quiet:.2f} s after the burst ended ({down['autoscaler']['reason']}), "
          f"one replica {t_one - t_quiet:.2f} s after it")

    # -- a scale the plane did not make (what the dashboard's scale API calls) is left alone
    from deployments.placement_actor import _scale_deployment

    _scale_deployment(APP, POOL, 2)
    _, held = _wait_for(lambda s: s["autoscaler"]["mode"] == "manual_hold", 15, "the manual scale being seen")
    assert held["autoscaler"]["target"] == 2 and "someone else" in held["autoscaler"]["reason"]
    _wait_for(lambda s: s["replicas_now"]["live"] == 2, 60, "the manual second replica")
    time.sleep(10.0)  # longer than the quiet period with no demand at all: still 2 (held for 20 s)
    s = _pool()
    assert s["autoscaler"]["target"] == 2 and s["replicas_now"]["target"] == 2


def test_a_class_that_holds_while_scaling_up_waits_for_the_new_replica_instead_of_spilling(plane):
    """``batch`` holds while scaling up (``autoscaling.yaml``); the first test measured a replica's
    start, so the actor now publishes when a starting replica should admit. A burst of batch
    requests on one replica: while the new replica starts, the overflow waits in the hold queue
    (every other substrate closed to it, the decision says why) and goes to the new replica, where
    the interactive overflow of the first test spilled to the APIs."""
    _, s = _wait_for(lambda s: s["replicas_now"]["live"] == 1 and s["autoscaler"]["target"] == 1, 90,
                     "one live replica again (manual hold over, quiet period)")
    assert s["replica_start_s"] is not None  # measured by the first test: holding needs it
    load = Load(plane.url, sla_class="batch").start()
    try:
        t_burst = time.monotonic()
        t_starting, _ = _wait_for(lambda s: (s["replicas_now"]["starting"] or 0) >= 1, 30, "a replica starting")
        t_live, _ = _wait_for(lambda s: s["replicas_now"]["live"] >= 2, 60, "the new replica admitting")
        time.sleep(3.0)
    finally:
        load.stop()
    # Sent after the actor's next poll published the expected start (1 s) and the ingress replicas
    # synced (0.1 s), while the new replica started: none spilled, and some waited for it.
    starting = [r for r in load.window(t_starting + 1.5, t_live) if r[1] == 200]
    before = [r for r in load.window(t_burst, t_starting) if r[1] == 200]
    print(f"\nhold: {len(before)} answered before a replica was starting ({_spilled(before):.0%} spilled), "
          f"{len(starting)} sent while it started ({_spilled(starting):.0%} spilled, "
          f"{sum(1 for r in starting if r[4] > 0)} held up to {max((r[4] for r in starting), default=0)} ms); "
          f"the replica admitted {t_live - t_starting:.1f} s after it was seen starting")
    assert {r[1] for r in load.results} == {200} and len(load.results) == load.sent
    # Held, then served by the pool: without the hold, nothing waits here (the burst APIs have room).
    held = [r for r in load.results if r[4] > 0]
    assert held and all(r[2] == POOL and r[3] != "true" for r in held), held
    # How many were sent while the replica started depends on how fast it starts (one to two
    # seconds here); whichever they were, none spilled.
    assert _spilled(starting) == 0.0
