"""One Serve deployment per substrate, named after it: the platform team scales each from the
Ray dashboard. A replica wraps one adapter, streams its events as plain dicts, and reports the
adapter's load to the PlacementActor every ``HEARTBEAT_S`` (which is also its heartbeat).

Events (dicts, so nothing but data crosses Serve):
    {"t": "delta", "text": str}
    {"t": "done", "finish_reason": str, "prompt_tokens": int, "completion_tokens": int}
    {"t": "error", "code": str, "message": str, "retryable": bool, "status": int|None,
     "retry_after_s": float|None}
An adapter error is an event, not an exception: the ingress decides whether to re-place.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import ray
from ray import serve

from inferplane.config import parse_config
from substrate_adapters.base import ChatTurn, Finished, GenerationRequest, TextDelta
from substrate_adapters.construct import adapter_for
from substrate_adapters.errors import SubstrateError, SubstrateRateLimited

from deployments import node_stats, placement_actor
from inferplane.fleet_state import HEARTBEAT_S

log = logging.getLogger("inferplane.substrate")


def node_identity(topology) -> dict:
    """The Ray node this process runs on and its region, zone and jurisdiction labels."""
    ctx = ray.get_runtime_context()
    labels = ctx.get_node_labels() or {}
    return {"node_id": ctx.get_node_id(), "node_region": labels.get(topology.region_label),
            "node_zone": labels.get(topology.zone_label),
            "node_jurisdiction": labels.get(topology.jurisdiction_label)}


def request_from_payload(payload: dict) -> GenerationRequest:
    return GenerationRequest(
        request_id=payload["request_id"],
        model=payload["model"],
        api=payload["api"],
        messages=tuple(ChatTurn(m["role"], m["content"]) for m in payload.get("messages", ())),
        prompt=payload.get("prompt"),
        max_tokens=payload["max_tokens"],
        temperature=payload.get("temperature"),
        top_p=payload.get("top_p"),
        stop=tuple(payload.get("stop") or ()),
        seed=payload.get("seed"),
    )


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256, health_check_period_s=2)
class SubstrateDeployment:
    def __init__(self, config_text: str, substrate_name: str, app_name: str) -> None:
        cfg = parse_config(config_text, source="<deployed config>")
        self._name = substrate_name
        substrate = next(s for s in cfg.substrates if s.name == substrate_name)
        self._adapter = adapter_for(substrate)
        self._actor = placement_actor.get_or_create(app_name, config_text)
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._node = node_identity(cfg.policy.topology)
        self._gpu = node_stats.GpuMemory()
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._report_loop, name="inferplane-heartbeat", daemon=True)
        self._heartbeat.start()

    def _report_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            report = dataclasses.replace(
                self._adapter.load(), **self._node, gpu_memory_used_ratio=self._gpu.used_ratio(),
                node_memory_used_ratio=node_stats.memory_used_ratio(),
                node_cpu_used_ratio=node_stats.cpu_used_ratio())
            try:
                ray.get(self._actor.report_substrate.remote(self._name, self._replica_id, report), timeout=2.0)
            except Exception as exc:  # the actor restarts; keep beating
                log.debug("heartbeat to placement actor failed: %s", type(exc).__name__)

    async def generate(self, payload: dict):
        try:
            async for event in self._adapter.generate(request_from_payload(payload)):
                if isinstance(event, TextDelta):
                    yield {"t": "delta", "text": event.text}
                elif isinstance(event, Finished):
                    yield {"t": "done", "finish_reason": event.finish_reason,
                           "prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens}
        except SubstrateError as exc:
            yield {"t": "error", "code": type(exc).__name__, "message": str(exc), "retryable": exc.retryable,
                   "status": exc.status,
                   "retry_after_s": exc.retry_after_s if isinstance(exc, SubstrateRateLimited) else None}

    def inject(self, *, slowdown: float | None = None, failure_rate: float | None = None,
               outage: bool | None = None) -> dict:
        """Fault injection for emulated substrates (demos and tests); reached only through a Ray
        handle, never over HTTP. Returns the physics now in force."""
        from substrate_adapters.emulated import EmulatedAdapter

        if not isinstance(self._adapter, EmulatedAdapter):
            raise TypeError(f"{self._name} is not emulated; faults are injected only into emulations")
        if slowdown is not None:
            self._adapter.set_slowdown(slowdown)
        if failure_rate is not None:
            self._adapter.set_failure_rate(failure_rate)
        if outage is not None:
            self._adapter.set_outage(outage)
        p = self._adapter.physics
        return {"slowdown_factor": p.slowdown_factor, "failure_rate": p.failure_rate, "outage": outage}

    def load(self) -> dict:
        load = self._adapter.load()
        return {"in_flight": load.in_flight, "queued": load.queued, "kv_cache_usage": load.kv_cache_usage}

    async def __del__(self) -> None:
        self._stop.set()
        await self._adapter.aclose()
