"""One request, one record: everything the plane learned about a request, frozen when it ends.

The ingress (and anything else that answers requests) builds exactly one ``RequestRecord`` per
request, when the request ends: answered, failed mid-way, refused, or abandoned by its client. The
audit row, the write-ahead journal entry, the outcome metrics and the tenant's attributed spend are
all functions of this record (``telemetry.audit.audit_row``, ``telemetry.journal``); none of them is
assembled anywhere else.

Times: ``received_at_s`` and ``finished_at_s`` are on the plane's clock (epoch seconds);
``ttft_s`` and ``e2e_s`` are seconds from receipt, what the client experienced (placement, waits
and retries included); ``held_s`` is the part of it spent in the hold queue.

Names: ``tenant`` is the authenticated tenant (None: no valid key). ``model`` and ``sla_class`` are
what the client sent, raw: the audit row writes them only when the config knows them (else as a
digest). With a decision, the decision's canonical names take precedence.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferplane.placement.decision import PlacementDecision
from inferplane.telemetry.cost import CostBreakdown


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    ingress_id: str
    """The ingress replica that answered."""
    ingress_region: str | None
    received_at_s: float
    finished_at_s: float
    tenant: str | None
    model: str | None
    sla_class: str | None
    streamed: bool
    """An SSE stream was requested."""
    decision: PlacementDecision | None
    """The final placement attempt's decision; None when refused before placement."""
    snapshot_age_s: float | None
    """Age of the fleet snapshot when the final decision was made."""
    status_code: int
    error_code: str | None
    ttft_s: float | None
    e2e_s: float | None
    input_tokens: int | None
    """Prompt tokens: the engine's count when it reported one, else the ingress's estimate."""
    output_tokens: int | None
    """Completion tokens produced (streamed ones included when the client left mid-stream)."""
    cost: CostBreakdown | None
    """Attributed cost of the final attempt (``telemetry.cost.request_cost``); None if never placed."""
    config_hash: str
    """The policy hash of the config the answering replica ran."""
    held_s: float = 0.0
    """Time it waited in the replica's hold queue for a slot (``plane.queue``); 0 when it did not."""
    held_reason: str | None = None
    """Why it waited: the refusal of the placement that put it in the queue (rolled up)."""
    estimated_input_tokens: int | None = None
    """Prompt tokens as the ingress counted them before dispatch (``input_tokens`` is the engine's
    count when it reported one); None when the request ended before they were counted."""
    cached_input_tokens: int | None = None
    """Prompt tokens the engine served from its prefix cache (vLLM's ``num_cached_tokens``, a
    provider's ``cached_tokens``): the measured side of ``decision.predicted_prefix_hit``. None when
    the substrate does not report it."""
    dispatched_after_s: float | None = None
    """Seconds from receipt to the dispatch of the attempt its decision placed (time in the hold
    queue and on earlier failed attempts); None when nothing was dispatched, or for a record made
    before it was kept. ``substrate_ttft_s`` subtracts it."""
    model_file_sha256: str | None = None
    """SHA-256 of the team's model file (``kind: models``) that declared the request's model in the
    config the answering replica ran; None for a model of the fleet file, a model the config does
    not know, or a record made before it was kept."""

    @property
    def substrate_ttft_s(self) -> float | None:
        """Time to first token from the final attempt's dispatch: the substrate's own TTFT, which
        its decision predicted (``ttft_s`` is the client's, from receipt)."""
        if self.ttft_s is None:
            return None
        return self.ttft_s - (self.dispatched_after_s or 0.0)

    @property
    def attempts(self) -> int:
        """Placement attempts (1 + retries); 0 when refused before placement."""
        return 0 if self.decision is None else self.decision.attempt

    @property
    def placed(self) -> bool:
        return self.decision is not None and self.decision.placed

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first: ``(e2e - ttft) / (output_tokens - 1)``."""
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens is None or self.output_tokens < 2:
            return None
        return max(0.0, self.e2e_s - self.ttft_s) / (self.output_tokens - 1)
