"""Where an ingress replica's requests end: one ``RequestRecord`` each, and what follows from it.

``open`` starts a request's ``OpenRequest`` when it arrives; ``OpenRequest.close`` ends it exactly
once, whatever the path (answered, refused, failed mid-stream, cancelled, or never iterated by a
client that left before the stream began): it releases the attempt in flight, freezes the record,
journals it (``telemetry.journal``: on disk before the answer's last bytes leave, so a killed
replica loses no row) and queues it. ``drain`` (the sync loop, off the request path) turns queued
records into audit rows (``telemetry.audit.audit_row``, the only row builder) and outcome metrics.
The tenant's attributed spend is added to the replica's pending sync report at close.

A second ``close`` is a no-op, so every exit path may call it; ``watch(generator, request)`` closes
a request whose response generator is dropped without having run to its end.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable, Mapping

from inferplane.placement import FleetSpec, PlacementPolicy
from inferplane.plane.attempts import AttemptLoop
from inferplane.plane.record import RequestRecord
from inferplane.plane.state import ReplicaState
from inferplane.telemetry.audit import AuditLog, audit_row
from inferplane.telemetry.cost import request_cost
from inferplane.telemetry.journal import Journal
from inferplane.telemetry.metrics import MetricsOutbox

log = logging.getLogger("inferplane.ledger")

CLIENT_DISCONNECTED = "client_disconnected"
"""The error code of a request whose client left before its answer ended (status 499)."""


class OpenRequest:
    """A request between its arrival and its record. Fields are filled as the ingress learns them
    (parse, then placement); ``close`` freezes them into the record, once."""

    __slots__ = ("_ledger", "request_id", "received_at_s", "tenant", "model", "sla_class", "streamed",
                 "input_tokens", "prefix_blocks", "attempts", "held_s", "held_reason", "record")

    def __init__(self, ledger: RequestLedger, request_id: str, received_at_s: float) -> None:
        self._ledger = ledger
        self.request_id = request_id
        self.received_at_s = received_at_s
        self.tenant: str | None = None
        self.model: str | None = None
        self.sla_class: str | None = None
        self.streamed = False
        self.input_tokens: int | None = None
        """The ingress's estimate, until the engine reports its own count."""
        self.prefix_blocks: tuple[int, ...] = ()
        """The prompt's chained block hashes (``placement.prefix``), when the ingress knows them."""
        self.attempts: AttemptLoop | None = None
        self.held_s = 0.0
        """Time in the hold queue (``plane.queue``)."""
        self.held_reason: str | None = None
        self.record: RequestRecord | None = None

    def close(self, status: int, error_code: str | None, now_s: float, *, first_token_s: float | None = None,
              output_tokens: int | None = None, prompt_tokens: int | None = None,
              cached_tokens: int | None = None) -> RequestRecord | None:
        """End the request (first call only; later calls return None). ``first_token_s`` and
        ``now_s`` are on the plane's clock; ``prompt_tokens`` is the engine's count when known, and
        ``cached_tokens`` how many of them it served from its prefix cache."""
        if self.record is not None:
            return None
        return self._ledger._close(self, status, error_code, now_s, first_token_s, output_tokens, prompt_tokens,
                                   cached_tokens)


class RequestLedger:
    def __init__(self, ingress_id: str, ingress_region: str | None, fleet: FleetSpec, policy: PlacementPolicy,
                 state: ReplicaState, journal: Journal, audit: AuditLog, metrics: MetricsOutbox, *,
                 model_files: Mapping[str, str] | None = None) -> None:
        """``model_files``: canonical model -> SHA-256 of the model file that declared it
        (``config.model_files.model_file_hashes``); each record carries its model's."""
        self._model_files = dict(model_files or {})
        self._ingress_id = ingress_id
        self._region = ingress_region
        self._fleet = fleet
        self._policy = policy
        self._state = state
        self._journal = journal
        self._audit = audit
        self._metrics = metrics
        self._queued: deque[RequestRecord] = deque()

    def open(self, request_id: str, received_at_s: float) -> OpenRequest:
        return OpenRequest(self, request_id, received_at_s)

    def watch(self, owner: object, request: OpenRequest, clock: Callable[[], float],
              on_abandoned: Callable[[], None] | None = None) -> None:
        """Close ``request`` as abandoned by its client (499) if ``owner`` (a response's body
        generator) is collected before the request was closed: a generator the server never started
        runs no ``finally``. ``on_abandoned`` then runs too (cancel the substrate's stream)."""
        weakref.finalize(owner, _close_abandoned, request, clock, on_abandoned)  # holds the request, not the owner

    def _close(self, req: OpenRequest, status: int, error_code: str | None, now_s: float,
               first_token_s: float | None, output_tokens: int | None, prompt_tokens: int | None,
               cached_tokens: int | None = None) -> RequestRecord:
        loop = req.attempts
        dispatched_after = None
        if loop is not None and loop.current is not None:
            dispatched_after = loop.current.dispatched_at_s - req.received_at_s
            if status == 499 or (status != 200 and first_token_s is None):
                loop.abandoned()  # a client that leaves says nothing about the substrate's health
            else:
                loop.finished(status == 200, first_token_s, output_tokens or 0, now_s)
        decision = None if loop is None else loop.decision
        input_tokens = prompt_tokens if prompt_tokens is not None else req.input_tokens
        e2e = now_s - req.received_at_s
        cost = None
        if decision is not None and decision.placed:
            cost = request_cost(self._fleet.substrate(decision.substrate), input_tokens or 0, output_tokens or 0,
                                e2e, self._region)
        record = req.record = RequestRecord(
            request_id=req.request_id, ingress_id=self._ingress_id, ingress_region=self._region,
            received_at_s=req.received_at_s, finished_at_s=now_s, tenant=req.tenant, model=req.model,
            sla_class=req.sla_class, streamed=req.streamed, decision=decision,
            snapshot_age_s=None if loop is None else loop.snapshot_age_s, status_code=status,
            error_code=error_code, ttft_s=None if first_token_s is None else first_token_s - req.received_at_s,
            e2e_s=e2e if status == 200 else None, input_tokens=input_tokens, output_tokens=output_tokens,
            cost=cost, config_hash=self._policy.policy_hash, held_s=req.held_s, held_reason=req.held_reason,
            estimated_input_tokens=req.input_tokens, cached_input_tokens=cached_tokens,
            dispatched_after_s=dispatched_after,
            model_file_sha256=self._model_files.get(decision.model if decision is not None
                                                    else self._fleet.model_names.get(req.model or "", "")))
        if cost is not None and record.tenant is not None:
            self._state.add_spend(record.tenant, cost.total_usd)
        try:
            self._journal.write(record)
        except Exception:  # telemetry must never fail the plane; the row is still queued below
            log.exception("could not journal request %s", record.request_id)
        self._queued.append(record)  # after the journal write, so the row written releases it
        return record

    def drain(self) -> int:
        """Audit rows and outcome metrics for the records closed since the last call; returns how
        many. A failure is logged, never raised."""
        n = 0
        while self._queued:
            record = self._queued.popleft()
            n += 1
            try:
                self._audit.append(audit_row(record, self._fleet, self._policy))
                self._metrics.delta.record_request(record)
            except Exception:  # telemetry must never fail the plane; the failure itself is logged
                log.exception("could not record request %s", record.request_id)
        return n


def _close_abandoned(req: OpenRequest, clock: Callable[[], float], on_abandoned: Callable[[], None] | None) -> None:
    if req.record is None:
        if on_abandoned is not None:
            on_abandoned()
        req.close(499, CLIENT_DISCONNECTED, clock())
