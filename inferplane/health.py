"""A circuit breaker per substrate: closed, open, half-open. Pure, clock injected.

    closed    ── ``consecutive_failures`` failures in a row, or an error rate of at least
                 ``error_rate_to_open`` over the last ``window_s`` (with ``min_samples`` outcomes)
                 ──▶ open
              ── a Retry-After from the substrate ──▶ held (open until then) ──▶ closed
    open      ── after the cool-down (``open_cooldown_s``, doubled at each re-opening up to
                 ``max_cooldown_s``; never before a Retry-After has passed) ──▶ half-open
    half-open ── ``probe_successes`` successes ──▶ closed (cool-down reset)
              ── one failure ──▶ open (cool-down doubled)

While half-open, the placement engine admits a substrate only while fewer than ``probe_limit``
requests are in flight there, so a recovering substrate gets a trickle of probes, not a stampede.

A Retry-After (a 429, or a 503 that names its time) is back-pressure the substrate timed, not ill
health: a healthy substrate that sends one is held open until then and comes back closed, not
half-open. Probing it one request at a time afterwards would throttle a provider that is only
busy far below its limit (measured: on the suite's ``sovereign-pool`` and ``three-jurisdictions``
x Mooncake synthetic x4, "probe already in flight" was the commonest refusal of the EU tenants'
only fast substrate). The caller does not count such a failure in the window either
(``fleet_state.FleetState.report_ingress``). A substrate already open or half-open for failures
stays on that path: its Retry-After only keeps it open longer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from inferplane.placement.signals import CircuitState


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    consecutive_failures: int = 5
    error_rate_to_open: float = 0.5
    min_samples: int = 10
    window_s: float = 30.0
    open_cooldown_s: float = 5.0
    max_cooldown_s: float = 60.0
    probe_successes: int = 2


def settings_from_policy(health) -> BreakerSettings:
    """The config's ``policy.health`` (``HealthPolicy``) as breaker settings, in seconds."""
    return BreakerSettings(
        consecutive_failures=health.consecutive_failures_to_open,
        error_rate_to_open=health.error_rate_to_open,
        min_samples=health.min_samples,
        window_s=health.window_ms / 1000.0,
        open_cooldown_s=health.open_cooldown_ms / 1000.0,
        max_cooldown_s=health.max_cooldown_ms / 1000.0,
        probe_successes=health.probe_successes_to_close,
    )


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings) -> None:
        self._s = settings
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._open_until = 0.0
        self._cooldown = settings.open_cooldown_s
        self._probe_ok = 0
        self._held = False
        """Open only for a Retry-After, from closed: closed again, not half-open, once it passes."""
        self.reason: str | None = None
        """Why the circuit last opened (for status and audit), e.g. ``5 consecutive failures``."""

    def state(self, now_s: float) -> CircuitState:
        if self._state is CircuitState.OPEN and now_s >= self._open_until:
            if self._held:
                self._held = False
                self._state = CircuitState.CLOSED
                self.reason = None
            else:
                self._state = CircuitState.HALF_OPEN
                self._probe_ok = 0
        return self._state

    @property
    def open_until_s(self) -> float | None:
        return self._open_until if self._state is CircuitState.OPEN else None

    def record(self, ok: bool, now_s: float) -> None:
        state = self.state(now_s)
        self._window.append((now_s, ok))
        horizon = now_s - self._s.window_s
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()
        if ok:
            self._consecutive = 0
            if state is CircuitState.HALF_OPEN:
                self._probe_ok += 1
                if self._probe_ok >= self._s.probe_successes:
                    self._close()
            return
        self._consecutive += 1
        if state is CircuitState.HALF_OPEN:
            self._open(now_s, "a probe failed while half-open", escalate=True)
        elif state is CircuitState.CLOSED or self._held:  # failures while held: as closed, then open for them
            failures = sum(1 for _, good in self._window if not good)
            if self._consecutive >= self._s.consecutive_failures:
                self._open(now_s, f"{self._consecutive} consecutive failures", escalate=False)
            elif len(self._window) >= self._s.min_samples and failures / len(self._window) >= self._s.error_rate_to_open:
                self._open(now_s, f"error rate {failures}/{len(self._window)} over {self._s.window_s:.0f}s",
                           escalate=False)

    def retry_after(self, until_s: float, now_s: float) -> None:
        """The substrate said not before ``until_s`` (a 429 or 503 with Retry-After): open until
        then; held (closed again after) if it was closed, else on its way to half-open."""
        if until_s <= now_s:
            return
        current = self.state(now_s)
        if current is CircuitState.OPEN and self._open_until >= until_s:
            return
        if current is CircuitState.CLOSED:
            self._held = True
        self._state = CircuitState.OPEN
        self._open_until = until_s
        self.reason = f"Retry-After: not before {until_s - now_s:.1f}s from now"

    def _open(self, now_s: float, reason: str, *, escalate: bool) -> None:
        if escalate:
            self._cooldown = min(self._cooldown * 2.0, self._s.max_cooldown_s)
        self._state = CircuitState.OPEN
        self._held = False
        self._open_until = max(self._open_until, now_s + self._cooldown)
        self._consecutive = 0
        self._window.clear()
        self.reason = reason

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._cooldown = self._s.open_cooldown_s
        self._consecutive = 0
        self._window.clear()
        self.reason = None
