"""One Serve deployment per substrate, named after it: the platform team scales each from the
Ray dashboard. A replica wraps one adapter, streams its events as plain dicts, and reports the
adapter's load to the PlacementActor every ``HEARTBEAT_S`` (which is also its heartbeat).

Events (dicts, so nothing but data crosses Serve):
    {"t": "delta", "text": str, "tokens": int,
     "prompt_tokens": int (first delta, where the engine counted them),
     "logprobs": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]
                 and "text_offset": characters of text streamed before this delta (when asked for),
     "tool_calls": [{"index", "id", "type": "function", "function": {"name", "arguments"}}] (when made)}
    {"t": "done", "finish_reason": str, "prompt_tokens": int, "completion_tokens": int,
     "cached_prompt_tokens": int (where the engine counted the prompt tokens its prefix cache held)}
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

import json

from pydantic import TypeAdapter

from inferplane.config.schema import Substrate, TopologyPolicy

from substrate_adapters.base import (
    ChatTurn,
    Finished,
    FunctionTool,
    GenerationRequest,
    ResponseFormat,
    TextDelta,
    ToolCall,
)
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
    """The ``GenerationRequest`` of a payload (``inferplane.api.payload``)."""
    fmt = payload.get("response_format")
    tool_choice = payload.get("tool_choice")
    token_ids = payload.get("prompt_token_ids")
    return GenerationRequest(
        request_id=payload["request_id"],
        model=payload["model"],
        api=payload["api"],
        messages=tuple(_turn(m) for m in payload.get("messages", ())),
        prompt=payload.get("prompt"),
        prompt_token_ids=None if token_ids is None else tuple(token_ids),
        max_tokens=payload["max_tokens"],
        counted_prompt_tokens=payload.get("counted_prompt_tokens"),
        temperature=payload.get("temperature"),
        top_p=payload.get("top_p"),
        stop=tuple(payload.get("stop") or ()),
        seed=payload.get("seed"),
        presence_penalty=payload.get("presence_penalty"),
        frequency_penalty=payload.get("frequency_penalty"),
        logit_bias=tuple((int(k), float(v)) for k, v in (payload.get("logit_bias") or {}).items()),
        logprobs=payload.get("logprobs"),
        echo=bool(payload.get("echo")),
        suffix=payload.get("suffix"),
        response_format=None if fmt is None else _response_format(fmt),
        tools=tuple(_tool(t["function"]) for t in payload.get("tools", ())),
        tool_choice=tool_choice,
        parallel_tool_calls=payload.get("parallel_tool_calls"),
    )


def _turn(m: dict) -> ChatTurn:
    return ChatTurn(m["role"], m["content"], name=m.get("name"),
                    tool_calls=tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in m.get("tool_calls", ())),
                    tool_call_id=m.get("tool_call_id"))


def _response_format(fmt: dict) -> ResponseFormat:
    if fmt["type"] == "json_object":
        return ResponseFormat("json_object")
    spec = fmt["json_schema"]
    schema = spec.get("schema")
    return ResponseFormat("json_schema", name=spec.get("name"),
                          schema_json=None if schema is None else json.dumps(schema), strict=spec.get("strict"))


def _tool(fn: dict) -> FunctionTool:
    params = fn.get("parameters")
    return FunctionTool(fn["name"], fn.get("description"), None if params is None else json.dumps(params),
                        fn.get("strict"))


def delta_event(delta: TextDelta, text_offset: int) -> dict:
    """A ``TextDelta`` as its event; ``text_offset``: characters of text streamed before it."""
    event: dict = {"t": "delta", "text": delta.text, "tokens": delta.tokens}
    if delta.prompt_tokens is not None:
        event["prompt_tokens"] = delta.prompt_tokens
    if delta.logprobs is not None:
        event["logprobs"] = [
            {"token": lp.token, "logprob": lp.logprob, "bytes": None if lp.bytes is None else list(lp.bytes),
             "top_logprobs": [{"token": t.token, "logprob": t.logprob,
                               "bytes": None if t.bytes is None else list(t.bytes)} for t in lp.top_logprobs]}
            for lp in delta.logprobs]
        event["text_offset"] = text_offset
    if delta.tool_calls:
        event["tool_calls"] = [c.to_openai(i) for i, c in enumerate(delta.tool_calls)]
    return event


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256, health_check_period_s=2)
class SubstrateDeployment:
    def __init__(self, substrate: dict, topology: dict, app_name: str) -> None:
        """Built from its own section of the config and the node-label names only, so that a config
        change elsewhere leaves it running (``deployments.app``)."""
        spec = TypeAdapter(Substrate).validate_python(substrate)
        self._name = spec.name
        self._adapter = adapter_for(spec)
        self._app_name = app_name
        self._actor = None  # looked up by the heartbeat: whoever deploys creates it
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._node = node_identity(TopologyPolicy.model_validate(topology))
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
                if self._actor is None:
                    self._actor = placement_actor.current_actor(self._app_name)
                ray.get(self._actor.report_substrate.remote(self._name, self._replica_id, report), timeout=2.0)
            except Exception as exc:  # the actor restarts (or is not created yet, or does not know this
                # substrate until its config is applied); keep beating
                log.debug("heartbeat to placement actor failed: %s", type(exc).__name__)

    async def generate(self, payload: dict, routing_prompt=None):
        """``routing_prompt``: the prompt's text for Serve's router among this deployment's replicas
        (``deployments.request_routing``), read in the caller's process; not used here."""
        streamed = 0  # characters of text so far: the completions logprobs' text_offset
        try:
            async for event in self._adapter.generate(request_from_payload(payload)):
                if isinstance(event, TextDelta):
                    yield delta_event(event, streamed)
                    streamed += len(event.text)
                elif isinstance(event, Finished):
                    done = {"t": "done", "finish_reason": event.finish_reason,
                            "prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens}
                    if event.cached_prompt_tokens is not None:
                        done["cached_prompt_tokens"] = event.cached_prompt_tokens
                    yield done
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
        return {"in_flight": load.in_flight, "queued": load.queued, "kv_cache_usage": load.kv_cache_usage,
                "prefix_cache_queried_tokens": load.prefix_cache_queried_tokens,
                "prefix_cache_hit_tokens": load.prefix_cache_hit_tokens}

    async def __del__(self) -> None:
        self._stop.set()
        await self._adapter.aclose()
