"""One attempt of one request on one substrate, as the simulator tracks it.

An attempt is mutable simulation state (it moves through its phases); everything a replay reports
is derived from attempts into frozen outcomes (``outcome.RequestOutcome``).

Phases: ``OUTBOUND`` (travelling to the substrate) -> ``QUEUED`` (waiting for a slot) ->
``PREFILL`` (holding a slot, before the first token) -> ``DECODE`` -> ``DONE``; or ``FAILED``
(the substrate answered with an error) or ``ABANDONED`` (the caller gave up on a timeout).
"""

from __future__ import annotations

import enum

from inferplane.replay.workload import ReplayRequest


class Phase(enum.Enum):
    OUTBOUND = "outbound"
    QUEUED = "queued"
    PREFILL = "prefill"
    DECODE = "decode"
    DONE = "done"
    FAILED = "failed"
    ABANDONED = "abandoned"


class Failure(str, enum.Enum):
    """How an attempt failed before its first token, as the adapters' errors say it."""

    UNAVAILABLE = "unavailable"
    """Connect error or 5xx (an outage, a failure draw): ``SubstrateUnavailable``, retryable."""
    RATE_LIMITED = "rate_limited"
    """429 with Retry-After: ``SubstrateRateLimited``, retryable."""
    TIMEOUT = "timeout"
    """No first byte within the caller's timeout: ``SubstrateTimeout``, retryable."""
    REJECTED = "bad_request"
    """4xx such as a prompt over the context window: ``SubstrateRejectedRequest``, final."""

    @property
    def retryable(self) -> bool:
        return self is not Failure.REJECTED


class Attempt:
    __slots__ = ("request", "number", "substrate", "dispatched_s", "first_token_s", "done_s", "phase",
                 "spillover_logged", "timeout_s", "failure", "retry_after_s", "cached_tokens")

    def __init__(self, request: ReplayRequest, number: int, substrate: int, dispatched_s: float,
                 spillover_logged: bool, timeout_s: float | None) -> None:
        self.request = request
        self.number = number
        self.substrate = substrate
        self.dispatched_s = dispatched_s
        self.first_token_s: float | None = None
        self.done_s: float | None = None
        self.phase = Phase.OUTBOUND
        self.spillover_logged = spillover_logged
        self.timeout_s = timeout_s
        self.failure: Failure | None = None
        self.retry_after_s: float | None = None
        self.cached_tokens = 0
        """Prompt tokens the substrate's prefix cache served (prefill skipped), set when prefill starts."""
