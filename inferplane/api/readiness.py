"""What the ingress's ``/healthz`` (``/readyz``) answers: is this replica ready to place?

Ready means a fresh snapshot (placement fails closed past ``snapshot_staleness_bound_s``) and every
substrate has reported from a live replica at least once since the replica started. Before that the
plane is ``starting``: a load balancer or ``inferplane run`` waiting on it should not send traffic
that would spill from a substrate that is merely still loading its model. A substrate that
reported once and is now silent is ``down``, not starting: the plane stays ready and places around
it, and says so. Pure: the ingress passes the snapshot and the names it has seen report.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Readiness:
    status: str
    """``ok``, ``starting`` (some substrate never reported yet) or ``degraded`` (stale snapshot)."""
    snapshot_version: int | None
    snapshot_age_s: float | None
    substrates_starting: tuple[str, ...]
    substrates_down: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return self.status == "ok"

    def body(self) -> dict:
        return {"status": self.status, "snapshot_version": self.snapshot_version,
                "snapshot_age_s": self.snapshot_age_s, "substrates_starting": list(self.substrates_starting),
                "substrates_down": list(self.substrates_down)}


def reporting(names, snapshot, bound_s: float) -> set[str]:
    """The substrates (``names``, in the fleet's order, as ``snapshot.signals``) whose replicas
    report in ``snapshot``: a load reading no older than ``bound_s`` at the snapshot's time (the
    authority drops a substrate's load when none of its replicas has reported within the bound)."""
    return {name for name, sig in zip(names, snapshot.signals)
            if sig.in_flight is not None and snapshot.taken_at_s - sig.in_flight.observed_at_s <= bound_s}


def readiness(names, snapshot, reported: set[str], now_s: float, snapshot_bound_s: float,
              signal_bound_s: float) -> Readiness:
    """``reported``: the substrates seen reporting since the replica started (``reporting`` of
    every snapshot it adopted)."""
    age = None if snapshot is None else now_s - snapshot.taken_at_s
    fresh = age is not None and age <= snapshot_bound_s
    starting = tuple(n for n in names if n not in reported)
    live = set() if snapshot is None else reporting(names, snapshot, signal_bound_s)
    down = tuple(n for n in names if n in reported and n not in live)
    status = "degraded" if not fresh else "starting" if starting else "ok"
    return Readiness(status, None if snapshot is None else snapshot.version, age, starting, down)
