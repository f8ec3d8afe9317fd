"""Live signals of one substrate, each stamped with when it was observed.

A signal is a ``Reading``: a value and the time it was observed, on the plane's clock. Its age at
decision time is ``request.arrived_at_s - observed_at_s``. A stale reading counts against its
substrate: required signals that are missing or older than the policy's bound make the substrate
ineligible, optional ones score as the worst case.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CircuitState(str, enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Reading:
    value: float
    observed_at_s: float


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
    queued: Reading | None = None
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

    @staticmethod
    def idle(observed_at_s: float, *, kv_cache_usage: float | None = 0.0) -> SubstrateSignals:
        """An idle substrate observed at ``observed_at_s`` (for explain and tests)."""
        return SubstrateSignals(
            in_flight=Reading(0.0, observed_at_s),
            queued=Reading(0.0, observed_at_s),
            kv_cache_usage=None if kv_cache_usage is None else Reading(kv_cache_usage, observed_at_s),
        )


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


def queued_value(signals: SubstrateSignals, now_s: float, bound_s: float) -> float | None:
    """Requests waiting: 0 when never reported (a substrate without a queue of its own), the
    value while fresh, None when reported but stale (unknown, which must count against it)."""
    reading = signals.queued
    if reading is None:
        return 0.0
    if now_s - reading.observed_at_s > bound_s:
        return None
    return reading.value
