"""The same vLLM CPU engine and model served plainly and through the plane, side by side.

One plane (``configs/local.yaml`` reduced to its vLLM substrate: the real engine on CPU serving
SmolLM2-135M-Instruct) and a plain Serve app whose ingress holds a handle to the plane's
``local-vllm`` deployment: the same engine, the same replica. Streamed requests, alternating
between the two paths round by round; output tokens per second from the usage chunks, time to
first token from the first content chunk.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from inferplane.benchmarks.overhead import KEY, PLAIN_APP

PLANE_APP = "bench-vllm-plane"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"


async def _stream_load(url: str, headers: dict, body: dict, concurrency: int, requests: int):
    import httpx

    ttfts: list[float] = []
    tokens = 0
    errors = 0
    remaining = requests
    async with httpx.AsyncClient(timeout=300) as client:
        async def worker() -> None:
            nonlocal remaining, tokens, errors
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                first = None
                try:
                    async with client.stream("POST", url, json=body, headers=headers) as r:
                        if r.status_code != 200:
                            errors += 1
                            continue
                        async for line in r.aiter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            chunk = json.loads(line[6:])
                            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                                first = time.perf_counter() - t0
                            if chunk.get("usage"):
                                tokens += chunk["usage"]["completion_tokens"]
                except Exception:
                    errors += 1
                if first is not None:
                    ttfts.append(first)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return tokens, wall, ttfts, errors


def vllm_only_config(audit_dir: str, metrics_port: int) -> str:
    """``configs/local.yaml`` with only its vLLM substrate, so that every request the plane places
    runs on the same engine as the plain path's (no spillover to the emulated substrates)."""
    import yaml

    doc = yaml.safe_load(CONFIG.read_text())
    doc["substrates"] = [s for s in doc["substrates"] if s["kind"] == "vllm"]
    served = {m["name"] for s in doc["substrates"] for m in s["models"]}
    doc["models"] = [m for m in doc["models"] if m["name"] in served]
    doc["telemetry"] = {"audit_dir": audit_dir, "metrics_port": metrics_port}
    return yaml.safe_dump(doc, sort_keys=False)


def measure_vllm(concurrency: int = 16, requests: int = 48, max_tokens: int = 64, rounds: int = 2,
                 echo=print) -> dict:
    from deployments import runtime
    from inferplane.cli.models import prepare_config_models

    runtime.loopback_environment()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from deployments.plain import build_plain_app

    prepare_config_models(str(CONFIG), echo=lambda line: echo("  " + line))
    port = runtime.free_loopback_port()
    text = vllm_only_config(tempfile.mkdtemp(prefix="bench-audit-"), runtime.free_loopback_port())
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        runtime.deploy(text, PLANE_APP, "127.0.0.1", port)
        serve.run(build_plain_app(PLANE_APP, ["local-vllm"], "smollm2-135m-instruct"), name=PLAIN_APP,
                  route_prefix="/plain", blocking=False)
        url = f"http://127.0.0.1:{port}"
        runtime.wait_ready(url, timeout_s=300)
        body = {"model": "smollm2-135m-instruct", "max_tokens": max_tokens, "temperature": 0.8, "stream": True,
                "stream_options": {"include_usage": True}, "messages": [
                    {"role": "user", "content": "Write a short story about a lighthouse keeper."}]}
        targets = {"plain": (f"{url}/plain/v1/chat/completions", {}),
                   "plane": (f"{url}/v1/chat/completions", {"Authorization": f"Bearer {KEY}"})}
        for name, (u, h) in targets.items():  # warm-up
            asyncio.run(_stream_load(u, h, dict(body, max_tokens=8), 4, 8))
        acc = {t: {"tokens": 0, "wall": 0.0, "ttfts": [], "errors": 0} for t in targets}
        for r in range(rounds):
            for t in (["plain", "plane"] if r % 2 == 0 else ["plane", "plain"]):
                u, h = targets[t]
                tokens, wall, ttfts, errors = asyncio.run(_stream_load(u, h, body, concurrency, requests))
                a = acc[t]
                a["tokens"] += tokens
                a["wall"] += wall
                a["ttfts"] += ttfts
                a["errors"] += errors
                echo(f"  round {r + 1}/{rounds} {t:<5} {tokens / wall:7.1f} tok/s  "
                     f"ttft p50 {statistics.median(ttfts) * 1000:6.0f} ms  errors {errors}")
        out = {"concurrency": concurrency, "requests_per_round": requests, "max_tokens": max_tokens}
        for t, a in acc.items():
            xs = sorted(a["ttfts"])
            out[t] = {"tokens_per_s": a["tokens"] / a["wall"], "ttft_p50_ms": statistics.median(xs) * 1000,
                      "ttft_p90_ms": xs[int(0.9 * (len(xs) - 1))] * 1000, "errors": a["errors"]}
        out["tokens_per_s_ratio"] = out["plane"]["tokens_per_s"] / out["plain"]["tokens_per_s"]
        out["ttft_p50_ratio"] = out["plane"]["ttft_p50_ms"] / out["plain"]["ttft_p50_ms"]
        return out
    finally:
        runtime.teardown(PLANE_APP)
