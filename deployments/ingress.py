"""The ingress: one Serve deployment speaking the OpenAI API. Parse, place, dispatch, record.

Placement runs locally on the latest snapshot from the PlacementActor (refreshed by a background
thread every ``ingress.snapshot_refresh_ms``), so the hot path never waits on an actor round trip.
A snapshot older than the policy's ``snapshot_staleness_bound_ms`` fails closed with 503.

Every request's audit facts are journaled (``telemetry.journal``) before its response's last bytes
leave; the full row is built later in the sync thread. A replica adopts the journal segments of
ingress replicas on its node that were killed (at start, then every ``ORPHAN_SCAN_INTERVAL_S``),
so an answered request keeps its audit row when the replica that answered it dies.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` type on the
# routes of a Serve class-based ingress.
import json
import os
import logging
import threading
import time
import uuid
from collections import Counter, deque

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferplane.api.errors import ApiError
from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest
from inferplane.api.responses import chunk, completion_body, usage_chunk
from inferplane.api.tokens import chat_text, estimate_chat_tokens, estimate_completion_tokens
from inferplane.auth import TenantKeys
from inferplane.config import build, parse_config
from inferplane.fleet_state import Outcome
from inferplane.placement import FleetSnapshot, PlacementDecision, PlacementRequest, place
from inferplane.placement.filters import STATIC_FILTERS
from inferplane.placement.signals import SubstrateSignals
from inferplane.telemetry.audit import AuditLog, RequestOutcome, audit_row
from inferplane.telemetry.journal import Journal, journal_entry, recover
from inferplane.telemetry.metrics import LabelVocabulary, MetricsOutbox, rejection_code_for

from deployments import placement_actor
from deployments.substrate import node_identity

log = logging.getLogger("inferplane.ingress")
app = FastAPI(title="inferplane", docs_url=None, redoc_url=None, openapi_url=None)

SLA_HEADER = "x-inferplane-sla-class"
ORPHAN_SCAN_INTERVAL_S = 5.0
"""How often a replica looks for journal segments of killed replicas after its start-up scan."""


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def _first_validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] in ("json_invalid", "json_type"):
        return ApiError(400, "invalid_json", f"request body is not valid JSON: {first['msg']}")
    return ApiError(400, "invalid_request", f"{loc}: {first['msg']}" if loc else first["msg"], param=loc or None)


def _sse_line(obj: dict) -> str:
    # Defined above the class: serve.ingress captures the module's names when it decorates.
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """An unknown path or an unserved method answers in the OpenAI error shape too, not
    FastAPI's ``{"detail": ...}`` (clients and SDKs parse ``error.message``)."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    err = ApiError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")
    return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)


class RequestRecord:
    """What the ingress learns about one request as it goes: the audit row and the metrics are
    written from it exactly once, when the request ends (answered, failed or refused)."""

    __slots__ = ("request_id", "arrived_s", "tenant", "model", "sla_class", "decision", "streamed",
                 "snapshot_age_s", "input_tokens", "recorded")

    def __init__(self, arrived_s: float) -> None:
        self.request_id = f"req-{uuid.uuid4().hex}"
        self.arrived_s = arrived_s
        self.tenant: str | None = None
        self.model: str | None = None
        self.sla_class: str | None = None
        self.decision: PlacementDecision | None = None
        self.streamed = False
        self.snapshot_age_s: float | None = None
        self.input_tokens: int | None = None
        self.recorded = False


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
@serve.ingress(app)
class Ingress:
    def __init__(self, config_text: str, app_name: str, substrates: dict) -> None:
        built = build(parse_config(config_text, source="<deployed config>"))
        self._fleet = built.fleet
        self._policy = built.policy
        cfg = built.config
        # Where this replica runs: its node's labels, else the config's ingress topology.
        node = node_identity(cfg.policy.topology)
        self._region = node["node_region"] or built.ingress_region
        self._zone = node["node_zone"] or built.ingress_zone
        self._keys = TenantKeys((t.name, t.api_keys_sha256) for t in cfg.tenants)
        self._max_body = cfg.ingress.max_body_bytes
        self._default_max_tokens = cfg.ingress.default_max_tokens
        self._upstream = {(s.name, m.name): m.upstream_name or m.name for s in cfg.substrates for m in s.models}
        self._emulated = {s.name: s.emulated for s in self._fleet.substrates}
        self._handles = substrates
        self._actor = placement_actor.get_or_create(app_name, config_text)
        self._id = f"ingress-{uuid.uuid4().hex[:8]}"
        self._snapshot: FleetSnapshot | None = None
        # (published snapshot, the in-flight counts this replica reported in the same call)
        self._base: tuple[FleetSnapshot, dict[str, int]] | None = None
        self._view: FleetSnapshot | None = None
        self._view_dirty = True
        self._index = {s.name: s.index for s in self._fleet.substrates}
        self._in_flight: Counter[str] = Counter()
        self._outcomes: deque[Outcome] = deque(maxlen=4096)
        self._refresh_s = cfg.ingress.snapshot_refresh_ms / 1000.0
        audit_dir = os.path.expanduser(cfg.telemetry.audit_dir)
        self._journal = Journal(audit_dir, self._id)
        self._audit = AuditLog(audit_dir, self._id, flush_interval_s=cfg.telemetry.audit_flush_interval_ms / 1000.0,
                               on_written=self._journal.written)
        self._metrics = MetricsOutbox(LabelVocabulary.of(self._fleet, self._policy))
        self._audit_dropped = 0
        self._finished: deque = deque()  # (RequestRecord, RequestOutcome, SlaPolicy | None) for the sync thread
        self._spend: Counter[str] = Counter()  # attributed cost since the last sync, by tenant
        self._spend_lock = threading.Lock()  # the event loop adds, the sync thread takes
        self._stop = threading.Event()
        threading.Thread(target=self._sync_loop, name="inferplane-sync", daemon=True).start()
        self._recovery = threading.Thread(target=self._recover_loop, name="inferplane-journal-recovery", daemon=True)
        self._recovery.start()

    # -- journal recovery (background thread) ------------------------------------------------
    def _recover_loop(self) -> None:
        """Adopt the journal segments of killed ingress replicas on this node: rows for their
        answered requests that had none yet go to this replica's audit log."""
        while True:
            try:
                found = recover(self._journal, self._audit, self._fleet, self._policy)
                if found.segments:
                    log.warning("adopted %d journal segments of ended ingress replicas: %d rows rebuilt, %d already "
                                "written, %d unreadable lines skipped", found.segments, found.rows,
                                found.already_written, found.bad_lines)
            except Exception:  # telemetry must never fail the plane; the segments wait for the next scan
                log.exception("journal recovery failed")
            if self._stop.wait(ORPHAN_SCAN_INTERVAL_S):
                return

    # -- snapshot sync (background thread) ---------------------------------------------------
    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self._write_finished()
            outcomes = []
            while self._outcomes:
                outcomes.append(self._outcomes.popleft())
            dropped = self._audit.dropped_rows
            if dropped > self._audit_dropped:
                self._metrics.delta.record_audit_dropped(dropped - self._audit_dropped)
                self._audit_dropped = dropped
            batch = self._metrics.pending()
            with self._spend_lock:
                spend, self._spend = self._spend, Counter()
            try:
                reported = dict(self._in_flight)
                current = self._snapshot
                published = ray.get(self._actor.sync.remote(
                    self._id, reported, outcomes,
                    None if current is None else current.version,
                    None if current is None else time.time() - current.taken_at_s,
                    self._zone, batch, dict(spend)), timeout=2.0)
                self._metrics.acknowledge(batch)
                if published is None:
                    pass  # the actor is warming up after a (re)start: keep the last snapshot
                elif published.policy_hash != self._policy.policy_hash:
                    log.error("placement actor runs another config (%s); keeping the last snapshot",
                              published.policy_hash)
                else:
                    snap = FleetSnapshot(published.version, published.taken_at_s, self._fleet, published.signals,
                                         published.tenant_spend_usd)
                    self._base = (snap, reported)
                    self._snapshot = snap
                    self._view_dirty = True
            except Exception as exc:  # actor restarting or unreachable: serve on the last snapshot
                self._outcomes.extendleft(reversed(outcomes))  # not lost: sent with the next sync
                with self._spend_lock:
                    self._spend.update(spend)
                log.warning("snapshot sync failed (%s); serving on snapshot v%s", type(exc).__name__,
                            None if self._snapshot is None else self._snapshot.version)
            self._stop.wait(self._refresh_s)

    def _local_view(self) -> FleetSnapshot:
        """The published snapshot with this replica's own dispatches since then applied, rebuilt
        only when a count changed (``FleetSnapshot.with_dispatches``)."""
        if self._view_dirty or self._view is None:
            snap, reported = self._base
            self._view = snap.with_dispatches(reported, self._in_flight)
            self._view_dirty = False
        return self._view

    def _dispatched(self, name: str, delta: int) -> None:
        self._in_flight[name] += delta
        self._view_dirty = True

    def _current_snapshot(self, now: float) -> FleetSnapshot:
        snap = self._snapshot
        if snap is None:
            raise ApiError(503, "placement_unavailable", "the plane has no fleet snapshot yet; retry shortly",
                           retry_after_s=1)
        age = now - snap.taken_at_s
        if age > self._policy.snapshot_staleness_bound_s:
            raise ApiError(503, "placement_unavailable",
                           f"fleet snapshot is {age:.1f}s old, over the {self._policy.snapshot_staleness_bound_s:.1f}s "
                           "bound; failing closed", retry_after_s=1)
        return self._local_view()

    # -- routes ------------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz(self) -> Response:
        snap = self._snapshot
        now = time.time()
        age = None if snap is None else now - snap.taken_at_s
        ok = age is not None and age <= self._policy.snapshot_staleness_bound_s
        return JSONResponse({"status": "ok" if ok else "degraded",
                             "snapshot_version": None if snap is None else snap.version,
                             "snapshot_age_s": age}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    def models(self, request: Request) -> Response:
        tenant_name = self._keys.tenant_for(request.headers.get("authorization"))
        if tenant_name is None:
            return _error_response(ApiError(401, "invalid_api_key", "missing or invalid API key"))
        return JSONResponse({"object": "list", "data": self._models_for(tenant_name)})

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat")

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve(request, "completion")

    def _models_for(self, tenant_name: str) -> list[dict]:
        from inferplane.placement.context import PlacementContext

        tenant = self._policy.tenants[tenant_name]
        out = []
        for route in self._fleet.models.values():
            if tenant.allowed_models is not None and route.name not in tenant.allowed_models:
                continue
            ctx = PlacementContext(None, tenant, None, route, self._policy, self._policy.spill_classes(route.name),
                                   0.0, 0.0)
            reachable = any(
                all(f.check(ctx, self._fleet.substrates[i], SubstrateSignals()) is None for f in STATIC_FILTERS)
                for i in route.substrate_indices
            )
            if reachable:
                out.append({"id": route.name, "object": "model", "created": 0, "owned_by": "inferplane"})
        return out

    # -- the request path --------------------------------------------------------------------
    async def _serve(self, request: Request, api: str) -> Response:
        rec = RequestRecord(time.time())
        try:
            return await self._place_and_dispatch(request, api, rec)
        except ApiError as err:
            self._record(rec, err.status, err.code, None, None, None)
            return _error_response(err)

    def _place(self, preq: PlacementRequest, snapshot: FleetSnapshot) -> PlacementDecision:
        t0 = time.perf_counter()
        decision = place(preq, snapshot, self._policy)
        self._metrics.delta.record_decision(decision, time.perf_counter() - t0)
        return decision

    async def _place_and_dispatch(self, request: Request, api: str, rec: RequestRecord) -> Response:
        arrived = rec.arrived_s
        tenant_name = self._keys.tenant_for(request.headers.get("authorization"))
        if tenant_name is None:
            raise ApiError(401, "invalid_api_key", "missing or invalid API key")
        rec.tenant = tenant_name
        raw = await request.body()
        if len(raw) > self._max_body:
            raise ApiError(413, "request_too_large", f"request body is {len(raw)} bytes; the limit is {self._max_body}")
        try:
            if api == "chat":
                body = ChatCompletionRequest.model_validate_json(raw)
                input_tokens = estimate_chat_tokens(body)
                max_tokens = body.max_completion_tokens or body.max_tokens or self._default_max_tokens
            else:
                body = CompletionRequest.model_validate_json(raw)
                input_tokens = estimate_completion_tokens(body)
                max_tokens = body.max_tokens or self._default_max_tokens
        except ValidationError as exc:
            raise _first_validation_error(exc) from None
        rec.model, rec.input_tokens = body.model, input_tokens
        rec.streamed = bool(getattr(body, "stream", False))

        tenant = self._policy.tenants[tenant_name]
        sla_class = request.headers.get(SLA_HEADER) or tenant.default_sla_class
        rec.sla_class = sla_class
        preq = PlacementRequest(
            request_id=rec.request_id, tenant=tenant_name, model=body.model, sla_class=sla_class,
            input_tokens=input_tokens, max_output_tokens=max_tokens, arrived_at_s=arrived,
            ingress_region=self._region, ingress_zone=self._zone,
        )
        snapshot = self._current_snapshot(arrived)
        rec.snapshot_age_s = time.time() - snapshot.taken_at_s  # at placement (a sync may land mid-parse)
        decision = rec.decision = self._place(preq, snapshot)
        payload = self._payload(api, body, max_tokens, preq.request_id)

        while True:
            if not decision.placed:
                raise self._rejection(decision)
            name = decision.substrate
            self._dispatched(name, +1)
            dispatched = time.time()
            stream = self._handles[name].options(stream=True).generate.remote(
                dict(payload, model=self._upstream[(name, decision.model)]))
            first = await self._first_event(stream)
            if first["t"] == "error":
                self._dispatched(name, -1)
                if not first["retryable"]:  # the request's fault, not the substrate's health
                    raise ApiError(400, "substrate_rejected_request", first["message"])
                self._outcomes.append(Outcome(name, False, None, None, time.time(), first.get("retry_after_s")))
                log.info("placement %s on %s failed before the first byte (%s); re-placing",
                         decision.placement_id, name, first["code"])
                now = time.time()
                preq = preq.retry_excluding(name, now)
                decision = rec.decision = self._place(preq, self._current_snapshot(now))
                continue
            break

        headers = {
            "x-inferplane-substrate": name,
            "x-inferplane-placement-id": decision.placement_id,
            "x-inferplane-spillover": "true" if decision.spillover else "false",
            "x-inferplane-attempts": str(decision.attempt),
        }
        if decision.spillover:
            headers["x-inferplane-spillover-reason"] = decision.spillover_reason.value
        if self._emulated[name]:
            headers["x-inferplane-emulated"] = "true"
        rid = ("chatcmpl-" if api == "chat" else "cmpl-") + preq.request_id[4:]
        created = int(arrived)
        model = decision.model
        if rec.streamed:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                self._stream_events(api, rid, created, model, name, first, stream, dispatched, include_usage, rec),
                media_type="text/event-stream", headers=headers)
        return await self._collect(api, rid, created, model, name, first, stream, dispatched, headers, rec)

    def _record(self, rec: RequestRecord, status: int, error_code: str | None, first_at: float | None,
                completion_tokens: int | None, prompt_tokens: int | None) -> None:
        """Journal the request's audit facts, then queue its audit row and metrics, once; the sync
        thread builds and writes them (building a row, with the decision as JSON, was 8 % of the
        request path in a profile). Called before the response's last bytes are sent, so a kill
        after the answer left cannot lose its row."""
        if rec.recorded:
            return
        rec.recorded = True
        now = time.time()
        decision = rec.decision
        outcome = RequestOutcome(
            status_code=status, error_code=error_code,
            attempts=decision.attempt if decision is not None else 0,
            ttft_s=None if first_at is None else first_at - rec.arrived_s,
            e2e_s=now - rec.arrived_s if status == 200 else None,
            input_tokens=prompt_tokens if prompt_tokens is not None else rec.input_tokens,
            output_tokens=completion_tokens, streamed=rec.streamed, finished_at_s=now)
        sla = self._policy.sla_classes.get(rec.sla_class) if rec.sla_class else None
        try:
            self._journal.write(journal_entry(
                request_id=rec.request_id, ingress_id=self._id, received_at_s=rec.arrived_s, tenant=rec.tenant,
                model=rec.model, sla_class=rec.sla_class, decision=decision, outcome=outcome, fleet=self._fleet,
                ingress_region=self._region, snapshot_age_s=rec.snapshot_age_s, sla=sla,
                config_hash=self._policy.policy_hash))
        except Exception:  # telemetry must never fail the plane; the row is still queued below
            log.exception("could not journal request %s", rec.request_id)
        self._finished.append((rec, outcome, sla))  # after the journal write, so the row written releases it

    def _write_finished(self) -> None:
        """Audit rows, outcome metrics and spend for the requests that finished since the last call.
        Runs in the sync thread (and on shutdown); a failure is logged, never raised."""
        while self._finished:
            rec, outcome, sla = self._finished.popleft()
            try:
                decision = rec.decision
                if decision is None:
                    self._metrics.delta.record_rejection(
                        rejection_code_for(outcome.error_code or "invalid"), rec.tenant, rec.model)
                row = audit_row(request_id=rec.request_id, ingress_id=self._id, received_at_s=rec.arrived_s,
                                tenant=rec.tenant, model=rec.model, sla_class=rec.sla_class, decision=decision,
                                outcome=outcome, fleet=self._fleet, ingress_region=self._region,
                                snapshot_age_s=rec.snapshot_age_s, sla=sla)
                self._audit.append(row)
                if row["cost_usd"] and rec.tenant:
                    with self._spend_lock:
                        self._spend[rec.tenant] += row["cost_usd"]
                if decision is not None and decision.placed:
                    self._metrics.delta.record_outcome(
                        decision.substrate, decision.tenant, decision.model, decision.sla_class,
                        outcome.status_code == 200, outcome.ttft_s, outcome.e2e_s, outcome.tpot_s,
                        outcome.input_tokens or 0, outcome.output_tokens or 0, row["cost_usd"] or 0.0)
            except Exception:  # telemetry must never fail the plane; the failure itself is logged
                log.exception("could not record request %s", rec.request_id)

    def _rejection(self, decision: PlacementDecision) -> ApiError:
        status = decision.http_status
        retry_after = 1.0 if status in (429, 503) else None
        return ApiError(status, decision.rejection_code.value, decision.rejection_message, retry_after_s=retry_after)

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

    def _payload(self, api: str, body, max_tokens: int, request_id: str) -> dict:
        payload = {"request_id": request_id, "api": api, "max_tokens": max_tokens,
                   "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
                   "stop": [body.stop] if isinstance(body.stop, str) else body.stop}
        if api == "chat":
            payload["messages"] = [{"role": m.role, "content": chat_text(m)} for m in body.messages]
        else:
            payload["prompt"] = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        return payload

    def _finish(self, name: str, ok: bool, dispatched: float, first_at: float | None, completion_tokens: int) -> None:
        self._dispatched(name, -1)
        now = time.time()
        ttft = None if first_at is None else first_at - dispatched
        tpot = None if first_at is None or completion_tokens < 2 else (now - first_at) / (completion_tokens - 1)
        self._outcomes.append(Outcome(name, ok, ttft, tpot, now))

    async def _collect(self, api, rid, created, model, name, first, stream, dispatched, headers, rec) -> Response:
        first_at = time.time()
        parts: list[str] = []
        done = None
        try:
            event = first
            while True:
                if event["t"] == "delta":
                    parts.append(event["text"])
                elif event["t"] == "done":
                    done = event
                    break
                elif event["t"] == "error":
                    raise ApiError(502, "substrate_error", f"substrate {name} failed mid-generation: {event['code']}")
                event = await stream.__anext__()
        except StopAsyncIteration:
            pass
        except ApiError:
            self._finish(name, False, dispatched, first_at, 0)
            raise
        except Exception as exc:
            self._finish(name, False, dispatched, first_at, 0)
            raise ApiError(502, "substrate_error", f"substrate {name} failed mid-generation: {type(exc).__name__}")
        if done is None:
            self._finish(name, False, dispatched, first_at, 0)
            raise ApiError(502, "substrate_error", f"substrate {name} ended without finishing")
        self._finish(name, True, dispatched, first_at, done["completion_tokens"])
        self._record(rec, 200, None, first_at, done["completion_tokens"], done["prompt_tokens"])
        body = completion_body(api, rid, created, model, "".join(parts), done["finish_reason"],
                               done["prompt_tokens"], done["completion_tokens"])
        return JSONResponse(body, headers=headers)

    async def _stream_events(self, api, rid, created, model, name, first, stream, dispatched, include_usage, rec):
        """The SSE stream. The status line went out as 200, so the row says how the stream really
        ended; it is recorded (journaled) before the stream's last line: ``[DONE]`` or the error event."""
        first_at = time.time()
        ok = False
        tokens = 0
        prompt_tokens = None
        try:
            if api == "chat":
                yield _sse_line(chunk(api, rid, created, model, "", first=True))
            event = first
            while True:
                if event["t"] == "delta":
                    yield _sse_line(chunk(api, rid, created, model, event["text"]))
                elif event["t"] == "done":
                    tokens = event["completion_tokens"]
                    prompt_tokens = event["prompt_tokens"]
                    yield _sse_line(chunk(api, rid, created, model, None if api == "chat" else "",
                                     finish_reason=event["finish_reason"]))
                    if include_usage:
                        yield _sse_line(usage_chunk(api, rid, created, model, event["prompt_tokens"], tokens))
                    ok = True
                    self._record(rec, 200, None, first_at, tokens, prompt_tokens)
                    yield "data: [DONE]\n\n"
                    return
                else:
                    break
                try:
                    event = await stream.__anext__()
                except StopAsyncIteration:
                    break
            err = ApiError(502, "substrate_error", f"substrate {name} failed mid-stream")
            self._record(rec, 502, err.code, first_at, tokens, prompt_tokens)
            yield _sse_line(err.body())
        except Exception as exc:  # noqa: BLE001 - the stream has started: end it with an error event
            err = ApiError(502, "substrate_error", f"substrate {name} failed mid-stream: {type(exc).__name__}")
            self._record(rec, 502, err.code, first_at, tokens, prompt_tokens)
            yield _sse_line(err.body())
        finally:
            self._finish(name, ok, dispatched, first_at, tokens)
            # Only a client gone mid-stream is not recorded yet (``_record`` keeps the first record).
            self._record(rec, 502, "client_disconnected", first_at, tokens, prompt_tokens)

    def __del__(self) -> None:
        # Graceful shutdown: stop syncing and recovering, write every audit row still pending, then
        # delete the journal segments those rows were waiting in.
        self._stop.set()
        self._recovery.join()
        self._write_finished()
        self._audit.close()
        self._journal.close()
