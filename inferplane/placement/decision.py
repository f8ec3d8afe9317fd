"""The placement decision: immutable data, the thing the audit log stores.

A decision either names a substrate (with ranked fallbacks) or says why none qualifies, rolled up
like "0/5 substrates eligible: 3 jurisdiction not in {DE, FR}, 2 context window < 40000".
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from inferplane.placement.filters import LADDER, RejectionCode


class SpilloverReason(str, enum.Enum):
    PRIMARY_SATURATED = "primary_saturated"
    PRIMARY_RATE_LIMITED = "primary_rate_limited"
    PRIMARY_UNHEALTHY = "primary_unhealthy"
    PRIMARY_CANNOT_MEET_SLA = "primary_cannot_meet_sla"
    PRIMARY_NOT_ALLOWED = "primary_not_allowed"
    PRIMARY_CONTEXT_TOO_SMALL = "primary_context_too_small"
    PRIMARY_FAILED = "primary_failed"
    PRIMARY_OUTSCORED = "primary_outscored"
    OVER_BUDGET = "over_budget"


SPILLOVER_REASON_BY_REJECTION: dict[RejectionCode, SpilloverReason] = {
    RejectionCode.CAPACITY: SpilloverReason.PRIMARY_SATURATED,
    RejectionCode.RATE_LIMITED: SpilloverReason.PRIMARY_RATE_LIMITED,
    RejectionCode.UNHEALTHY: SpilloverReason.PRIMARY_UNHEALTHY,
    RejectionCode.STALE_SIGNALS: SpilloverReason.PRIMARY_UNHEALTHY,
    RejectionCode.JURISDICTION: SpilloverReason.PRIMARY_NOT_ALLOWED,
    RejectionCode.SPILLOVER_FORBIDDEN: SpilloverReason.PRIMARY_NOT_ALLOWED,
    RejectionCode.CONTEXT_WINDOW: SpilloverReason.PRIMARY_CONTEXT_TOO_SMALL,
    RejectionCode.EXCLUDED: SpilloverReason.PRIMARY_FAILED,
    RejectionCode.NODE_JURISDICTION: SpilloverReason.PRIMARY_NOT_ALLOWED,
    RejectionCode.EXTERNAL_SIGNAL: SpilloverReason.PRIMARY_UNHEALTHY,
    RejectionCode.PREDICTED_TOO_SLOW: SpilloverReason.PRIMARY_CANNOT_MEET_SLA,
    RejectionCode.OVER_BUDGET: SpilloverReason.OVER_BUDGET,
}

# HTTP status for a request no substrate can take, by the furthest rejection on the ladder.
STATUS_BY_REJECTION: dict[RejectionCode, int] = {
    RejectionCode.EXCLUDED: 503,
    RejectionCode.SPILLOVER_FORBIDDEN: 403,
    RejectionCode.JURISDICTION: 403,
    RejectionCode.CONTEXT_WINDOW: 400,
    RejectionCode.UNHEALTHY: 503,
    RejectionCode.STALE_SIGNALS: 503,
    RejectionCode.CAPACITY: 429,
    RejectionCode.RATE_LIMITED: 429,
    RejectionCode.NODE_JURISDICTION: 403,
    RejectionCode.EXTERNAL_SIGNAL: 503,
    RejectionCode.PREDICTED_TOO_SLOW: 503,
    RejectionCode.OVER_BUDGET: 402,
    RejectionCode.UNKNOWN_MODEL: 404,
    RejectionCode.UNKNOWN_TENANT: 401,
    RejectionCode.MODEL_NOT_ALLOWED: 403,
    RejectionCode.UNKNOWN_SLA_CLASS: 400,
    RejectionCode.SLA_CLASS_NOT_ALLOWED: 403,
}


class CandidateVerdict(NamedTuple):
    """One substrate's outcome in one decision."""

    name: str
    eligible: bool
    code: RejectionCode | None
    summary: str | None
    reason: str | None
    scores: tuple[float, ...] | None
    """Aligned with ``PlacementDecision.scorer_names``; None when rejected."""
    total: float
    ttft_s: float | None
    e2e_s: float | None
    cost_usd: float | None
    meets_sla: bool


@dataclass(frozen=True, slots=True)
class PlacementDecision:
    placement_id: str
    request_id: str
    attempt: int
    tenant: str
    model: str
    sla_class: str
    substrate: str | None
    fallbacks: tuple[str, ...]
    primary: str | None
    spillover: bool
    spillover_reason: SpilloverReason | None
    candidates: tuple[CandidateVerdict, ...]
    scorer_names: tuple[str, ...]
    predicted_ttft_s: float | None
    predicted_e2e_s: float | None
    estimated_cost_usd: float | None
    rejection_code: RejectionCode | None
    """For a request nothing can take: the furthest rejection on the filter ladder."""
    rejection_message: str | None
    policy_hash: str
    snapshot_version: int

    @property
    def placed(self) -> bool:
        return self.substrate is not None

    @property
    def http_status(self) -> int:
        """200 when placed; otherwise the status the ingress answers with."""
        if self.rejection_code is None:
            return 200
        return STATUS_BY_REJECTION[self.rejection_code]

    @property
    def eligible_count(self) -> int:
        return sum(1 for c in self.candidates if c.eligible)

    def scores_of(self, name: str) -> dict[str, float] | None:
        for c in self.candidates:
            if c.name == name:
                return None if c.scores is None else dict(zip(self.scorer_names, c.scores))
        raise KeyError(name)

    def to_dict(self) -> dict:
        """The decision as plain JSON-able data (the CLI's ``--json`` and the audit log)."""
        return {
            "placement_id": self.placement_id,
            "request_id": self.request_id,
            "attempt": self.attempt,
            "tenant": self.tenant,
            "model": self.model,
            "sla_class": self.sla_class,
            "substrate": self.substrate,
            "primary": self.primary,
            "spillover": self.spillover,
            "spillover_reason": None if self.spillover_reason is None else self.spillover_reason.value,
            "fallbacks": list(self.fallbacks),
            "predicted_ttft_s": self.predicted_ttft_s,
            "predicted_e2e_s": self.predicted_e2e_s,
            "estimated_cost_usd": self.estimated_cost_usd,
            "http_status": self.http_status,
            "rejection_code": None if self.rejection_code is None else self.rejection_code.value,
            "rejection_message": self.rejection_message,
            "eligible": self.eligible_count,
            "policy_hash": self.policy_hash,
            "snapshot_version": self.snapshot_version,
            "candidates": [
                {
                    "name": c.name,
                    "eligible": c.eligible,
                    "code": None if c.code is None else c.code.value,
                    "reason": c.reason,
                    "scores": None if c.scores is None else dict(zip(self.scorer_names, c.scores)),
                    "total": c.total,
                    "predicted_ttft_s": c.ttft_s,
                    "predicted_e2e_s": c.e2e_s,
                    "estimated_cost_usd": c.cost_usd,
                    "meets_sla": c.meets_sla,
                }
                for c in self.candidates
            ],
        }


def roll_up(candidates: tuple[CandidateVerdict, ...], model: str) -> tuple[RejectionCode, str]:
    """The furthest rejection on the ladder, and the summary message for the client.

    Groups rejections by their summary, most frequent first:
    "0/5 substrates serving `m` eligible: 3 jurisdiction not in {DE, FR}, 2 context window < 40000".
    """
    counts = Counter(c.summary for c in candidates if not c.eligible)
    parts = ", ".join(f"{n} {summary}" for summary, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    furthest = max((c.code for c in candidates if c.code is not None), key=LADDER.__getitem__)
    msg = f"0/{len(candidates)} substrates serving `{model}` eligible: {parts}"
    return furthest, msg
