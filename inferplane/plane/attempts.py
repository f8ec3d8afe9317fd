"""The attempt loop of one request: place, dispatch, and re-place on a failure before the first byte.

Every step returns a value, ``Dispatch`` (send it there, under this lease) or ``Refusal`` (answer
the client with this error); the caller (the Serve ingress, or the replay on simulated time) does
the I/O and reports back what happened. No Ray, no clock: times are passed in.

The rules, stated once:

- **A retry is placed when it happens.** After a failure before the first byte at ``now_s``, the
  request is placed again with ``PlacementRequest.retry_excluding(failed, now_s)``: signal ages
  are judged from the retry's own time, and the substrates that failed it are excluded. The
  exclusion set only grows, so a retry never widens the candidate set, and it passes every filter
  the first placement did: a retry never crosses a boundary the first placement could not.
- **A retryable failure counts against the substrate** (an ``Outcome`` with ``ok=False`` and the
  substrate's Retry-After goes to the authority's circuit breaker); a failure that is the
  request's fault (the substrate refused it as invalid) does not: it is answered 400, never
  retried, and never touches the substrate's health.
- **A dispatch holds a lease** on the replica's view until the attempt ends (``finished``,
  ``failed`` or ``abandoned``); each releases it exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from inferplane.fleet_state import Outcome
from inferplane.placement import PlacementDecision, PlacementRequest
from inferplane.plane.state import Lease, ReplicaState, Unavailable

RETRY_AFTER_S = 1.0
"""The ``Retry-After`` of a 429 or 503 refusal."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    decision: PlacementDecision
    lease: Lease
    dispatched_at_s: float

    @property
    def substrate(self) -> str:
        return self.lease.substrate


@dataclass(frozen=True, slots=True)
class Refusal:
    """The request cannot be served: ``status`` and ``code`` are what the client gets."""

    status: int
    code: str
    message: str
    retry_after_s: float | None
    decision: PlacementDecision | None
    """The decision that refused it; None when no placement could be made at all."""


@dataclass(frozen=True, slots=True)
class FirstByteFailure:
    """How a dispatched attempt failed before its first byte, as the substrate's adapter said it."""

    code: str
    message: str
    retryable: bool
    retry_after_s: float | None = None


def refusal_of(decision: PlacementDecision) -> Refusal:
    """The client's error for a decision that placed nothing (its status by the filter ladder)."""
    status = decision.http_status
    return Refusal(status, decision.rejection_code.value, decision.rejection_message,
                   RETRY_AFTER_S if status in (429, 503) else None, decision)


class AttemptLoop:
    """The attempts of one request on one replica's state. Not thread-safe: one request, one task."""

    __slots__ = ("_state", "_request", "_current", "decision", "snapshot_age_s", "_due_s", "_blocks")

    def __init__(self, state: ReplicaState, request: PlacementRequest, prefix_blocks: tuple[int, ...] = ()) -> None:
        """``prefix_blocks``: the prompt's prefix blocks; the request is placed with the hits the
        replica's belief predicts for them (``ReplicaState.prefix_hits``), and each dispatch's
        blocks are believed held where it went from then on: in flight until the attempt ends,
        then cached there if its first byte came (``ReplicaState.prefix_settled``)."""
        self._state = state
        self._blocks = prefix_blocks
        if prefix_blocks and state.prefix is not None:
            request = replace(request, prefix_hits=state.prefix_hits(prefix_blocks))
        self._request = request
        sla = state.policy.sla_classes.get(request.sla_class)
        self._due_s = None if sla is None else request.arrived_at_s + sla.ttft_deadline_s
        """Its first token is due then (arrival + its class's first-token deadline), however often
        it is placed again."""
        self._current: Dispatch | None = None
        self.decision: PlacementDecision | None = None
        """The latest decision (what the request's record keeps)."""
        self.snapshot_age_s: float | None = None
        """The age of the snapshot that latest decision was made on."""

    @property
    def request(self) -> PlacementRequest:
        return self._request

    @property
    def current(self) -> Dispatch | None:
        """The attempt in flight, if any."""
        return self._current

    def start(self) -> Dispatch | Refusal:
        """The first placement, at the request's arrival."""
        return self._place(self._request.arrived_at_s)

    def place_again(self, now_s: float) -> Dispatch | Refusal:
        """Place the request again at ``now_s`` (a held request, when capacity may have freed):
        signal ages are judged from then."""
        if self._current is not None:
            raise RuntimeError("an attempt is in flight")
        self._request = replace(self._request, arrived_at_s=now_s)
        return self._place(now_s)

    def failed(self, failure: FirstByteFailure, now_s: float) -> Dispatch | Refusal:
        """The current attempt failed before its first byte at ``now_s``: the next step."""
        attempt = self._end(prefilled=False)
        if not failure.retryable:  # the request's fault, not the substrate's health
            return Refusal(400, "substrate_rejected_request", failure.message, None, self.decision)
        self._state.report_outcome(Outcome(attempt.substrate, False, None, None, now_s, failure.retry_after_s))
        self._request = self._request.retry_excluding(attempt.substrate, now_s)
        return self._place(now_s)

    def finished(self, ok: bool, first_token_s: float | None, output_tokens: int, now_s: float) -> None:
        """The current attempt ended after its first byte (``ok``: it completed). Its outcome goes to
        the authority: time to first token from dispatch, time per output token, and the tenant,
        canonical model, output tokens and dispatch time (what the authority learns expected output
        lengths and the load each reading met from)."""
        attempt = self._end(prefilled=first_token_s is not None)
        ttft = None if first_token_s is None else first_token_s - attempt.dispatched_at_s
        tpot = None if first_token_s is None or output_tokens < 2 else (now_s - first_token_s) / (output_tokens - 1)
        self._state.report_outcome(Outcome(
            attempt.substrate, ok, ttft, tpot, now_s, tenant=self._request.tenant, model=attempt.decision.model,
            output_tokens=output_tokens, dispatched_at_s=attempt.dispatched_at_s,
            declared_ttft_s=attempt.decision.declared_ttft_s))

    def abandoned(self) -> None:
        """The caller gave up on the current attempt (the client left): release it, judge nothing."""
        if self._current is not None:
            self._end(prefilled=False)  # whether the substrate prefilled it is not known

    def _end(self, prefilled: bool) -> Dispatch:
        attempt = self._current
        if attempt is None:
            raise RuntimeError("no attempt in flight")
        self._current = None
        attempt.lease.release()
        if self._blocks:
            self._state.prefix_settled(attempt.substrate, self._blocks, prefilled)
        return attempt

    def _place(self, now_s: float) -> Dispatch | Refusal:
        request = self._request
        decision, age = self._state.place(request, self._due_s)
        if isinstance(decision, Unavailable):
            return Refusal(503, "placement_unavailable", decision.message, RETRY_AFTER_S, self.decision)
        self.decision, self.snapshot_age_s = decision, age
        if not decision.placed:
            return refusal_of(decision)
        hit = decision.predicted_prefix_hit
        prefill_tokens = request.input_tokens * (1.0 - hit) if hit else float(request.input_tokens)
        lease = self._state.lease(decision.substrate, request.tenant, prefill_tokens, now_s,
                                  request.input_tokens + request.max_output_tokens)
        self._current = Dispatch(decision, lease, now_s)
        if self._blocks:
            self._state.prefix_sent(decision.substrate, self._blocks)
        return self._current
