"""The baseline the benchmarks compare the plane with: what a team would run without inferplane.

A FastAPI ingress on Serve with ``DeploymentHandle``s to the same substrate deployments the plane
uses, picking one at random (or the only one), with a minimal OpenAI-style chat endpoint: parse
the body, call the backend, return the answer. No auth, no placement, no telemetry.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` type.
import json
import random
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

plain_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


def _line(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
@serve.ingress(plain_app)
class PlainIngress:
    def __init__(self, backends_app: str, backend_names: list, upstream_model: str) -> None:
        self._handles = [serve.get_deployment_handle(name, app_name=backends_app) for name in backend_names]
        self._model = upstream_model

    @plain_app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        body = json.loads(await request.body())
        payload = {"request_id": f"req-{uuid.uuid4().hex}", "api": "chat", "model": self._model,
                   "max_tokens": body.get("max_tokens") or 16, "temperature": body.get("temperature"),
                   "top_p": None, "seed": None, "stop": None,
                   "messages": [{"role": m["role"], "content": m["content"]} for m in body["messages"]]}
        handle = random.choice(self._handles)
        stream = handle.options(stream=True).generate.remote(payload)
        created = int(time.time())
        if body.get("stream"):
            async def events():
                async for event in stream:
                    if event["t"] == "delta":
                        yield _line({"id": payload["request_id"], "object": "chat.completion.chunk",
                                     "created": created, "model": body["model"],
                                     "choices": [{"index": 0, "delta": {"content": event["text"]},
                                                  "finish_reason": None}]})
                    elif event["t"] == "done":
                        yield _line({"id": payload["request_id"], "object": "chat.completion.chunk",
                                     "created": created, "model": body["model"],
                                     "choices": [{"index": 0, "delta": {}, "finish_reason": event["finish_reason"]}]})
                        yield _line({"id": payload["request_id"], "object": "chat.completion.chunk",
                                     "created": created, "model": body["model"], "choices": [],
                                     "usage": {"prompt_tokens": event["prompt_tokens"],
                                               "completion_tokens": event["completion_tokens"]}})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        parts, done = [], {}
        async for event in stream:
            if event["t"] == "delta":
                parts.append(event["text"])
            elif event["t"] == "done":
                done = event
        return JSONResponse({
            "id": payload["request_id"], "object": "chat.completion", "created": created, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                         "finish_reason": done.get("finish_reason")}],
            "usage": {"prompt_tokens": done.get("prompt_tokens", 0),
                      "completion_tokens": done.get("completion_tokens", 0)},
        })


def build_plain_app(backends_app: str, backend_names: list, upstream_model: str, replicas: int = 1):
    """A plain app whose handles point at ``backend_names``, deployments of app ``backends_app``,
    with ``replicas`` ingress replicas (a comparison gives both sides the same count)."""
    return PlainIngress.options(name="plain-ingress", num_replicas=replicas).bind(
        backends_app, backend_names, upstream_model)
