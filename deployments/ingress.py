"""The ingress: one Serve deployment speaking the OpenAI API. Routes, SSE framing and Serve glue.

What a request goes through is the plane core's (``inferplane.plane``), the same code the replay
runs: the replica's placement state (``ReplicaState``: the last snapshot from the PlacementActor
plus this replica's own dispatches, failing closed past the staleness bound), the attempt loop
(``AttemptLoop``: place, dispatch, re-place before the first byte) and the ledger
(``RequestLedger``: one frozen record per request, journaled before the answer's last bytes leave).
This module parses, dispatches to the substrate deployments and frames the answer.

One background thread (``_background``) syncs with the PlacementActor every
``ingress.snapshot_refresh_ms``, writes the audit rows of finished requests, and adopts the journal
segments of killed ingress replicas on its node (at start, then every ``ORPHAN_SCAN_INTERVAL_S``).
It is stopped and joined when the replica shuts down, after which the rest is written.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` type on the
# routes of a Serve class-based ingress.
import asyncio
import json
import logging
import os
import threading
import time
import uuid

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferplane.api.errors import ApiError, validation_error
from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest, required_features
from inferplane.api.payload import substrate_payload
from inferplane.api.readiness import readiness, reporting
from inferplane.api.responses import completion_body, delta_chunk, finish_chunk, role_chunk, usage_chunk
from inferplane.api.tokens import TokenCounter
from inferplane.auth import TenantKeys
from inferplane.config import build, parse_config
from inferplane.config.model_set import model_file_hashes
from inferplane.placement import PlacementDecision, PlacementRequest
from inferplane.placement.filters import RejectionCode, unhonoured_parameter
from inferplane.placement.fleet import served_key
from inferplane.placement.plan import models_for
from inferplane.plane.attempts import AttemptLoop, Dispatch, FirstByteFailure, Refusal
from inferplane.plane.ledger import CLIENT_DISCONNECTED, OpenRequest, RequestLedger
from inferplane.plane.queue import HoldQueue, Waiter
from inferplane.plane.state import ReplicaState
from inferplane.telemetry.audit import AuditLog
from inferplane.telemetry.journal import Journal, recover
from inferplane.telemetry.metrics import LabelVocabulary, MetricsOutbox

from deployments import placement_actor
from deployments.request_routing import routes_by_prefix, routing_prompt
from deployments.substrate import node_identity

log = logging.getLogger("inferplane.ingress")
app = FastAPI(title="inferplane", docs_url=None, redoc_url=None, openapi_url=None)

SLA_HEADER = "x-inferplane-sla-class"
ORPHAN_SCAN_INTERVAL_S = 5.0
"""How often a replica looks for journal segments of killed replicas after its start-up scan."""
SYNC_TIMEOUT_S = 2.0
LONG_BODY_BYTES = 8192
"""A body this large is tokenized in a worker thread (about 1 µs per token), not on the event loop."""
PREFIX_BLOCK_TOKENS = 128
"""Block size of the plane's prefix-cache belief: vLLM CPU's KV block (a GPU build's is 16; a coarser
block only loses the partial last one of a prompt). The replay keys by Mooncake's 512-token blocks."""
FIRST_SNAPSHOT_WAIT_S = 15.0
"""How long a new replica's constructor waits for its first snapshot, beyond the actor's own
warm-up bound (the signal staleness bound)."""


def _error_response(err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers() | (headers or {}))


def _refusal_error(refusal: Refusal, required: frozenset[str], fleet) -> ApiError:
    """The answer to a refusal; a request refused for a parameter no eligible substrate honours
    names that parameter, as a validation error would."""
    param = None
    if refusal.code == RejectionCode.UNSUPPORTED_PARAMETER.value and refusal.decision is not None:
        param = unhonoured_parameter(required, fleet, refusal.decision.candidates)
    return ApiError(refusal.status, refusal.code, refusal.message, param=param, retry_after_s=refusal.retry_after_s)


def _sse_line(obj: dict) -> str:
    # Defined above the class: serve.ingress captures the module's names when it decorates.
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _decision_of(req: OpenRequest) -> PlacementDecision | None:
    """The request's last placement decision; None when it never reached placement."""
    return None if req.attempts is None else req.attempts.decision


def _failure_of(event: dict) -> FirstByteFailure:
    return FirstByteFailure(event["code"], event["message"], event["retryable"], event.get("retry_after_s"))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """An unknown path or an unserved method answers in the OpenAI error shape too, not
    FastAPI's ``{"detail": ...}`` (clients and SDKs parse ``error.message``)."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    err = ApiError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")
    return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
@serve.ingress(app)
class Ingress:
    def __init__(self, config_text: str, app_name: str, substrates: dict) -> None:
        built = build(parse_config(config_text, source="<deployed config>"))
        self._fleet = fleet = built.fleet
        self._policy = policy = built.policy
        cfg = built.config
        # Where this replica runs: its node's labels, else the config's ingress topology.
        node = node_identity(cfg.policy.topology)
        self._region = node["node_region"] or built.ingress_region
        self._zone = node["node_zone"] or built.ingress_zone
        self._tokens = TokenCounter.from_config(cfg)
        self._keys = TenantKeys((t.name, t.api_keys_sha256) for t in cfg.tenants)
        self._max_body = cfg.ingress.max_body_bytes
        self._default_max_tokens = cfg.ingress.default_max_tokens
        # (substrate, served key: the model, or ``model@version`` for a version) -> the substrate's name for it.
        self._upstream = {(s.name, served_key(m.name, m.version)): m.upstream_name or m.name
                          for s in cfg.substrates for m in s.models}
        self._emulated = {s.name: s.emulated for s in fleet.substrates}
        self._handles = substrates
        self._prefix_routed = frozenset(s.name for s in cfg.substrates if routes_by_prefix(s))
        # The application's one placement actor, created with this config if it is the first; an
        # existing one is given this config (a no-op when whoever deployed it applied it already).
        self._actor = placement_actor.get_or_create(app_name, config_text)
        ray.get(self._actor.apply.remote(config_text), timeout=SYNC_TIMEOUT_S * 5)
        self._id = f"ingress-{uuid.uuid4().hex[:8]}"
        self._refresh_s = cfg.ingress.snapshot_refresh_ms / 1000.0
        self._metrics = MetricsOutbox(LabelVocabulary.of(fleet, policy))
        # With a substrate that declares a KV cache, the replica keeps a prefix belief of the
        # blocks of the prompts it served (``placement.prefix``), and prompts are hashed in blocks.
        self._state = ReplicaState(fleet, policy, observe=self._metrics.delta.record_decision, replica_id=self._id,
                                   prefix_block_tokens=PREFIX_BLOCK_TOKENS)
        self._block_tokens = PREFIX_BLOCK_TOKENS if self._state.prefix is not None else 0  # 0: count only, hash nothing
        self._loop: asyncio.AbstractEventLoop | None = None  # the request path's, known at the first request
        self._waiting: dict[Waiter, asyncio.Future] = {}
        self._queue = HoldQueue(self._state, notify=self._pump_soon, resolved=self._on_resolved)
        audit_dir = os.path.expanduser(cfg.telemetry.audit_dir)
        self._journal = Journal(audit_dir, self._id, fleet=fleet, policy=policy)
        self._audit = AuditLog(audit_dir, self._id, flush_interval_s=cfg.telemetry.audit_flush_interval_ms / 1000.0,
                               on_written=self._journal.written)
        self._ledger = RequestLedger(self._id, self._region, fleet, policy, self._state, self._journal, self._audit,
                                     self._metrics, model_files=model_file_hashes(cfg))
        self._audit_dropped = 0
        self._names = tuple(s.name for s in fleet.substrates)
        self._reported: set[str] = set()
        """Substrates that have reported at least once since this replica started (readiness)."""
        self._body_timeout_s = cfg.ingress.body_read_timeout_s
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._background_thread = threading.Thread(target=self._background, name="inferplane-sync", daemon=True)
        self._background_thread.start()
        # Serve sends a replica traffic once its constructor returns: wait (bounded) for the first
        # snapshot, so that during a rollout the old replicas keep serving until this one can place,
        # instead of it answering 503 while a new config's actor warms up.
        if not self._synced.wait(FIRST_SNAPSHOT_WAIT_S + policy.signal_staleness_bound_s):
            log.warning("no fleet snapshot after %.0fs; serving, and failing closed until one arrives",
                        FIRST_SNAPSHOT_WAIT_S + policy.signal_staleness_bound_s)

    # -- background: snapshot sync, audit rows, journal recovery -----------------------------------
    def _background(self) -> None:
        next_scan = 0.0
        while not self._stop.is_set():
            self._ledger.drain()
            self._sync()
            if time.monotonic() >= next_scan:
                self._recover_orphans()
                next_scan = time.monotonic() + ORPHAN_SCAN_INTERVAL_S
            self._stop.wait(self._refresh_s)

    def _sync(self) -> None:
        dropped = self._audit.dropped_rows
        if dropped > self._audit_dropped:
            self._metrics.delta.record_audit_dropped(dropped - self._audit_dropped)
            self._audit_dropped = dropped
        report = self._state.take_report(time.time())
        batch = self._metrics.pending()
        try:
            published = ray.get(self._actor.sync.remote(
                self._id, report.in_flight, report.outcomes, report.snapshot_version, report.snapshot_age_s,
                self._zone, batch, report.spend_usd, report.tenant_in_flight or None, report.reclaiming or None,
                report.demand or None, self._policy.policy_hash, report.lanes or None),
                timeout=SYNC_TIMEOUT_S)
        except Exception as exc:  # actor restarting or unreachable: serve on the last snapshot
            self._state.restore(report)
            snap = self._state.snapshot
            log.warning("snapshot sync failed (%s); serving on snapshot v%s", type(exc).__name__,
                        None if snap is None else snap.version)
            return
        self._metrics.acknowledge(batch)
        if published is None:
            return  # the actor is warming up
        if self._state.publish(published, report):
            self._synced.set()
            self._reported.update(reporting(self._names, published, self._policy.signal_staleness_bound_s))
        else:
            log.error("placement actor runs another config (%s); keeping the last snapshot", published.policy_hash)

    def _recover_orphans(self) -> None:
        """Adopt the journal segments of killed ingress replicas on this node: their answered
        requests that have no row yet get one in this replica's audit log."""
        try:
            found = recover(self._journal, self._audit)
        except Exception:  # telemetry must never fail the plane; the segments wait for the next scan
            log.exception("journal recovery failed")
            return
        if found.segments:
            log.warning("adopted %d journal segments of ended ingress replicas: %d rows rebuilt, %d already "
                        "written, %d unreadable lines skipped", found.segments, found.rows, found.already_written,
                        found.bad_lines)

    # -- routes ------------------------------------------------------------------------------
    @app.get("/livez")
    def livez(self) -> Response:
        """Liveness: this replica answers HTTP. Nothing about the fleet."""
        return JSONResponse({"status": "ok", "ingress_replica": self._id})

    @app.get("/healthz")
    @app.get("/readyz")
    def healthz(self) -> Response:
        """Readiness (``inferplane.api.readiness``): 503 ``starting`` until every substrate has
        reported, 503 ``degraded`` on a stale snapshot."""
        r = readiness(self._names, self._state.snapshot, self._reported, time.time(),
                      self._policy.snapshot_staleness_bound_s, self._policy.signal_staleness_bound_s)
        return JSONResponse(r.body(), status_code=200 if r.ready else 503)

    @app.get("/v1/models")
    @app.get("/v1/models/")
    def models(self, request: Request) -> Response:
        tenant_name = self._keys.tenant_for(request.headers.get("authorization"))
        if tenant_name is None:
            return _error_response(ApiError(401, "invalid_api_key", "missing or invalid API key"))
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "inferplane"}
            for name in models_for(self._policy, self._fleet, tenant_name)]})

    @app.get("/v1/models/{model_id:path}")
    def model(self, model_id: str, request: Request) -> Response:
        """One model this tenant can reach (a name or an alias), else 404 as OpenAI answers it."""
        tenant_name = self._keys.tenant_for(request.headers.get("authorization"))
        if tenant_name is None:
            return _error_response(ApiError(401, "invalid_api_key", "missing or invalid API key"))
        if self._fleet.model_names.get(model_id) not in models_for(self._policy, self._fleet, tenant_name):
            return _error_response(ApiError(404, "model_not_found", f"the model `{model_id}` does not exist or "
                                            "is not available to this tenant", param="model"))
        return JSONResponse({"id": model_id, "object": "model", "created": 0, "owned_by": "inferplane"})

    # The OpenAI SDKs never add a trailing slash, but hand-written clients do: serve it, never
    # answer it with a redirect (a 307 drops the body of a POST in many HTTP clients).
    @app.post("/v1/chat/completions")
    @app.post("/v1/chat/completions/")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat")

    @app.post("/v1/completions")
    @app.post("/v1/completions/")
    async def completions(self, request: Request) -> Response:
        return await self._serve(request, "completion")

    # -- the request path --------------------------------------------------------------------
    async def _serve(self, request: Request, api: str) -> Response:
        req = self._ledger.open(f"req-{uuid.uuid4().hex}", time.time())
        stream = None
        try:
            body = await self._parse(request, api, req)
            step, stream, first = await self._dispatch(api, body, req)
            if isinstance(step, Refusal):
                raise _refusal_error(step, req.attempts.request.required_features, self._fleet)
            headers = self._answer_headers(req, step.decision)
            rid = ("chatcmpl-" if api == "chat" else "cmpl-") + req.request_id[4:]
            if req.streamed:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                events = self._stream_events(api, rid, step, first, stream, include_usage, req)
                self._ledger.watch(events, req, time.time, on_abandoned=stream.cancel)
                stream = None  # the body generator owns it now
                return StreamingResponse(events, media_type="text/event-stream", headers=headers)
            return await self._collect(api, rid, step, first, stream, headers, req)
        except ApiError as err:
            req.close(err.status, err.code, time.time())
            return _error_response(err, self._answer_headers(req, _decision_of(req), err))
        except asyncio.CancelledError:  # the client left: release what it held, record it, stop
            if stream is not None:
                stream.cancel()
            req.close(499, CLIENT_DISCONNECTED, time.time())
            raise
        except Exception:  # a bug: the request still ends with its record and an OpenAI-style error
            log.exception("request %s failed in the ingress", req.request_id)
            if stream is not None:
                stream.cancel()
            err = ApiError(500, "internal_error", "the ingress failed on this request")
            req.close(500, err.code, time.time())
            return _error_response(err, self._answer_headers(req, _decision_of(req), err))

    async def _parse(self, request: Request, api: str, req: OpenRequest):
        tenant_name = self._keys.tenant_for(request.headers.get("authorization"))
        if tenant_name is None:
            raise ApiError(401, "invalid_api_key", "missing or invalid API key")
        req.tenant = tenant_name
        raw = await self._read_body(request)
        try:
            body = (ChatCompletionRequest if api == "chat" else CompletionRequest).model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error(exc) from None
        # The model's own tokenizer (``api.tokens``); a long prompt costs milliseconds to count, so
        # it is counted off the event loop.
        # With the count, the prompt's blocks for the prefix-cache belief (none without a cache).
        count = self._tokens.prompt_and_blocks
        req.input_tokens, req.prefix_blocks = (await asyncio.to_thread(count, body, self._block_tokens)
                                               if len(raw) > LONG_BODY_BYTES else count(body, self._block_tokens))
        req.model = body.model
        req.streamed = bool(getattr(body, "stream", False))
        req.sla_class = request.headers.get(SLA_HEADER) or self._policy.tenants[tenant_name].default_sla_class
        return body

    async def _read_body(self, request: Request) -> bytes:
        """The body, read within ``ingress.body_read_timeout_s`` (a stalled upload is answered 408,
        not held) and never past ``ingress.max_body_bytes`` (413 as soon as it is exceeded)."""
        async def read() -> bytes:
            parts, size = [], 0
            async for part in request.stream():
                size += len(part)
                if size > self._max_body:
                    raise ApiError(413, "request_too_large",
                                   f"request body exceeds {self._max_body} bytes (ingress.max_body_bytes)")
                parts.append(part)
            return b"".join(parts)

        try:
            return await asyncio.wait_for(read(), self._body_timeout_s)
        except TimeoutError:
            raise ApiError(408, "request_timeout", f"the request body was not received within "
                           f"{self._body_timeout_s:g} s (ingress.body_read_timeout_s)") from None

    def _max_tokens(self, api: str, body) -> int:
        if api == "chat":
            return body.max_completion_tokens or body.max_tokens or self._default_max_tokens
        return body.max_tokens or self._default_max_tokens

    # -- the hold queue (``plane.queue``): waits on the event loop, woken by the state -------------
    def _pump_soon(self) -> None:
        """Capacity may have freed (a lease released here, or a snapshot adopted by the sync thread):
        pump the queue on the event loop."""
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._pump)
            except RuntimeError:  # the event loop closed (the replica is stopping): nothing waits
                pass

    def _pump(self) -> None:
        self._queue.pump(time.time())

    def _on_resolved(self, waiter: Waiter) -> None:
        fut = self._waiting.pop(waiter, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _hold(self, waiter: Waiter, req: OpenRequest) -> Dispatch | Refusal:
        """Wait until the queue dispatches or refuses ``waiter`` (its give-up time is checked by a
        timer, not by polling); a client that leaves takes it out of the queue."""
        fut = self._waiting[waiter] = self._loop.create_future()
        check_at = waiter.give_up_s
        try:
            while not fut.done():
                try:
                    await asyncio.wait_for(asyncio.shield(fut), max(0.0, check_at - time.time()))
                except TimeoutError:
                    again = self._queue.expire(waiter, time.time())
                    if again is not None:
                        check_at = again
        except asyncio.CancelledError:
            self._waiting.pop(waiter, None)
            self._queue.cancel(waiter)
            raise
        req.held_s += waiter.waited_s
        req.held_reason = waiter.reason
        return waiter.outcome

    async def _dispatch(self, api: str, body, req: OpenRequest):
        """Run the attempt loop until an attempt yields its first event or the request is refused;
        a first placement only a wait can change waits in the hold queue. Returns (the last step,
        the substrate's stream, its first event)."""
        max_tokens = self._max_tokens(api, body)
        loop = req.attempts = AttemptLoop(self._state, PlacementRequest(
            request_id=req.request_id, tenant=req.tenant, model=body.model, sla_class=req.sla_class,
            input_tokens=req.input_tokens, max_output_tokens=max_tokens,
            arrived_at_s=time.time(),  # placed now: a sync may have landed during the parse
            ingress_region=self._region, ingress_zone=self._zone,
            required_features=required_features(api, body)), req.prefix_blocks)
        payload = substrate_payload(api, body, max_tokens, req.request_id, req.input_tokens)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        step = self._queue.submit(loop, loop.start(), time.time(), req.received_at_s)
        if isinstance(step, Waiter):
            step = await self._hold(step, req)
        while isinstance(step, Dispatch):
            # A substrate routed by prefix gets the prompt's text beside the payload, where Serve's
            # router among its replicas reads it (``deployments.request_routing``).
            routing = (routing_prompt(payload),) if step.substrate in self._prefix_routed else ()
            stream = self._handles[step.substrate].options(stream=True).generate.remote(
                dict(payload, model=self._upstream[(step.substrate, served_key(step.decision.model,
                                                                              step.decision.model_version))]),
                *routing)
            try:
                first = await self._first_event(stream)
            except BaseException:
                stream.cancel()
                raise
            if first["t"] != "error":
                return step, stream, first
            log.info("placement %s on %s failed before the first byte (%s)", step.decision.placement_id,
                     step.substrate, first["code"])
            step = loop.failed(_failure_of(first), time.time())
            if isinstance(step, Refusal):  # a retry that finds no slot may wait too
                step = self._queue.submit(loop, step, time.time(), req.received_at_s)
                if isinstance(step, Waiter):
                    step = await self._hold(step, req)
        return step, None, None

    def _answer_headers(self, req: OpenRequest, decision: PlacementDecision | None,
                        err: ApiError | None = None) -> dict[str, str]:
        """What every answer says about its request: the request id always; the placement once it
        reached placement (``inferplane explain --audit DIR ID`` takes either id); where it ran,
        whether it spilled and how long it was held when it is answered; the error code when not."""
        headers = {"x-inferplane-request-id": req.request_id}
        if err is not None:
            headers["x-inferplane-error-code"] = err.code
        if decision is not None:
            headers["x-inferplane-placement-id"] = decision.placement_id
            headers["x-inferplane-attempts"] = str(decision.attempt)
            if decision.model_version is not None:
                headers["x-inferplane-model-version"] = decision.model_version
            if decision.placed:
                headers["x-inferplane-substrate"] = decision.substrate
                if err is None:
                    headers["x-inferplane-spillover"] = "true" if decision.spillover else "false"
                    if decision.spillover:
                        headers["x-inferplane-spillover-reason"] = decision.spillover_reason.value
                    if self._emulated[decision.substrate]:
                        headers["x-inferplane-emulated"] = "true"
        if err is None or req.held_s:
            headers["x-inferplane-held-ms"] = str(round(req.held_s * 1000.0))
        return headers

    @staticmethod
    async def _first_event(stream) -> dict:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return {"t": "error", "code": "empty_stream", "message": "substrate ended without output",
                    "retryable": True, "status": None, "retry_after_s": None}
        except Exception as exc:  # replica died or unreachable: retryable before the first byte
            return {"t": "error", "code": type(exc).__name__, "message": "substrate replica unavailable",
                    "retryable": True, "status": None, "retry_after_s": None}

    async def _collect(self, api, rid, step: Dispatch, first, stream, headers, req: OpenRequest) -> Response:
        """A non-streamed answer: gather the substrate's events, then answer once."""
        first_at = time.time()
        name = step.substrate
        deltas: list[dict] = []
        event = first
        while event["t"] == "delta":
            deltas.append(event)
            try:
                event = await stream.__anext__()
            except StopAsyncIteration:
                event = {"t": "error", "code": "ended"}
            except Exception as exc:  # the replica died mid-generation (cancellation is not caught)
                event = {"t": "error", "code": type(exc).__name__}
        if event["t"] != "done":
            err = ApiError(502, "substrate_error", f"substrate {name} failed mid-generation: {event['code']}")
            req.close(502, err.code, time.time(), first_token_s=first_at,
                      output_tokens=sum(d.get("tokens", 1) for d in deltas),
                      prompt_tokens=next((d["prompt_tokens"] for d in deltas if "prompt_tokens" in d), None))
            raise err
        req.close(200, None, time.time(), first_token_s=first_at, output_tokens=event["completion_tokens"],
                  prompt_tokens=event["prompt_tokens"], cached_tokens=event.get("cached_prompt_tokens"))
        body = completion_body(api, rid, int(req.received_at_s), step.decision.model, deltas, event)
        return JSONResponse(body, headers=headers)

    async def _stream_events(self, api, rid, step: Dispatch, first, stream, include_usage, req: OpenRequest):
        """The SSE stream. The status line went out as 200, so the record says how the stream really
        ended; it is closed (journaled) before the stream's last line: ``[DONE]`` or the error event.
        A client that leaves mid-stream closes it as 499 with the tokens streamed so far."""
        first_at = time.time()
        created, model, name = int(req.received_at_s), step.decision.model, step.substrate
        tokens = 0
        prompt_tokens = None
        try:
            if api == "chat":
                yield _sse_line(role_chunk(api, rid, created, model))
            event = first
            while event["t"] == "delta":
                # The engine's counts as they stream (a delta without one is one token), so a
                # client that leaves mid-stream is recorded with the tokens it was really sent.
                tokens += event.get("tokens", 1)
                prompt_tokens = event.get("prompt_tokens", prompt_tokens)
                yield _sse_line(delta_chunk(api, rid, created, model, event))
                try:
                    event = await stream.__anext__()
                except StopAsyncIteration:
                    event = {"t": "error", "code": "ended"}
                except Exception as exc:  # the replica died mid-stream (cancellation is not caught)
                    event = {"t": "error", "code": type(exc).__name__}
            if event["t"] == "done":
                tokens, prompt_tokens = event["completion_tokens"], event["prompt_tokens"]
                yield _sse_line(finish_chunk(api, rid, created, model, event))
                if include_usage:
                    yield _sse_line(usage_chunk(api, rid, created, model, prompt_tokens, tokens,
                                                event.get("cached_prompt_tokens")))
                req.close(200, None, time.time(), first_token_s=first_at, output_tokens=tokens,
                          prompt_tokens=prompt_tokens, cached_tokens=event.get("cached_prompt_tokens"))
                yield "data: [DONE]\n\n"
                return
            err = ApiError(502, "substrate_error", f"substrate {name} failed mid-stream: {event['code']}")
            req.close(502, err.code, time.time(), first_token_s=first_at, output_tokens=tokens,
                      prompt_tokens=prompt_tokens)
            yield _sse_line(err.body())
        finally:
            if req.record is None:  # the client left mid-stream (or the server stopped iterating)
                stream.cancel()
                req.close(499, CLIENT_DISCONNECTED, time.time(), first_token_s=first_at, output_tokens=tokens,
                          prompt_tokens=prompt_tokens)

    def __del__(self) -> None:
        # Graceful shutdown: stop the background thread and wait for it, report a last time and
        # say goodbye (the authority drops this replica and its grant at once, if nothing is in
        # flight), write every audit row still pending, then delete the journal segments those
        # rows were waiting in.
        self._stop.set()
        self._background_thread.join(timeout=10.0)
        self._sync()
        try:
            ray.get(self._actor.leave.remote(self._id), timeout=SYNC_TIMEOUT_S)
        except Exception as exc:  # the actor is gone or busy: the bound drops this replica instead
            log.info("goodbye to the placement actor failed: %s", type(exc).__name__)
        self._ledger.drain()
        self._audit.close()
        self._journal.close()
