"""The versioned view of the fleet that placement decides on."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from inferplane.placement.fleet import FleetSpec
from inferplane.placement.prepared import PreparedSubstrate, prepare
from inferplane.placement.signals import Reading, SubstrateSignals


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """The fleet's static spec and each substrate's live signals, as of ``taken_at_s``.

    ``signals[i]`` belongs to ``fleet.substrates[i]``. The placement authority hands out a new
    snapshot with a higher ``version`` whenever it publishes; decisions record the version they used.
    """

    version: int
    taken_at_s: float
    fleet: FleetSpec
    signals: tuple[SubstrateSignals, ...]
    tenant_spend_usd: Mapping[str, float] = field(default_factory=dict)
    """Each tenant's attributed spend in its budget's current period (tenants with a budget)."""
    prepared: tuple[PreparedSubstrate, ...] = field(init=False, compare=False, repr=False)
    """``prepared[i]``: what placement works out once from ``fleet.substrates[i]`` and
    ``signals[i]`` (``prepared.py``), derived here so that no request repeats it."""

    def __post_init__(self) -> None:
        if len(self.signals) != len(self.fleet.substrates):
            raise ValueError("one SubstrateSignals per substrate, in fleet order")
        # A derived field of a frozen dataclass, set once while it is being built.
        object.__setattr__(self, "prepared", tuple(map(prepare, self.fleet.substrates, self.signals)))

    def with_dispatches(self, reported: Mapping[str, int], current: Mapping[str, int]) -> FleetSnapshot:
        """This snapshot as one ingress replica sees it: the in-flight counts it reported when the
        snapshot was made are replaced by its current ones (``in_flight + current - reported``), so
        a burst between two syncs is not placed as if the fleet were idle. Ages do not change.

        Called on every dispatch, so it costs one look-up per named substrate plus the
        ``prepared`` entries of the substrates whose count changed, not a pass over the fleet."""
        changed: dict[int, SubstrateSignals] = {}
        index = self.fleet.index
        # The names whose counts differ, found by a set operation rather than a pass in Python.
        for name, _ in current.items() ^ reported.items():
            delta = current.get(name, 0) - reported.get(name, 0)
            i = index.get(name)
            if not delta or i is None or i in changed:
                continue
            sig = self.signals[i]
            if sig.in_flight is not None:
                reading = Reading(max(0.0, sig.in_flight.value + delta), sig.in_flight.observed_at_s)
                changed[i] = dataclasses.replace(sig, in_flight=reading)
        if not changed:
            return self
        signals = list(self.signals)
        prepared = list(self.prepared)
        specs = self.fleet.substrates
        for i, sig in changed.items():
            signals[i] = sig
            prepared[i] = prepare(specs[i], sig)
        view = object.__new__(FleetSnapshot)
        # The same fields as a constructed snapshot; only the changed entries were prepared anew.
        for name, value in (("version", self.version), ("taken_at_s", self.taken_at_s), ("fleet", self.fleet),
                            ("signals", tuple(signals)), ("tenant_spend_usd", self.tenant_spend_usd),
                            ("prepared", tuple(prepared))):
            object.__setattr__(view, name, value)
        return view

    def with_signals(
        self, version: int, taken_at_s: float, updates: Mapping[str, SubstrateSignals]
    ) -> FleetSnapshot:
        """A newer snapshot in which the named substrates carry new signals."""
        unknown = set(updates) - {s.name for s in self.fleet.substrates}
        if unknown:
            raise KeyError(f"unknown substrates: {sorted(unknown)}")
        signals = tuple(
            updates.get(spec.name, current) for spec, current in zip(self.fleet.substrates, self.signals)
        )
        return FleetSnapshot(version=version, taken_at_s=taken_at_s, fleet=self.fleet, signals=signals,
                             tenant_spend_usd=self.tenant_spend_usd)
