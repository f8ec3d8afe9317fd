"""The typed per-request input to placement."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """Everything placement knows about one request. Built by the ingress (or the replay).

    ``arrived_at_s`` is the caller's clock reading (seconds since the epoch in the plane, simulated
    seconds in a replay): the engine reads no clock, so signal ages are ``arrived_at_s`` minus the
    time each signal was observed.
    """

    request_id: str
    tenant: str
    model: str
    sla_class: str
    input_tokens: int
    max_output_tokens: int
    arrived_at_s: float
    ingress_region: str | None = None
    ingress_zone: str | None = None
    exclude: frozenset[str] = frozenset()
    attempt: int = 1
    closed: tuple[tuple[str, str], ...] = ()
    """(substrate, reason) held back from this request by the plane's arbitration (the engine's
    ``HeldBack`` filter): the tenant's cap, a reclaim, a higher-priority request waiting at another
    replica, the substrate's own queue kept while requests wait. Worked out by the ingress replica
    for each placement (``plane.state.ReplicaState.closed_for``)."""
    required_features: frozenset[str] = frozenset()
    """The request parameters its substrate must honour (``logprobs``, ``response_format``...:
    ``api.openai_schema.required_features``); a substrate lacking one is rejected
    (``ParametersHonoured``)."""
    prefix_hits: tuple[tuple[str, float], ...] = ()
    """(substrate, predicted prefix-cache hit fraction in (0, 1]) for the substrates believed to hold
    a leading run of this prompt's blocks (``placement.prefix.PrefixIndex.hits``, worked out by the
    caller, so ``place()`` stays pure); a substrate not listed is predicted to hold none. It lowers
    the predicted prefill (``estimate``) and feeds the ``PrefixLocality`` score; it never admits."""

    def prefix_hit(self, substrate: str) -> float:
        """The predicted hit fraction of ``substrate`` (0 when not listed)."""
        for name, fraction in self.prefix_hits:
            if name == substrate:
                return fraction
        return 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.max_output_tokens

    def retry_excluding(self, failed: str, now_s: float | None = None) -> PlacementRequest:
        """The same request, one attempt later, never again on ``failed``. ``now_s`` is the time of
        the retry: signal ages are judged from then, not from the first arrival."""
        return PlacementRequest(
            request_id=self.request_id,
            tenant=self.tenant,
            model=self.model,
            sla_class=self.sla_class,
            input_tokens=self.input_tokens,
            max_output_tokens=self.max_output_tokens,
            arrived_at_s=self.arrived_at_s if now_s is None else now_s,
            ingress_region=self.ingress_region,
            ingress_zone=self.ingress_zone,
            exclude=self.exclude | {failed},
            attempt=self.attempt + 1,
            required_features=self.required_features,
            prefix_hits=self.prefix_hits,
        )
