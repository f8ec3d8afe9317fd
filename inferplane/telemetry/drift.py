"""Prediction residuals, and a substrate whose residuals drift. Pure: no Ray, no clock (times are
passed in), bounded memory.

A finished request's **residuals** (``residuals(record)``; successful placed requests only) are
observed over predicted, from its ``RequestRecord``:

    ttft_residual = substrate_ttft_s / decision.predicted_ttft_s
    tpot_residual = tpot_s / decision.predicted_tpot_s

(``substrate_ttft_s`` is TTFT from the final attempt's dispatch, which the decision predicted: time
in the hold queue or on a failed attempt is not the substrate's.)

(``predicted_tpot_s`` is ``(predicted_e2e - predicted_ttft) / predicted_output_tokens``, the
estimate's per-token time; ``tpot_s`` is ``(e2e - ttft) / (output_tokens - 1)``.) 1 is a perfect
prediction, 2 twice as slow as predicted. They measure the *prediction's* error, and are exported
as such (histograms, audit rows).

They cannot show drift for long: the estimate takes recent observed latencies as floors, so once a
substrate slows, its predictions follow within seconds and its residuals return towards 1 (a
slowdown ×1.6 was flagged, if at all, in the few seconds before the estimate caught up). The
detector therefore judges the **declared residuals** (``declared_residuals(record)``): observed over
what the substrate's *declared* profile predicts for the request at the load it was placed on
(``PlacementDecision.declared_ttft_s`` / ``declared_tpot_s``, the estimate without observed floors).
"Slower than declared" stays visible for as long as it lasts. A substrate that runs off its profile
inside the band is judged against its own baseline; one off by more than the band stays flagged,
which is right: its profile is wrong (``inferplane calibrate``).

``DriftDetector`` is fed each finished request's declared residuals (``observe``) and flags, per
substrate:

- ``ttft`` / ``tpot``: the median of the last ``window`` residuals (no older than ``window_s``
  before the newest, at least ``min_samples`` of them) is outside ``band``, or is more than
  ``baseline_factor`` times away from the substrate's own baseline (an EWMA in time of its
  medians, time constant ``baseline_tau_s``, learned only while it is not flagged and within half
  that factor of it, so a drift, sudden or gradual over minutes, does not become the baseline).
- ``size``: observed TTFT stops tracking prompt size. Over the last ``size_window`` requests (at
  least ``size_min_samples``, prompt sizes varying: coefficient of variation >= ``size_min_cv``,
  and the predictions themselves saying size matters), least squares of TTFT on input tokens: the
  observed slope is below ``size_slope_ratio`` times the predicted slope (the same fit of the
  declared predictions) by two standard errors. The fit's R² (relative to the predictions') is
  reported, not judged: a few requests that met a queue the prediction did not foresee halve a
  48-request R² while the slope and the median residual stay where they were (a saturated pool in
  noisy-neighbour raised five such flags an hour).

Hysteresis: a flag is set after ``confirm`` consecutive evaluations meet its condition, and cleared
after ``confirm`` consecutive evaluations inside the narrower ``clear_band`` (within half the
baseline factor; the slope back to half the predicted).
An evaluation without enough samples changes nothing. A substrate with no request for
``window_s`` is forgotten (flags cleared), as its slow outcomes would age out of any window.

Penalty (``policy.health.residual_drift: penalize``): while a substrate is flagged ``ttft``
(``tpot``) with median residual ``r > 1``, placement is not to predict it faster than
``r`` times its median prediction over the window at the time it was flagged (``floors``): the
authority raises the substrate's observed-latency readings to that floor (``fleet_state``), which the
estimate already takes as floors (``placement.estimate``). The floor and factor are frozen while the
flag lasts. Declared predictions never include a floor, so the penalty cannot make the drift look
cured.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import median
from typing import NamedTuple

from inferplane.plane.record import RequestRecord

KINDS = ("ttft", "tpot", "size")


def declared_residuals(record: RequestRecord) -> tuple[float | None, float | None]:
    """``(ttft, tpot)`` observed over what the substrate's *declared* profile predicted at the load
    the request was placed on (``PlacementDecision.declared_ttft_s`` / ``declared_tpot_s``): what the
    detector judges (module doc). None where either side is missing, as in ``residuals``."""
    d = record.decision
    return _ratios(record, None if d is None else d.declared_ttft_s, None if d is None else d.declared_tpot_s)


def residuals(record: RequestRecord) -> tuple[float | None, float | None]:
    """``(ttft_residual, tpot_residual)`` of a successful placed request (module doc); None where
    the observation or the prediction is missing (or the prediction is 0)."""
    d = record.decision
    return _ratios(record, None if d is None else d.predicted_ttft_s, None if d is None else d.predicted_tpot_s)


def _ratios(record: RequestRecord, ttft_s: float | None, tpot_s: float | None) -> tuple[float | None, float | None]:
    """Observed TTFT (from dispatch) and TPOT over ``ttft_s`` and ``tpot_s``, for a successful placed
    request; None where a side is missing or the divisor is 0."""
    d = record.decision
    if d is None or not d.placed or record.status_code != 200:
        return None, None
    observed_ttft, observed_tpot = record.substrate_ttft_s, record.tpot_s
    return (observed_ttft / ttft_s if observed_ttft is not None and ttft_s else None,
            observed_tpot / tpot_s if observed_tpot is not None and tpot_s else None)


@dataclass(frozen=True, slots=True)
class DriftSettings:
    window: int = 24
    """Residuals the median is taken over (the most recent)."""
    window_s: float = 300.0
    """...no older than this before the newest; also how long a silent substrate is remembered."""
    min_samples: int = 10
    band: tuple[float, float] = (0.67, 1.5)
    """A median outside it is drift."""
    clear_band: tuple[float, float] = (0.8, 1.25)
    """A flag clears only with the median back inside it."""
    baseline_factor: float = 1.75
    baseline_warmup: int = 10
    """A baseline is the mean of its first this many values (one lucky window does not set it),
    and is judged against only after them."""
    baseline_tau_s: float = 1800.0
    """Time constant of the baselines (an EWMA in time, not per evaluation): a gradual drift of
    minutes hardly moves them. (Per evaluation, at a few requests a second, the baseline followed a
    15-minute ramp until the ramp's end was "off the baseline" and the flag could never clear.)"""
    confirm: int = 3
    """Consecutive evaluations that set or clear a flag."""
    size_window: int = 48
    size_min_samples: int = 16
    size_min_cv: float = 0.25
    size_slope_ratio: float = 0.25
    """Flag when the observed slope is below this times the predicted one by two standard errors."""
    size_every: int = 4
    """The size fit is evaluated at every this many observations of a substrate, not each one: it
    refits ``size_window`` samples (two least-squares fits), which cost most of the detector's time,
    and a 48-sample window moves by a twelfth between evaluations."""
    penalize: bool = False
    """The authority applies ``floors``."""

    def __post_init__(self) -> None:
        low, high = self.band
        clow, chigh = self.clear_band
        if not (0.0 < low <= clow < 1.0 < chigh <= high):
            raise ValueError(f"need 0 < band low <= clear low < 1 < clear high <= band high, got {self.band} "
                             f"and {self.clear_band}")
        if self.min_samples < 1 or self.window < self.min_samples or self.confirm < 1:
            raise ValueError("need 1 <= min_samples <= window and confirm >= 1")
        if self.size_window < self.size_min_samples or self.size_min_samples < 3:
            raise ValueError("need 3 <= size_min_samples <= size_window")


class Floor(NamedTuple):
    """A penalty: predictions no faster than ``floor_s``, which is ``factor`` times the median
    prediction when the flag was set."""

    floor_s: float
    factor: float


class _Sample(NamedTuple):
    at_s: float
    ttft_residual: float | None
    tpot_residual: float | None
    input_tokens: int | None
    ttft_s: float | None
    tpot_s: float | None


class _Substrate:
    __slots__ = ("samples", "last_at_s", "flags", "streaks", "baselines", "floors", "last", "seen",
                 "learned_at", "learned_n")

    def __init__(self, size: int) -> None:
        self.samples: deque[_Sample] = deque(maxlen=size)
        self.last_at_s = -math.inf
        self.flags = {k: False for k in KINDS}
        self.streaks = {k: 0 for k in KINDS}
        self.baselines: dict[str, float] = {}  # kind -> EWMA of log median
        self.learned_at: dict[str, float] = {}  # kind -> when its baseline last learned
        self.learned_n: dict[str, int] = {}  # kind -> values its baseline has learned
        self.floors: dict[str, Floor] = {}
        self.last: dict[str, float] = {}  # what the last evaluation measured (for status)
        self.seen = 0  # observations since it was (re)started: paces the size fit


class DriftDetector:
    """Flags per substrate (module doc). Not thread-safe: the caller holds its lock."""

    def __init__(self, settings: DriftSettings = DriftSettings()) -> None:
        self.settings = settings
        self._subs: dict[str, _Substrate] = {}

    def observe(self, substrate: str, at_s: float, ttft_residual: float | None, tpot_residual: float | None,
                input_tokens: int | None, output_tokens: int | None, ttft_s: float | None,
                tpot_s: float | None) -> None:
        """One finished request on ``substrate`` at ``at_s`` (``output_tokens`` is accepted for the
        record's shape; TPOT already accounts for it)."""
        s = self.settings
        sub = self._subs.get(substrate)
        if sub is None or at_s - sub.last_at_s > s.window_s:
            sub = self._subs[substrate] = _Substrate(max(s.window, s.size_window))
        sub.samples.append(_Sample(at_s, ttft_residual, tpot_residual, input_tokens, ttft_s, tpot_s))
        sub.last_at_s = max(sub.last_at_s, at_s)
        recent = [x for x in sub.samples if sub.last_at_s - x.at_s <= s.window_s]
        self._residual(sub, "ttft", recent, 1, 4)
        self._residual(sub, "tpot", recent, 2, 5)
        sub.seen += 1
        if sub.seen % s.size_every == 0:
            self._size(sub, recent)

    def _residual(self, sub: _Substrate, kind: str, recent: list[_Sample], res: int, obs: int) -> None:
        s = self.settings
        pairs = [(x[res], x[obs]) for x in recent[-s.window:] if x[res] is not None and x[res] > 0.0]
        if len(pairs) < s.min_samples:
            return
        med = median(r for r, _ in pairs)
        sub.last[kind] = med
        off = (abs(math.log(med) - sub.baselines[kind])
               if sub.learned_n.get(kind, 0) >= s.baseline_warmup else 0.0)  # no baseline yet: the band alone
        if not sub.flags[kind]:
            drift = not (s.band[0] <= med <= s.band[1]) or off > math.log(s.baseline_factor)
            if not drift and off <= math.log(s.baseline_factor) / 2:  # a move away is not learned
                sub.baselines[kind] = self._learn(sub, kind, sub.baselines.get(kind), math.log(med))
            if self._step(sub, kind, drift):
                predicted = [o / r for r, o in pairs if o is not None]
                if med > 1.0 and predicted:
                    sub.floors[kind] = Floor(med * median(predicted), med)
        else:
            cured = s.clear_band[0] <= med <= s.clear_band[1] and off <= math.log(s.baseline_factor) / 2
            if self._step(sub, kind, cured):
                sub.floors.pop(kind, None)

    def _size(self, sub: _Substrate, recent: list[_Sample]) -> None:
        s = self.settings
        pts = [(float(x.input_tokens), x.ttft_s, x.ttft_s / x.ttft_residual) for x in recent[-s.size_window:]
               if x.input_tokens is not None and x.ttft_s is not None and x.ttft_residual]
        if len(pts) < s.size_min_samples:
            return
        xs = [p[0] for p in pts]
        mean_x = sum(xs) / len(xs)
        sd_x = math.sqrt(sum((x - mean_x) ** 2 for x in xs) / len(xs))
        if mean_x <= 0.0 or sd_x / mean_x < s.size_min_cv:
            return  # sizes do not vary: nothing to judge
        slope, r2_observed, slope_se = _fit(xs, [p[1] for p in pts])
        p_slope, r2_predicted, _ = _fit(xs, [p[2] for p in pts])
        mean_p = sum(p[2] for p in pts) / len(pts)
        if p_slope * sd_x < 0.1 * mean_p or r2_predicted <= 0.0:
            return  # the predictions say size hardly matters here
        ratio = slope / p_slope
        # Reported: how much of what the predictions explain by size the outcomes still do.
        sub.last.update(size_r2=min(1.0, r2_observed / r2_predicted), size_slope_ratio=ratio)
        if not sub.flags["size"]:
            self._step(sub, "size", (slope + 2.0 * slope_se) / p_slope < s.size_slope_ratio)
        else:
            self._step(sub, "size", ratio >= 2 * s.size_slope_ratio)

    def _learn(self, sub: _Substrate, kind: str, baseline: float | None, value: float) -> float:
        """``baseline`` moved toward ``value``: the mean of the first ``baseline_warmup`` values,
        then by the time since it last learned (time constant ``baseline_tau_s``)."""
        at, last = sub.last_at_s, sub.learned_at.get(kind)
        sub.learned_at[kind] = at
        n = sub.learned_n[kind] = sub.learned_n.get(kind, 0) + 1
        if baseline is None or last is None:
            return value
        if n <= self.settings.baseline_warmup:
            return baseline + (value - baseline) / n
        return baseline + (1.0 - math.exp(-max(0.0, at - last) / self.settings.baseline_tau_s)) * (value - baseline)

    def _step(self, sub: _Substrate, kind: str, toward_flip: bool) -> bool:
        """Count an evaluation toward flipping ``kind``; True when it flipped."""
        sub.streaks[kind] = sub.streaks[kind] + 1 if toward_flip else 0
        if sub.streaks[kind] >= self.settings.confirm:
            sub.flags[kind] = not sub.flags[kind]
            sub.streaks[kind] = 0
            return True
        return False

    # -- reading -----------------------------------------------------------------------------
    def _live(self, now_s: float) -> dict[str, _Substrate]:
        return {n: sub for n, sub in self._subs.items() if now_s - sub.last_at_s <= self.settings.window_s}

    def flags(self, now_s: float) -> dict[str, frozenset[str]]:
        """Substrate -> its flagged kinds, for every substrate heard of within ``window_s``."""
        return {n: frozenset(k for k in KINDS if sub.flags[k]) for n, sub in sorted(self._live(now_s).items())}

    def floors(self, now_s: float) -> dict[str, dict[str, Floor]]:
        """Substrate -> {``ttft``/``tpot``: its ``Floor``} while flagged (penalize mode applies them)."""
        return {n: dict(sub.floors) for n, sub in sorted(self._live(now_s).items()) if sub.floors}

    def status(self, now_s: float) -> dict[str, dict]:
        """Per substrate: flags, the last medians and size fit, floors (JSON-able)."""
        return {n: {"flags": sorted(k for k in KINDS if sub.flags[k]),
                    "ttft_vs_declared_median": sub.last.get("ttft"), "tpot_vs_declared_median": sub.last.get("tpot"),
                    "ttft_vs_declared_baseline": _exp(sub.baselines.get("ttft")),
                    "tpot_vs_declared_baseline": _exp(sub.baselines.get("tpot")),
                    "size_r2": sub.last.get("size_r2"),
                    "size_slope_ratio": sub.last.get("size_slope_ratio"),
                    "floors_s": {k: f.floor_s for k, f in sub.floors.items()},
                    "samples": len(sub.samples)}
                for n, sub in sorted(self._live(now_s).items())}

    def forget(self, now_s: float) -> None:
        """Drop substrates not heard of within ``window_s`` (memory stays bounded by the fleet)."""
        for n in [n for n, sub in self._subs.items() if now_s - sub.last_at_s > self.settings.window_s]:
            del self._subs[n]


def _exp(log_value: float | None) -> float | None:
    return None if log_value is None else math.exp(log_value)


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``: ``(b, R², standard error of b)``; R² is 0 when y does not vary."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0.0:
        return 0.0, 0.0, math.inf
    b = sxy / sxx
    r2 = 0.0 if syy <= 0.0 else max(0.0, min(1.0, sxy * sxy / (sxx * syy)))
    se = math.sqrt(max(0.0, syy - b * sxy) / max(1, n - 2) / sxx)
    return b, r2, se


def settings_from_policy(health) -> DriftSettings:
    """The config's ``policy.health`` (``HealthPolicy``) as detector settings: its band (the clear
    band is the band narrowed halfway to 1 in log terms), window and mode."""
    low, high = health.residual_drift_band
    window = health.residual_drift_window
    return DriftSettings(window=window, window_s=health.residual_drift_window_ms / 1000.0,
                         min_samples=max(2, window * 5 // 12), band=(low, high),
                         clear_band=(math.sqrt(low), math.sqrt(high)), penalize=health.residual_drift == "penalize")
