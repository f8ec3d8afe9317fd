"""When the plane's drift detector flagged each substrate in a replay, and when each substrate's
deadlines-met figure fell: the evidence for "flagged before it hurt".

``DriftTimeline`` holds the plane's own ``telemetry.drift.DriftDetector`` with the settings the
scenario's ``policy.health`` gives it (``telemetry.drift.settings_from_policy``, as the placement
actor builds it) and is fed, as the actor's detector is, every successful finished request's
``RequestRecord`` at its finish time in simulated time. The residuals are
``telemetry.drift.declared_residuals(record)``, as the actor's: nothing of the detector is restated here. It keeps each
flag's set and clear times (a flag the detector drops because the substrate fell silent for its
``window_s`` is cleared at the first observation that sees it gone).

Penalize mode (``policy.health.residual_drift: penalize``) is run as report mode: the floors are
applied by the actor's authority, not by ``FleetState``, so placement in the replay never sees
them, and judging residuals as if it had would keep a flag set for ever. The section says so.

``deadlines_met_drops``: for each substrate, the requests it completed, in order of finish
(arrival + e2e); the rolling deadlines-met fraction over the last ``ROLLING_REQUESTS`` of them
(evaluated once the window is full), and the same over every completed request (``FLEET``); its
**pre-fault level**, the fraction over every request it
completed before the first fault began; and the **drop time**, the first finish at or after the
fault's start at which the rolling fraction is more than ``DROP_POINTS`` points below that level.
``pre_fault_max_dip_points`` is how far the rolling fraction dipped below the level before the fault:
its noise, against which a drop should be read.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from inferplane.plane.record import RequestRecord
from inferplane.replay.outcome import RequestOutcome
from inferplane.replay.scenario import Event, EventKind
from inferplane.telemetry.drift import KINDS, DriftDetector, DriftSettings, declared_residuals

ROLLING_REQUESTS = 200
DROP_POINTS = 1.0


@dataclass(frozen=True, slots=True)
class FlagSpan:
    """One drift flag on one substrate: set at ``set_s``, cleared at ``cleared_s`` (None: still
    set when the replay ended). Simulated seconds, the trace's arrival clock."""

    substrate: str
    kind: str
    set_s: float
    cleared_s: float | None


class DriftTimeline:
    """The detector, fed one record per finished request, and the history of its flags."""

    def __init__(self, settings: DriftSettings) -> None:
        self.settings = dataclasses.replace(settings, penalize=False)  # module doc: penalize runs as report
        self._detector = DriftDetector(self.settings)
        self._open: dict[tuple[str, str], float] = {}  # (substrate, kind) -> set at
        self._closed: list[FlagSpan] = []

    def observe(self, record: RequestRecord) -> None:
        """A finished request (as the live plane's metrics take it: successful placed ones only)."""
        if record.status_code != 200 or record.decision is None:
            return
        ttft_res, tpot_res = declared_residuals(record)
        if ttft_res is None and tpot_res is None:
            return
        now = record.finished_at_s
        self._detector.observe(record.decision.substrate, now, ttft_res, tpot_res, record.input_tokens,
                               record.output_tokens, record.substrate_ttft_s, record.tpot_s)
        flags = self._detector.flags(now)
        for substrate, kinds in flags.items():
            for kind in kinds:
                self._open.setdefault((substrate, kind), now)
        for key in [k for k in self._open if k[1] not in flags.get(k[0], ())]:
            self._closed.append(FlagSpan(key[0], key[1], self._open.pop(key), now))

    def spans(self) -> tuple[FlagSpan, ...]:
        """Every flag seen, in order of setting; those still set have ``cleared_s`` None."""
        still = [FlagSpan(s, k, t, None) for (s, k), t in self._open.items()]
        return tuple(sorted(self._closed + still, key=lambda f: (f.set_s, f.substrate, KINDS.index(f.kind))))


def _finish_s(o: RequestOutcome) -> float:
    return o.arrival_s + o.e2e_s


FLEET = "(all substrates)"


def _drop(done: list[RequestOutcome], fault_s: float) -> dict:
    """One substrate's (or the fleet's) completed requests: the fields of ``deadlines_met_drops``."""
    done.sort(key=_finish_s)
    before = [o for o in done if _finish_s(o) < fault_s]
    level = sum(o.met_sla for o in before) / len(before) if before else None
    window: deque[bool] = deque(maxlen=ROLLING_REQUESTS)
    met = 0
    dip = 0.0
    fell = None
    for o in done:
        if len(window) == window.maxlen:
            met -= window[0]
        window.append(o.met_sla)
        met += o.met_sla
        if level is None or len(window) < ROLLING_REQUESTS:
            continue
        below = 100.0 * (level - met / ROLLING_REQUESTS)
        if _finish_s(o) < fault_s:
            dip = max(dip, below)
        elif below > DROP_POINTS:
            fell = _finish_s(o)
            break
    return {"completed": len(done), "completed_before_fault": len(before), "pre_fault": level,
            "pre_fault_max_dip_points": dip if level is not None else None, "fell_at_s": fell}


def deadlines_met_drops(outcomes: Sequence[RequestOutcome], substrates: Sequence[str], fault_s: float) -> dict:
    """Per substrate, and over every completed request (``FLEET``): ``pre_fault`` level,
    ``pre_fault_max_dip_points``, ``fell_at_s`` (module doc; None when it did not fall, or had no
    full window before the fault)."""
    done = [o for o in outcomes if o.status == "completed"]
    out = {name: _drop([o for o in done if o.substrate == name], fault_s) for name in substrates}
    out[FLEET] = _drop(done, fault_s)
    return out


def drift_section(spans: Sequence[FlagSpan], settings: DriftSettings, penalty_requested: bool,
                  outcomes: Sequence[RequestOutcome], substrates: Sequence[str], events: Sequence[Event]) -> dict:
    """The report's ``drift`` section for the plane's run (JSON-able): the detector's settings, the
    flags per substrate, and with faults injected the deadlines-met drops and, per slowed
    substrate, when it was first flagged after the slowdown began against when its figure fell."""
    fault_s = min((e.at_s for e in events), default=None)
    flags = {s: [] for s in substrates}
    for f in spans:
        flags.setdefault(f.substrate, []).append({"kind": f.kind, "set_s": f.set_s, "cleared_s": f.cleared_s})
    drops = None if fault_s is None else deadlines_met_drops(outcomes, substrates, fault_s)
    slowed = []
    for e in events:
        if e.kind is not EventKind.SLOWDOWN:
            continue
        first = next((f for f in spans if f.substrate == e.substrate and f.set_s >= e.at_s), None)
        fell = drops[e.substrate]["fell_at_s"] if drops and e.substrate in drops else None
        slowed.append({
            "substrate": e.substrate, "factor": e.value, "at_s": e.at_s, "for_s": e.for_s,
            "flagged_at_s": None if first is None else first.set_s, "flag_kind": None if first is None else first.kind,
            "deadlines_met_fell_at_s": fell,
            "flag_lead_s": None if first is None or fell is None else fell - first.set_s,
        })
    return {
        "settings": {"window": settings.window, "window_s": settings.window_s, "min_samples": settings.min_samples,
                     "band": list(settings.band), "clear_band": list(settings.clear_band),
                     "baseline_factor": settings.baseline_factor, "confirm": settings.confirm},
        "penalty_requested": penalty_requested,
        "penalty_applied": False,
        "fault_start_s": fault_s,
        "rolling_requests": ROLLING_REQUESTS,
        "drop_points": DROP_POINTS,
        "flags": flags,
        "deadlines_met": drops,
        "slowed": slowed,
    }
