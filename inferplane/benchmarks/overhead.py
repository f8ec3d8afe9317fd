"""The plane's cost against a plain Ray Serve app over the same backends, in one run, alternately.

(a) ``plain``: ``deployments.plain`` -- a FastAPI ingress with handles to the backends, picking
    one at random, a minimal OpenAI-style endpoint (no auth, no placement, no telemetry), with as
    many ingress replicas as the plane's;
(b) ``plane``: the inferplane ingress (auth, parse, place on the snapshot, dispatch, audit row,
    metrics) over the same backend deployments.

The backends are emulated substrates with zero latency, so the figures are the two request paths'
own cost. Both apps sit behind the same Serve proxy on loopback; the load generator (httpx, in
this process) sends the same bounded load to each, alternating round by round so that machine
noise falls on both. Requests per second and latencies count successful responses only; errors
are reported per side. ``bench vllm`` does the same over one real vLLM CPU engine.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass

KEY = "sk-inferplane-demo-global"
KEY_SHA256 = "0b4063804acde5ee6ab354a6fb2fbcb7c686b98781e227c8e35edb535dbae21c"
PLANE_APP = "bench-plane"
PLAIN_APP = "bench-plain"


def zero_latency_config(backends: int, audit_dir: str, metrics_port: int) -> str:
    subs = []
    for i in range(backends):
        subs.append(f"""  - name: backend-{i}-emulated
    class: gpu_cluster
    kind: emulated
    models: [{{name: bench, context_window_tokens: 8192}}]
    topology: {{region: local, zone: local-a}}
    jurisdiction: DE
    capacity: {{tier: reserved, max_concurrent_requests: 100000}}
    latency: {{base_ttft_ms: 0, prefill_tokens_per_s: 1.0e9, decode_tokens_per_s: 1.0e9}}
    emulated:
      emulates: zero-latency backend (benchmark)
      physics: {{ttft_ms: 0, prefill_tokens_per_s: 1.0e9, decode_tokens_per_s: 1.0e9, max_concurrency: 100000}}
      replicas: {{num_replicas: 1}}
""")
    return f"""schema_version: 1
ingress:
  topology: {{region: local, zone: local-a}}
sla_classes:
  - {{name: interactive, ttft_deadline_ms: 10000, e2e_deadline_ms: 60000}}
substrates:
{''.join(subs)}models:
  - {{name: bench, primary_substrate: backend-0-emulated}}
tenants:
  - name: bench
    api_keys_sha256: [{KEY_SHA256}]
    allowed_jurisdictions: ["*"]
    default_sla_class: interactive
policy:
  spillover: {{mode: scored}}
telemetry: {{audit_dir: {audit_dir}, metrics_port: {metrics_port}}}
"""


@dataclass
class LoadResult:
    target: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    latencies_s: list[float]
    """Of successful requests only: a fast error is not a fast answer."""

    @property
    def ok(self) -> int:
        return self.requests - self.errors

    @property
    def rps(self) -> float:
        """Successful responses per second; failed ones do not count."""
        return self.ok / self.wall_s

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def _load(url: str, concurrency: int, requests: int, body: dict, headers: dict,
                timeout_s: float) -> tuple[int, float, list[float]]:
    import httpx

    latencies: list[float] = []
    errors = 0
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json=body, headers=headers)
                    ok = r.status_code == 200
                except Exception:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return errors, wall, latencies


def run_load(target: str, url: str, concurrency: int, requests: int, body: dict, headers: dict) -> LoadResult:
    errors, wall, lat = asyncio.run(_load(url, concurrency, requests, body, headers, timeout_s=60.0))
    return LoadResult(target, concurrency, requests, errors, wall, lat)


def start(backends: int = 4, ingress_replicas: int = 1):
    """Start Ray, deploy the plane and the plain app over the same backends; returns (url, stop)."""
    from deployments import runtime

    runtime.loopback_environment()
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from deployments.plain import build_plain_app

    port = runtime.free_loopback_port()
    text = zero_latency_config(backends, tempfile.mkdtemp(prefix="bench-audit-"), runtime.free_loopback_port())
    if ingress_replicas != 1:
        text = text.replace("ingress:\n", f"ingress:\n  replicas: {{num_replicas: {ingress_replicas}}}\n", 1)
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    runtime.deploy(text, PLANE_APP, "127.0.0.1", port)
    names = [f"backend-{i}-emulated" for i in range(backends)]
    serve.run(build_plain_app(PLANE_APP, names, "bench", replicas=ingress_replicas), name=PLAIN_APP,
              route_prefix="/plain", blocking=False)
    url = f"http://127.0.0.1:{port}"
    runtime.wait_ready(url, timeout_s=120)

    def stop() -> None:
        runtime.teardown(PLANE_APP)

    return url, stop


def measure_overhead(concurrencies: list[int], requests: int, rounds: int = 2, backends: int = 4,
                     max_tokens: int = 8, ingress_replicas: int = 1, echo=print) -> list[dict]:
    url, stop = start(backends, ingress_replicas)
    body = {"model": "bench", "messages": [{"role": "user", "content": "hello " * 40}], "max_tokens": max_tokens}
    targets = {"plain": (f"{url}/plain/v1/chat/completions", {}),
               "plane": (f"{url}/v1/chat/completions", {"Authorization": f"Bearer {KEY}"})}
    out = []
    try:
        for target, (u, h) in targets.items():  # warm-up both paths
            run_load(target, u, 8, 200, body, h)
        for c in concurrencies:
            per_round = max(1, requests // rounds)
            acc: dict[str, list[LoadResult]] = {"plain": [], "plane": []}
            for r in range(rounds):
                order = ["plain", "plane"] if r % 2 == 0 else ["plane", "plain"]
                for target in order:
                    u, h = targets[target]
                    res = run_load(target, u, c, per_round, body, h)
                    acc[target].append(res)
                    echo(f"  c={c:<3} round {r + 1}/{rounds} {target:<5} {res.rps:7.1f} rps "
                         f"p50 {res.pct(0.5) * 1000:6.1f} ms  errors {res.errors}")
            row = {"concurrency": c}
            for target, results in acc.items():
                lat = [x for res in results for x in res.latencies_s]
                merged = LoadResult(target, c, sum(x.requests for x in results), sum(x.errors for x in results),
                                    sum(x.wall_s for x in results), lat)
                row[target] = {"rps": merged.rps, "p50_ms": merged.pct(0.5) * 1000, "p99_ms": merged.pct(0.99) * 1000,
                               "errors": merged.errors, "requests": merged.requests}
            row["throughput_ratio"] = row["plane"]["rps"] / row["plain"]["rps"]
            row["p50_ratio"] = row["plane"]["p50_ms"] / row["plain"]["p50_ms"]
            row["p99_ratio"] = row["plane"]["p99_ms"] / row["plain"]["p99_ms"]
            out.append(row)
    finally:
        stop()
    return out
