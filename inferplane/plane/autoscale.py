"""Autoscaling on placement demand: demand samples in, a substrate's target replicas out.

Pure and clock-free (every time is the caller's ``at_s``), so the placement actor drives it live and
the replay can drive it on simulated time with the same rule.

**Why the plane scales, not Serve.** Ray 2.60 offers two ways (``../shared/FIELD-NOTES.md``): Serve's
own autoscaler with a custom policy fed by ``record_autoscaling_stats``, or an external scaler (the
application's ``external_scaler_enabled``; the Ray dashboard's
``POST /api/v1/applications/{app}/deployments/{name}/scale`` calls the Serve controller's
``update_deployment_replicas``). They exclude each other within one application: Serve refuses an
``autoscaling_config`` on any deployment of an application with ``external_scaler_enabled``. The
platform team scales substrates from the dashboard, so a single autoscaled substrate under Serve's
autoscaler would switch manual scaling off for every substrate of the plane. The placement actor
therefore drives the external scaler itself: the application stays ``external_scaler_enabled``,
the dashboard keeps working for every substrate, and a substrate's ``replicas.autoscaling`` block is
interpreted here instead of being passed to Serve. A manual scale wins: when Serve's target is one
the plane did not set, the plane adopts it and leaves the substrate alone for ``manual_hold_s``.
The demand also lives where the decision is: only the plane knows what it spilled or refused
because a substrate was full (Serve sees only what placement admitted, at most the static cap).

**The signal** (``DemandSample.demand``), in concurrent requests: what the substrate runs (in flight
+ queued), what waits in the ingress hold queues for it, and the requests placement spilled off it
or refused because it was full, converted to concurrency by Little's law on the substrate itself
(they would have stayed as long as the admitted ones: ``running x overflowed / admitted``; each
counts as one when nothing was admitted in the interval).

**The rule** (``step``): wanted = ``ceil(demand / target_per_replica)`` within
``[min_replicas, max_replicas]``. Above the target for ``upscale_delay_s``: the target becomes the
most wanted in that time (at once with a delay of 0). Below it for ``downscale_delay_s`` without a
sample at or above it (a quiet period): the target becomes the most wanted during that period, and
a new quiet period starts. Never below ``min_replicas``, never above ``max_replicas``.

**Sampling** (``DemandCounter``): the placement actor and the replay build samples the same way,
from the published snapshot (running: the substrate's ``in_flight`` + ``queued`` signals; held:
the ingress replicas' hold-queue demand for it) and two running totals they keep each in their own
terms (the actor from the merged metric counters, the replay from its decisions): placements on
the substrate, and overflow (placements spilled off it as ``PRIMARY_SATURATED``, plus requests of
a model whose primary it is refused with a code in ``OVERFLOW_REFUSALS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class AutoscaleSettings:
    min_replicas: int
    max_replicas: int
    target_per_replica: float
    """Concurrent requests one replica should carry (the config's ``target_ongoing_requests``)."""
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 60.0
    manual_hold_s: float = 300.0
    """After a target the plane did not set (a scale from the dashboard), the plane leaves the
    substrate alone this long."""


OVERFLOW_REFUSALS = frozenset({"capacity", "queue_full", "shed"})
"""Refusals of a request because its substrates were full (``plane.queue``): autoscaling demand."""
OVERFLOW_SPILLOVER = "primary_saturated"
"""The spillover reason that counts as overflow of the primary (``SpilloverReason.PRIMARY_SATURATED``)."""


@dataclass(frozen=True, slots=True)
class DemandSample:
    at_s: float
    running: float
    """In flight + queued on the substrate now."""
    held: float = 0.0
    """Requests waiting in the ingress hold queues for a slot of it now."""
    admitted: float = 0.0
    """Requests placed on it since the previous sample."""
    overflowed: float = 0.0
    """Requests spilled off it, or refused, because it was full, since the previous sample."""

    @property
    def demand(self) -> float:
        if self.overflowed <= 0:
            extra = 0.0
        elif self.admitted > 0 and self.running > 0:
            extra = self.running * self.overflowed / self.admitted
        else:
            extra = self.overflowed
        return self.running + self.held + extra


@dataclass(frozen=True, slots=True)
class ScalerState:
    target: int | None = None
    """The replicas the plane asks for (None until Serve's target is first seen)."""
    up_since_s: float | None = None
    """First sample of the current run wanting more than ``target``."""
    up_peak: int = 0
    quiet_since_s: float | None = None
    """First sample of the current run wanting fewer than ``target`` (the quiet period)."""
    quiet_peak: int = 0
    manual_until_s: float | None = None
    """A manual scale is respected until then."""
    reason: str = "waiting for Serve's replica count"


@dataclass(frozen=True, slots=True)
class Decision:
    target: int | None
    """What Serve's target should be (None: nothing known yet)."""
    changed: bool
    """The plane should ask Serve for ``target`` now."""
    wanted: int
    demand: float
    reason: str
    mode: str
    """``waiting`` (for Serve's count), ``manual_hold``, ``up``, ``down`` (``changed``),
    ``up_pending``, ``down_pending`` (waiting out a delay) or ``steady``."""


def settings_for(counts) -> AutoscaleSettings:
    """The rule's settings from a substrate's ``config.sizing.ReplicaCounts`` under autoscaling."""
    return AutoscaleSettings(counts.minimum, counts.maximum, counts.target_ongoing_requests,
                             counts.upscale_delay_s, counts.downscale_delay_s, counts.manual_hold_s)


class DemandCounter:
    """Builds each substrate's ``DemandSample`` from a snapshot and running totals (module doc)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}

    def sample(self, at_s: float, published, index: int, name: str, placed_total: float,
               overflowed_total: float) -> DemandSample:
        """``published``: a ``fleet_state.PublishedSnapshot``; ``index``: the substrate's place in
        its signals; the totals since the start (the first sample counts nothing of them)."""
        sig = published.signals[index]
        running = sum(r.value for r in (sig.in_flight, sig.queued) if r is not None)
        held = sum(sum(by_priority.values()) for by_substrate in published.demand.values()
                   for sub, by_priority in by_substrate.items() if sub == name)
        last = self._last.get(name, (placed_total, overflowed_total))
        self._last[name] = (placed_total, overflowed_total)
        return DemandSample(at_s, running, held, placed_total - last[0], overflowed_total - last[1])


def wanted_replicas(demand: float, s: AutoscaleSettings) -> int:
    """``ceil(demand / target_per_replica)`` within ``[min_replicas, max_replicas]``."""
    raw = math.ceil(demand / s.target_per_replica - 1e-9) if demand > 0 else 0
    return min(s.max_replicas, max(s.min_replicas, raw))


def step(state: ScalerState, sample: DemandSample, serve_target: int | None,
         s: AutoscaleSettings) -> tuple[ScalerState, Decision]:
    """One sample: the next state and what Serve's target should be. ``serve_target`` is Serve's
    target now (None: unknown); one that differs from the plane's own is a manual scale."""
    at, demand = sample.at_s, sample.demand
    wanted = wanted_replicas(demand, s)
    if state.target is None:  # first sight: adopt Serve's count (a restarted actor included)
        if serve_target is None:
            return state, Decision(None, False, wanted, demand, state.reason, "waiting")
        state = replace(state, target=serve_target, reason=f"adopted Serve's {serve_target} replicas")
    elif serve_target is not None and serve_target != state.target:
        state = ScalerState(target=serve_target, manual_until_s=at + s.manual_hold_s,
                            reason=f"scaled to {serve_target} by someone else (the dashboard?): "
                                   f"left alone for {s.manual_hold_s:g} s")
    if state.manual_until_s is not None:
        if at < state.manual_until_s:
            return state, Decision(state.target, False, wanted, demand, state.reason, "manual_hold")
        state = replace(state, manual_until_s=None)

    target = state.target
    if wanted > target:
        up_since = state.up_since_s if state.up_since_s is not None else at
        peak = max(state.up_peak, wanted) if state.up_since_s is not None else wanted
        if at - up_since >= s.upscale_delay_s:
            new = ScalerState(target=peak, reason=f"up {target} -> {peak}: wanted up to {peak} for "
                                                  f"{at - up_since:.0f} s at {s.target_per_replica:g} requests "
                                                  f"per replica (demand now {demand:.1f})")
            return new, Decision(peak, True, wanted, demand, new.reason, "up")
        new = replace(state, up_since_s=up_since, up_peak=peak, quiet_since_s=None, quiet_peak=0,
                      reason=f"demand {demand:.1f} wants {wanted}: up after {s.upscale_delay_s:g} s")
        return new, Decision(target, False, wanted, demand, new.reason, "up_pending")
    if wanted < target:
        quiet_since = state.quiet_since_s if state.quiet_since_s is not None else at
        peak = max(state.quiet_peak, wanted) if state.quiet_since_s is not None else wanted
        if at - quiet_since >= s.downscale_delay_s:
            new = ScalerState(target=peak, quiet_since_s=at if peak > wanted else None, quiet_peak=wanted,
                              reason=f"down {target} -> {peak}: quiet for {at - quiet_since:.0f} s")
            return new, Decision(peak, True, wanted, demand, new.reason, "down")
        new = replace(state, up_since_s=None, up_peak=0, quiet_since_s=quiet_since, quiet_peak=peak,
                      reason=f"demand {demand:.1f} wants {wanted}: down after {s.downscale_delay_s:g} s quiet "
                             f"({at - quiet_since:.0f} s so far)")
        return new, Decision(target, False, wanted, demand, new.reason, "down_pending")
    new = replace(state, up_since_s=None, up_peak=0, quiet_since_s=None, quiet_peak=0,
                  reason=f"steady at {target}: demand {demand:.1f}")
    return new, Decision(target, False, wanted, demand, new.reason, "steady")

