"""Live signals of one substrate, each stamped with when it was observed.

A signal is a ``Reading``: a value and the time it was observed, on the plane's clock. Its age at
decision time is ``request.arrived_at_s - observed_at_s``. A stale reading counts against its
substrate: required signals that are missing or older than the policy's bound make the substrate
ineligible, optional ones score as the worst case.

The load, and the one occupancy placement reads from it:

- ``in_flight`` is every request the substrate holds: dispatched to it and not finished, whether
  running, waiting for a slot in the substrate, or still on its way there. It is the plane's own
  count, summed over the live ingress replicas (what each dispatched and has not seen end). When
  no ingress replica reports, it is the substrate replicas' own count, made to mean the same by the
  authority (``fleet_state``): the vLLM adapter counts every request it has handed the engine
  (running and waiting) and a provider-API adapter every request sent and not answered, while the
  emulated adapter counts only the slots held, so its waiting requests are added.
- ``queued`` is the part of ``in_flight`` the substrate reports waiting for a slot (vLLM: the
  engine's waiting requests; emulated: its FIFO; provider APIs: never reported). It is already in
  ``in_flight`` and is never added to it; placement does not read it (status and metrics do).

Capacity: a vLLM or emulated substrate runs ``max_concurrent`` slots per its configured replicas;
the authority scales that by the replicas live now and hands it over as ``capacity`` (``limits``).

Occupancy is ``in_flight``: admission (``filters.Admission``), the queue wait the estimate predicts
and ``QueuePressure`` all read that one number.

A drift penalty (``policy.health.residual_drift: penalize``, ``telemetry.drift``) is not a signal of
its own: the authority raises the substrate's ``recent_ttft_s`` / ``recent_tpot_s`` to the penalty's
floor, which the estimate already reads as floors, and names each penalty it applied in ``drift``,
so that the decision can say its prediction was penalized (``CandidateVerdict.drift``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # fleet imports this module
    from inferplane.placement.fleet import SubstrateSpec


class CircuitState(str, enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Reading:
    value: float
    observed_at_s: float


class Capacity(NamedTuple):
    """A substrate's admission limits now (``SubstrateSignals.capacity``): requests it runs at once,
    and requests that may wait beyond them. (A named tuple: it crosses Ray as a plain tuple.)"""

    max_concurrent: int
    max_queued: int


class DriftPenalty(NamedTuple):
    """A drift penalty the authority applied to a substrate's signals: its ``kind``'s reading
    (``ttft`` -> ``recent_ttft_s``, ``tpot`` -> ``recent_tpot_s``) raised to ``floor_s``, which is
    ``factor`` (the median residual when the drift was flagged) times the median prediction then.
    (A named tuple: it crosses Ray and the journal as a plain list.)"""

    kind: str
    factor: float
    floor_s: float

    def describe(self) -> str:
        """What a decision says of it: "drift penalty ×1.80 (ttft ≥ 0.450 s)"."""
        return f"drift penalty ×{self.factor:.2f} ({self.kind} ≥ {self.floor_s:.3f} s)"


# Signals every substrate must report to be placeable, and the extra ones per kind.
REQUIRED_SIGNALS: dict[str, tuple[str, ...]] = {
    "vllm": ("in_flight", "kv_cache_usage"),
    "openai_compatible": ("in_flight",),
    "emulated": ("in_flight",),
}


@dataclass(frozen=True, slots=True)
class SubstrateSignals:
    """What the placement authority last knew about one substrate."""

    in_flight: Reading | None = None
    """Requests held (running or waiting): the occupancy (see the module doc)."""
    queued: Reading | None = None
    """Of ``in_flight``, those the substrate reports waiting for a slot (not added to it)."""
    gpu_memory_used_ratio: Reading | None = None
    kv_cache_usage: Reading | None = None
    rate_limit_requests_remaining: Reading | None = None
    rate_limit_tokens_remaining: Reading | None = None
    recent_ttft_s: Reading | None = None
    recent_tpot_s: Reading | None = None
    error_rate: Reading | None = None
    circuit: CircuitState = CircuitState.CLOSED
    node_countries: frozenset[str] | None = None
    """Countries in the jurisdiction labels of the nodes its live replicas run on; None when no
    replica reported a label."""
    unlabelled_replicas: int = 0
    """Live replicas on nodes without a jurisdiction label."""
    external: tuple[tuple[str, Reading], ...] = ()
    """Signals pushed by the platform team that apply to this substrate (by name)."""
    drift: tuple[DriftPenalty, ...] = ()
    """The drift penalties applied to ``recent_ttft_s`` / ``recent_tpot_s`` (penalize mode only;
    the readings already carry them): each raised its reading to its floor."""
    capacity: Capacity | None = None
    """Its admission limits now, for a substrate whose capacity follows its live replicas
    (``SubstrateSpec.replicas``): slots per replica times the replicas live and reporting, 0 with
    none (replicas Serve is still starting are not counted). None: the spec's fleet-level
    ``max_concurrent`` / ``max_queued`` (provider APIs, and signals built without an authority)."""
    ttft_ratio: Reading | None = None
    """The median of observed / declared first-token time over the outcomes ``recent_ttft_s`` is
    the median of (those whose placement carried the declared profile's prediction), dated as
    ``recent_ttft_s``: how much slower (or faster) than its profile the substrate really is. When
    present the estimate scales its prediction by it instead of flooring it with the size-blind
    ``recent_ttft_s`` (``estimate``). None: no such outcome."""
    prefill_clear_at_s: float | None = None
    """When the prefill lanes of a substrate that declares them clear the first-token work this
    ingress replica has dispatched there (its lane clock, ``plane.state``): each dispatch adds
    ``base_ttft + its prompt's prefill`` over the live lanes, from now or from when the work before
    it clears. The estimate waits for ``prefill_clear_at_s - now`` when that is longer than the
    mean-field lane wait (``estimate``). Set only in a replica's own view, never by the authority
    (each replica knows its own dispatches); None: no clock (no lanes, or nothing dispatched)."""

    @staticmethod
    def idle(observed_at_s: float, *, kv_cache_usage: float | None = 0.0) -> SubstrateSignals:
        """An idle substrate observed at ``observed_at_s`` (for explain and tests)."""
        return SubstrateSignals(
            in_flight=Reading(0.0, observed_at_s),
            queued=Reading(0.0, observed_at_s),
            kv_cache_usage=None if kv_cache_usage is None else Reading(kv_cache_usage, observed_at_s),
        )


def limits(spec: SubstrateSpec, signals: SubstrateSignals) -> Capacity | tuple[int, int]:
    """``(max_concurrent, max_queued)`` of ``spec`` now: the live
    ``signals.capacity`` where the authority gave one, else the spec's. Every reader of a
    substrate's limits (admission, the estimate, the scorers, the plane's queue and shares) reads
    them here, so that capacity reaches placement through the snapshot alone."""
    c = signals.capacity
    return (spec.max_concurrent, spec.max_queued) if c is None else c


def fresh_value(reading: Reading | None, now_s: float, bound_s: float) -> float | None:
    """The reading's value if it exists and is no older than ``bound_s``, else None."""
    if reading is None or now_s - reading.observed_at_s > bound_s:
        return None
    return reading.value


def stale_value(reading: Reading | None, now_s: float, bound_s: float) -> float | None:
    """The reading's value only if it is older than ``bound_s`` (the complement of
    ``fresh_value``: what was last known, for a decision that must not forget it)."""
    if reading is None or now_s - reading.observed_at_s <= bound_s:
        return None
    return reading.value

