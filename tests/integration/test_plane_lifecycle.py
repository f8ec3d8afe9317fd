"""What a request leaves behind when its client gives up, and what a redeploy leaves behind, on a
real Ray Serve with emulated substrates.

- Clients that leave mid-dispatch (non-streamed, before any byte) and mid-stream (after two lines)
  must leave no in-flight count behind, in the ingress replicas' reports or in the substrates' own,
  and each such request has exactly one audit row (499, ``client_disconnected``).
- A redeploy of a changed config leaves one placement actor, the same process with the new config
  applied, and ``status`` reads it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest
import ray

from inferplane.config import build, parse_config
from inferplane.telemetry.audit import read_audit
from tests.integration.conftest import EU_KEY, GLOBAL_KEY

pytestmark = pytest.mark.integration

LONG = {"model": "smollm2", "messages": [{"role": "user", "content": "Count slowly."}], "max_tokens": 400}


def _status(plane) -> dict:
    from deployments.placement_actor import current_actor

    return ray.get(current_actor(plane.app_name).status.remote(), timeout=10)


def _in_flight(status: dict) -> dict[str, float]:
    """Every in-flight count the authority knows: per ingress replica and substrate, and each
    substrate replica's own."""
    out: dict[str, float] = {}
    for ing in status["ingress"]:
        for name, n in ing["in_flight"].items():
            out[f"{ing['ingress']}/{name}"] = n
    for sub in status["substrates"]:
        for rep in sub["replicas"]:
            out[f"{sub['name']}/{rep['replica']}"] = rep["in_flight"]
    return out


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        ok, last = predicate()
        if ok:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: still {last!r} after {timeout_s:.0f}s")


async def _abandon(plane, key: str, n_plain: int, n_streams: int) -> int:
    """``n_plain`` non-streamed requests whose clients give up after 0.3 s, and ``n_streams`` streams
    dropped after two lines. Returns how many streams got their first two lines."""
    async def plain(client: httpx.AsyncClient) -> None:
        with pytest.raises(httpx.TimeoutException):
            await client.post(f"{plane.url}/v1/chat/completions", json=LONG,
                              headers={"Authorization": f"Bearer {key}"}, timeout=0.3)

    async def stream(client: httpx.AsyncClient) -> int:
        async with client.stream("POST", f"{plane.url}/v1/chat/completions", json=dict(LONG, stream=True),
                                 headers={"Authorization": f"Bearer {key}"}, timeout=30) as r:
            assert r.status_code == 200, await r.aread()
            lines = 0
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    lines += 1
                    if lines == 2:
                        return 1  # leaving the block closes the connection mid-stream
        return 0

    async with httpx.AsyncClient() as client:
        results = await asyncio.gather(*[plain(client) for _ in range(n_plain)],
                                       *[stream(client) for _ in range(n_streams)])
    return sum(r for r in results if r)


def test_clients_that_leave_release_every_count_and_leave_one_row_each(emulated_plane):
    plane = emulated_plane
    since = datetime.now(UTC)

    def all_released():
        counts = _in_flight(_status(plane))
        return bool(counts) and not any(counts.values()), counts

    # The EU tenant's two pools hold 4 + 2 slow (100 tokens/s) requests: each round fills them with
    # three that give up mid-dispatch and three streams dropped after two lines.
    rounds = 3
    for _ in range(rounds):
        assert asyncio.run(_abandon(plane, EU_KEY, 3, 3)) == 3
        _wait_for(all_released, 30, "in-flight counts after the clients left")

    def rows():
        got = [r for r in read_audit(plane.audit_dir, since=since).to_pylist() if r["time"] >= since]
        return len(got) >= 6 * rounds, got
    got = _wait_for(rows, 30, "audit rows of the abandoned requests")
    assert len(got) == 6 * rounds, [(r["status_code"], r["error_code"]) for r in got]
    assert len({r["request_id"] for r in got}) == 6 * rounds  # exactly one row per request
    assert {(r["status_code"], r["error_code"]) for r in got} == {(499, "client_disconnected")}
    assert {r["substrate"] for r in got} <= {"local-gpu-emulated", "sovereign-de-emulated"}
    # Streams record what was streamed before the client left.
    assert sum(1 for r in got if r["streamed"] and (r["output_tokens"] or 0) >= 1) == 3 * rounds


def test_redeploy_of_a_changed_config_leaves_one_actor_and_status_reads_it(emulated_plane):
    from deployments import runtime
    from deployments.placement_actor import NAMESPACE, current_actor

    def actors() -> list[str]:
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == NAMESPACE and a["name"].startswith("inferplane-placement-")]

    plane = emulated_plane
    before = actors()
    assert len(before) == 1
    pid = ray.get(current_actor(plane.app_name).pid.remote(), timeout=10)
    changed = plane.config_text.replace("ttft_deadline_ms: 60000, e2e_deadline_ms: 600000",
                                        "ttft_deadline_ms: 61000, e2e_deadline_ms: 600000", 1)
    assert changed != plane.config_text
    new_hash = build(parse_config(changed, source="<changed>")).policy.policy_hash
    port = int(plane.url.rsplit(":", 1)[1])
    runtime.deploy(changed, plane.app_name, "127.0.0.1", port)
    try:
        # The config is applied to the running actor: status reads it at once, and no second actor appears.
        assert _status(plane)["policy_hash"] == new_hash
        r = _wait_for(lambda: (lambda r: (r.status_code == 200, r))(httpx.post(
            f"{plane.url}/v1/chat/completions", json=dict(LONG, max_tokens=4),
            headers={"Authorization": f"Bearer {GLOBAL_KEY}"}, timeout=30)), 60, "an answer after the redeploy")
        assert r.status_code == 200, r.text
        assert actors() == before
        assert ray.get(current_actor(plane.app_name).pid.remote(), timeout=10) == pid  # the same process
    finally:
        plane.config_text = changed
