"""Issue #15, live: the platform team scales a substrate from the Ray dashboard during traffic, and
placement follows. Real Ray (with its dashboard, on loopback) and real Serve; every substrate is
emulated (``emulated.yaml``: ``local-gpu-emulated`` is the primary, 4 slots on its one replica).

1 -> 3 replicas through the dashboard's Serve API (``POST .../deployments/{name}/scale``): the plane's
capacity becomes 3 x 4 once the new replicas report, and the primary takes more of the same load
(fewer spills). 3 -> 1 with requests in flight: every request is answered 200 (none lost, none
refused for a replica going away). The time from the scale call to full admission is printed, not
asserted."""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial

import httpx
import pytest
import ray

from tests.integration.conftest import EMULATED_CONFIG, GLOBAL_KEY, _deploy, free_port

pytestmark = pytest.mark.integration

APP = "inferplane-scaling"
POOL = "local-gpu-emulated"
PER_REPLICA = 4
CONCURRENCY = 12
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "Scale me."}], "max_tokens": 60}


@pytest.fixture(scope="module")
def dashboard_plane():
    """Ray with its dashboard on a free loopback port (the scale API lives there), and the plane."""
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                   dashboard_port=free_port(), logging_level="WARNING", log_to_driver=False)
    plane, teardown = _deploy(EMULATED_CONFIG.read_text(), APP, 120)
    try:
        yield plane, f"http://{ctx.dashboard_url}"
    finally:
        teardown()
        ray.shutdown()


class Load:
    """``CONCURRENCY`` clients, each sending the next request as soon as its last one ends, from a
    thread of its own; every answer is kept as (sent at, status, substrate, spillover)."""

    def __init__(self, url: str, sla_class: str | None = None) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {GLOBAL_KEY}"}
        if sla_class is not None:
            self.headers["x-inferplane-sla-class"] = sla_class
        self.results: list[tuple[float, int, str | None, str | None, int]] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            await asyncio.gather(*[self._client(client) for _ in range(CONCURRENCY)])

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            self.sent += 1
            try:
                r = await client.post(f"{self.url}/v1/chat/completions", json=BODY, headers=self.headers)
                self.results.append((t, r.status_code, r.headers.get("x-inferplane-substrate"),
                                     r.headers.get("x-inferplane-spillover"), int(r.headers.get("x-inferplane-held-ms", 0))))
            except httpx.HTTPError as exc:  # counted as lost: no answer at all
                self.results.append((t, -1, type(exc).__name__, None, 0))

    def window(self, start: float, end: float) -> list[tuple[float, int, str | None, str | None, int]]:
        return [r for r in self.results if start <= r[0] < end]


def substrate_status(app: str, name: str) -> dict:
    """Substrate ``name``'s entry in the status of application ``app``'s placement actor."""
    from deployments.placement_actor import current_actor

    status = ray.get(current_actor(app).status.remote(), timeout=10)
    return next(s for s in status["substrates"] if s["name"] == name)


def wait_for_substrate(app: str, name: str, predicate, timeout_s: float, what: str) -> tuple[float, dict]:
    """Poll the substrate's status every 0.1 s until ``predicate(status)``; (when, status)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = substrate_status(app, name)
        if predicate(s):
            return time.monotonic(), s
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s:.0f}s: {substrate_status(app, name)}")


_pool_status = partial(substrate_status, APP, POOL)
_wait_for = partial(wait_for_substrate, APP, POOL)


def _scale(dashboard: str, n: int) -> httpx.Response:
    return httpx.post(f"{dashboard}/api/v1/applications/{APP}/deployments/{POOL}/scale",
                      json={"target_num_replicas": n}, timeout=30)


def _on_pool(rows) -> float:
    ok = [r for r in rows if r[1] == 200]
    return sum(1 for r in ok if r[2] == POOL) / max(1, len(ok))


def _metric(url: str, name: str, labels: str) -> float | None:
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith(f"{name}{{") and all(part in line for part in labels.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_scaling_from_the_dashboard_changes_what_placement_admits(dashboard_plane):
    plane, dashboard = dashboard_plane
    _, before = _wait_for(lambda s: s["replicas_now"]["live"] == 1, 30, "one live replica")
    assert before["capacity"]["max_concurrent"] == PER_REPLICA and before["capacity"]["follows_replicas"]

    load = Load(plane.url).start()
    try:
        time.sleep(2.0)  # warm-up: the first answers are slower while everything starts
        t1 = time.monotonic()
        time.sleep(8.0)
        one_replica = load.window(t1, time.monotonic())

        # -- scale up from the dashboard during traffic
        t_scale = time.monotonic()
        r = _scale(dashboard, 3)
        assert r.status_code == 200, r.text  # 412 without external_scaler_enabled
        t_first, _ = _wait_for(lambda s: s["replicas_now"]["live"] >= 2, 90, "a new replica reporting")
        t_full, scaled = _wait_for(lambda s: s["replicas_now"]["live"] == 3, 90, "three live replicas")
        assert scaled["capacity"]["max_concurrent"] == 3 * PER_REPLICA
        assert scaled["replicas_now"]["target"] == 3
        print(f"\nscale 1 -> 3: first new replica reporting {t_first - t_scale:.2f} s after the scale call, "
              f"full admission (capacity {3 * PER_REPLICA}) {t_full - t_scale:.2f} s after it")
        time.sleep(1.0)  # a snapshot sync or two
        assert _metric(plane.metrics_url, "inferplane_substrate_capacity_requests",
                       f'substrate="{POOL}",limit="concurrent"') == 3 * PER_REPLICA
        assert _metric(plane.metrics_url, "inferplane_substrate_replicas", f'substrate="{POOL}",state="live"') == 3
        t3 = time.monotonic()
        time.sleep(8.0)
        three_replicas = load.window(t3, time.monotonic())

        # -- scale down with requests in flight
        t_down = time.monotonic()
        r = _scale(dashboard, 1)
        assert r.status_code == 200, r.text
        t_one, after = _wait_for(lambda s: s["replicas_now"]["live"] == 1 and s["replicas_now"]["target"] == 1,
                                 60, "back to one live replica")
        assert after["capacity"]["max_concurrent"] == PER_REPLICA
        print(f"scale 3 -> 1: capacity back to {PER_REPLICA} {t_one - t_down:.2f} s after the scale call")
        time.sleep(4.0)  # the stopped replicas drain meanwhile; traffic keeps coming
    finally:
        load.stop()

    answered = load.results
    assert len(answered) == load.sent  # every request came back with an answer
    statuses = {}
    for row in answered:
        statuses[row[1]] = statuses.get(row[1], 0) + 1
    around_down = load.window(t_down - 1.0, time.monotonic())
    share_1, share_3 = _on_pool(one_replica), _on_pool(three_replicas)
    print(f"requests: {len(answered)} answered {statuses}; on {POOL}: {share_1:.0%} of "
          f"{len(one_replica)} with 1 replica, {share_3:.0%} of {len(three_replicas)} with 3; "
          f"{len(around_down)} sent during the scale-down")
    assert statuses == {200: len(answered)}, statuses  # none lost, none refused (no 429/503, no 5xx)
    assert around_down  # the scale-down really happened under traffic
    assert share_3 > share_1  # more admitted to the primary: fewer spills
    spills_1 = sum(1 for r in one_replica if r[3] == "true") / len(one_replica)
    spills_3 = sum(1 for r in three_replicas if r[3] == "true") / len(three_replicas)
    print(f"spilled: {spills_1:.0%} with 1 replica, {spills_3:.0%} with 3")
    assert spills_3 < spills_1
