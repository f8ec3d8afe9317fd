"""``/healthz``'s answer: starting until every substrate reported once, down is not starting."""

from __future__ import annotations

from types import SimpleNamespace

from inferplane.api.readiness import readiness, reporting
from inferplane.placement.signals import Reading, SubstrateSignals

NAMES = ("gpu", "api")


def snapshot(taken_at_s: float, *seen_at: float | None):
    signals = tuple(SubstrateSignals() if t is None else SubstrateSignals(in_flight=Reading(0.0, t)) for t in seen_at)
    return SimpleNamespace(version=7, taken_at_s=taken_at_s, signals=signals)


def test_a_substrate_that_never_reported_keeps_the_plane_starting():
    snap = snapshot(100.0, 99.9, None)  # the API adapter is up, the GPU engine still loads
    seen = reporting(NAMES, snap, 3.0)
    assert seen == {"gpu"}
    r = readiness(NAMES, snap, seen, 100.1, 2.0, 3.0)
    assert r.status == "starting" and not r.ready and r.substrates_starting == ("api",)


def test_ready_once_every_substrate_reported_and_a_later_silence_is_down_not_starting():
    reported = reporting(NAMES, snapshot(100.0, 99.9, 99.8), 3.0)
    r = readiness(NAMES, snapshot(100.0, 99.9, 99.8), reported, 100.1, 2.0, 3.0)
    assert r.ready and r.body()["substrates_down"] == []
    later = snapshot(200.0, 199.9, 150.0)  # the API's replicas went silent 50 s ago
    r = readiness(NAMES, later, reported | reporting(NAMES, later, 3.0), 200.1, 2.0, 3.0)
    assert r.ready and r.substrates_down == ("api",)


def test_a_stale_snapshot_is_degraded_and_no_snapshot_is_not_ready():
    reported = set(NAMES)
    assert readiness(NAMES, snapshot(100.0, 99.9, 99.9), reported, 105.0, 2.0, 3.0).status == "degraded"
    none = readiness(NAMES, None, set(), 0.0, 2.0, 3.0)
    assert none.status == "degraded" and none.snapshot_age_s is None
