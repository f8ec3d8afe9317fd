"""The placement decision: immutable data, the thing the audit log stores.

A decision either names a substrate (with ranked fallbacks) or says why none qualifies, rolled up
like "0/5 substrates eligible: 3 jurisdiction not in {DE, FR}, 2 context window < 40000".
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from inferplane.placement.filters import LADDER, RejectionCode
from inferplane.placement.signals import DriftPenalty


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
    HELD_BACK = "held_back"


SPILLOVER_REASON_BY_REJECTION: dict[RejectionCode, SpilloverReason] = {
    RejectionCode.CAPACITY: SpilloverReason.PRIMARY_SATURATED,
    RejectionCode.RATE_LIMITED: SpilloverReason.PRIMARY_RATE_LIMITED,
    RejectionCode.UNHEALTHY: SpilloverReason.PRIMARY_UNHEALTHY,
    RejectionCode.STALE_SIGNALS: SpilloverReason.PRIMARY_UNHEALTHY,
    RejectionCode.JURISDICTION: SpilloverReason.PRIMARY_NOT_ALLOWED,
    RejectionCode.SPILLOVER_FORBIDDEN: SpilloverReason.PRIMARY_NOT_ALLOWED,
    RejectionCode.CONTEXT_WINDOW: SpilloverReason.PRIMARY_CONTEXT_TOO_SMALL,
    RejectionCode.UNSUPPORTED_PARAMETER: SpilloverReason.PRIMARY_NOT_ALLOWED,
    RejectionCode.EXCLUDED: SpilloverReason.PRIMARY_FAILED,
    RejectionCode.NODE_JURISDICTION: SpilloverReason.PRIMARY_NOT_ALLOWED,
    RejectionCode.EXTERNAL_SIGNAL: SpilloverReason.PRIMARY_UNHEALTHY,
    RejectionCode.PREDICTED_TOO_SLOW: SpilloverReason.PRIMARY_CANNOT_MEET_SLA,
    RejectionCode.OVER_BUDGET: SpilloverReason.OVER_BUDGET,
    RejectionCode.HELD_BACK: SpilloverReason.HELD_BACK,
}

# HTTP status for a request no substrate can take, by the furthest rejection on the ladder.
STATUS_BY_REJECTION: dict[RejectionCode, int] = {
    RejectionCode.EXCLUDED: 503,
    RejectionCode.SPILLOVER_FORBIDDEN: 403,
    RejectionCode.JURISDICTION: 403,
    RejectionCode.CONTEXT_WINDOW: 400,
    RejectionCode.UNSUPPORTED_PARAMETER: 400,
    RejectionCode.UNHEALTHY: 503,
    RejectionCode.STALE_SIGNALS: 503,
    RejectionCode.CAPACITY: 429,
    RejectionCode.RATE_LIMITED: 429,
    RejectionCode.HELD_BACK: 429,
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
    drift: tuple[DriftPenalty, ...] = ()
    """The drift penalties the prediction was made with (``placement.signals.DriftPenalty``: the
    substrate's latency readings raised to a floor while its residuals drift); () when none, and
    for a verdict without a prediction."""

    def drift_note(self) -> str | None:
        """"predicted with drift penalty ×1.80 (ttft ≥ 0.450 s)", or None without a penalty."""
        if not self.drift:
            return None
        return "predicted with " + ", ".join(p.describe() for p in self.drift)


def placement_id(request_id: str, attempt: int) -> str:
    """A stable id for one placement attempt of one request."""
    return "pl-" + hashlib.blake2b(f"{request_id}/{attempt}".encode(), digest_size=8).hexdigest()


# The decision's fields, in order. ``candidates`` is kept apart: the engine may hand it over as a
# function that works the verdicts out on first read (see ``PlacementDecision.deferred``).
_FIELDS = ("placement_id", "request_id", "attempt", "tenant", "model", "sla_class", "substrate", "fallbacks",
           "primary", "spillover", "spillover_reason", "scorer_names", "predicted_ttft_s", "predicted_e2e_s",
           "estimated_cost_usd", "rejection_code", "rejection_message", "policy_hash", "snapshot_version",
           "predicted_output_tokens", "declared_ttft_s", "declared_tpot_s", "predicted_prefix_hit",
           "model_version", "rollout")
_set = object.__setattr__


class PlacementDecision:
    """Immutable. Built with keywords (every field below, ``candidates`` included), or by the engine
    with ``deferred``. Its fields live in one tuple because one is built per placement: setting
    twenty slots of a frozen dataclass one by one costs more than the placement arithmetic."""

    __slots__ = ("_values", "_pending", "_candidates")
    # ``_pending``: None, or (the function that works ``candidates`` out, its arguments, eligible count,
    # (the function that works ``fallbacks`` out, its arguments)) for a deferred decision, whose
    # ``_candidates`` is unset until first read.

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
    scorer_names: tuple[str, ...]
    predicted_ttft_s: float | None
    predicted_e2e_s: float | None
    estimated_cost_usd: float | None
    rejection_code: RejectionCode | None
    """For a request nothing can take: the furthest rejection on the filter ladder."""
    rejection_message: str | None
    policy_hash: str
    snapshot_version: int
    predicted_output_tokens: float | None
    """The output length the predictions assumed (the request's expected one, see
    ``placement.estimate``); None when nothing was placed, or for a decision made before it was kept."""
    declared_ttft_s: float | None
    declared_tpot_s: float | None
    """What the chosen substrate's *declared* latency profile predicts for this request at the load
    it was placed on: the estimate before any observed reading raised it (no ``recent_ttft`` floor,
    the profile's per-token time at that batch size; ``placement.prepared.declared_latency``). The
    drift detector judges outcomes against these: "slower than declared" stays visible after the
    estimate has learned the slower latency from outcomes. None when nothing was placed, or for a
    decision made before they were kept."""
    predicted_prefix_hit: float | None
    """The fraction of the prompt placement predicted the chosen substrate's prefix cache holds
    (``PlacementRequest.prefix_hits``; 0 when none was predicted); None when nothing was placed, or
    for a decision made before it was kept."""
    model_version: str | None
    """For a model with versions (``models[].versions``): the version this request was given (from
    its request id; every attempt of the request gets the same), and placed on. None otherwise."""
    rollout: str | None
    """The model's split when it was placed, as ``v1=90,v2=10`` (percent); None without versions."""

    def __init__(self, *, placement_id: str, request_id: str, attempt: int, tenant: str, model: str,
                 sla_class: str, substrate: str | None, fallbacks: tuple[str, ...], primary: str | None,
                 spillover: bool, spillover_reason: SpilloverReason | None,
                 candidates: tuple[CandidateVerdict, ...], scorer_names: tuple[str, ...],
                 predicted_ttft_s: float | None, predicted_e2e_s: float | None,
                 estimated_cost_usd: float | None, rejection_code: RejectionCode | None,
                 rejection_message: str | None, policy_hash: str, snapshot_version: int,
                 predicted_output_tokens: float | None = None, declared_ttft_s: float | None = None,
                 declared_tpot_s: float | None = None, predicted_prefix_hit: float | None = None,
                 model_version: str | None = None, rollout: str | None = None) -> None:
        _set(self, "_values", (placement_id, request_id, attempt, tenant, model, sla_class, substrate, fallbacks,
                               primary, spillover, spillover_reason, scorer_names, predicted_ttft_s,
                               predicted_e2e_s, estimated_cost_usd, rejection_code, rejection_message,
                               policy_hash, snapshot_version, predicted_output_tokens, declared_ttft_s,
                               declared_tpot_s, predicted_prefix_hit, model_version, rollout))
        _set(self, "_candidates", tuple(candidates))
        _set(self, "_pending", None)

    @classmethod
    def deferred(cls, values: tuple, verdicts: Callable[..., tuple[CandidateVerdict, ...]], args: tuple,
                 eligible_count: int, fallbacks: tuple[Callable[..., tuple[str, ...]], tuple]) -> PlacementDecision:
        """A decision whose fields are ``values`` (in ``_FIELDS`` order; ``placement_id`` may be
        None, then it is ``placement_id(request_id, attempt)``, worked out on read; ``fallbacks`` is
        None, then it is ``fn(*fn_args)`` for ``fallbacks = (fn, fn_args)``, worked out on first
        read) and whose ``candidates`` are ``verdicts(*args)``, called on first read. Both functions
        must be pure functions of immutable inputs, so when they run changes nothing."""
        d = object.__new__(cls)
        _set(d, "_values", values)
        _set(d, "_pending", (verdicts, args, eligible_count, fallbacks))
        return d

    @property
    def fallbacks(self) -> tuple[str, ...]:
        """The other eligible substrates, best first."""
        v = self._values[7]
        if v is None:
            fn, args = self._pending[3]
            v = fn(*args)
            values = self._values
            _set(self, "_values", (*values[:7], v, *values[8:]))  # the same value on every read
        return v

    @property
    def candidates(self) -> tuple[CandidateVerdict, ...]:
        """Every substrate serving the model, in the route's order, with its verdict."""
        try:
            return self._candidates
        except AttributeError:  # deferred, not read yet
            verdicts, args, _, _ = self._pending
            c = verdicts(*args)
            _set(self, "_candidates", c)  # the same value on every call: caching is unobservable
            return c

    @property
    def placement_id(self) -> str:
        v = self._values
        return v[0] if v[0] is not None else placement_id(v[1], v[2])

    def _fields(self) -> tuple:
        """The field values, ``placement_id`` and ``fallbacks`` worked out."""
        self.fallbacks  # noqa: B018 - works them out if deferred
        v = self._values
        return v if v[0] is not None else (placement_id(v[1], v[2]), *v[1:])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"PlacementDecision is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"PlacementDecision is immutable: cannot delete {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PlacementDecision):
            return NotImplemented
        return self._fields() == other._fields() and self.candidates == other.candidates

    def __hash__(self) -> int:
        return hash((self._fields(), self.candidates))

    def __repr__(self) -> str:
        parts = [f"{n}={v!r}" for n, v in zip(_FIELDS, self._fields())]
        parts.insert(_FIELDS.index("scorer_names"), f"candidates={self.candidates!r}")
        return f"PlacementDecision({', '.join(parts)})"

    def __reduce__(self):
        return _restore, (self._fields(), self.candidates)

    @property
    def placed(self) -> bool:
        return self.substrate is not None

    @property
    def version_weight_pct(self) -> int | None:
        """The chosen version's weight in ``rollout`` (percent), or None without versions."""
        if self.model_version is None or self.rollout is None:
            return None
        for part in self.rollout.split(","):
            name, _, weight = part.partition("=")
            if name == self.model_version:
                return int(weight)
        return None

    @property
    def predicted_tpot_s(self) -> float | None:
        """The predicted time per output token: ``(predicted_e2e - predicted_ttft) / predicted_output_tokens``.
        The estimate predicts ``e2e = ttft + output_tokens * per_token``, so this is its per-token
        time (to float rounding). None when any of the three is unknown or no output was assumed."""
        v = self._values
        ttft, e2e, out = v[12], v[13], v[19]
        if ttft is None or e2e is None or out is None or out <= 0.0:
            return None
        return max(0.0, e2e - ttft) / out

    @property
    def http_status(self) -> int:
        """200 when placed; otherwise the status the ingress answers with."""
        if self.rejection_code is None:
            return 200
        return STATUS_BY_REJECTION[self.rejection_code]

    @property
    def eligible_count(self) -> int:
        if self._pending is not None:
            return self._pending[2]
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
            "predicted_output_tokens": self.predicted_output_tokens,
            "declared_ttft_s": self.declared_ttft_s,
            "declared_tpot_s": self.declared_tpot_s,
            "predicted_prefix_hit": self.predicted_prefix_hit,
            "model_version": self.model_version,
            "rollout": self.rollout,
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
                    "drift": [p._asdict() for p in c.drift],
                    "drift_note": c.drift_note(),
                }
                for c in self.candidates
            ],
        }


def _restore(values: tuple, candidates: tuple[CandidateVerdict, ...]) -> PlacementDecision:
    return PlacementDecision(**dict(zip(_FIELDS, values)), candidates=candidates)


for _i, _name in enumerate(_FIELDS[1:], 1):
    if _name != "fallbacks":  # a property of its own (deferred)
        setattr(PlacementDecision, _name, property(lambda self, _i=_i: self._values[_i]))
del _i, _name


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
