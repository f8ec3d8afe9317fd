"""The versioned view of the fleet that placement decides on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING

from inferplane.placement.fleet import FleetSpec
from inferplane.placement.plan import scoring
from inferplane.placement.prepared import PreparedSubstrate, ScoringRow, prepare, scoring_row, substrate_constants
from inferplane.placement.signals import Reading, SubstrateSignals

if TYPE_CHECKING:
    from inferplane.placement.policy import PlacementPolicy

_SIGNAL_FIELDS = tuple(f.name for f in fields(SubstrateSignals))
_signal_values = attrgetter(*_SIGNAL_FIELDS)
# The slots' own setters: a copy of a frozen dataclass with one field changed, made without its
# ``__init__`` (which sets each field through ``object.__setattr__``, and costs more than the rest
# of ``with_dispatches``). ``SubstrateSignals`` validates nothing when built, so nothing is skipped.
_SIGNAL_SETTERS = tuple(getattr(SubstrateSignals, name).__set__ for name in _SIGNAL_FIELDS)
_SET_IN_FLIGHT = _SIGNAL_SETTERS[_SIGNAL_FIELDS.index("in_flight")]
_SET_PREFILL_CLEAR = _SIGNAL_SETTERS[_SIGNAL_FIELDS.index("prefill_clear_at_s")]
_SET_RL_REQUESTS = _SIGNAL_SETTERS[_SIGNAL_FIELDS.index("rate_limit_requests_remaining")]
_SET_RL_TOKENS = _SIGNAL_SETTERS[_SIGNAL_FIELDS.index("rate_limit_tokens_remaining")]


def _copy(sig: SubstrateSignals) -> SubstrateSignals:
    copy = object.__new__(SubstrateSignals)
    for set_field, value in zip(_SIGNAL_SETTERS, _signal_values(sig)):
        set_field(copy, value)
    return copy


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """The fleet's static spec and each substrate's live signals, as of ``taken_at_s``.

    ``signals[i]`` belongs to ``fleet.substrates[i]``. The placement authority hands out a new
    snapshot with a higher ``version`` whenever it publishes; decisions record the version they used.

    Built with ``policy``, the snapshot also folds that policy into each prepared entry
    (``scoring``), which ``place()`` uses for that policy (by identity) and only for it. Built with
    ``previous`` (a snapshot of the same fleet), a substrate whose ``SubstrateSignals`` object is
    the very one ``previous`` had keeps its entries from there instead of preparing them again.
    """

    version: int
    taken_at_s: float
    fleet: FleetSpec
    signals: tuple[SubstrateSignals, ...]
    tenant_spend_usd: Mapping[str, float] = field(default_factory=dict)
    """Each tenant's attributed spend in its budget's current period (tenants with a budget)."""
    expected_output_tokens: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """(tenant, canonical model name) -> the output length its requests have produced on average,
    learned by the authority from outcomes (``fleet_state``). Placement predicts a request's
    decode time, latency, cost and queue wait with it, capped at the request's max output tokens;
    a pair without an entry is predicted with the max."""
    policy: InitVar[PlacementPolicy | None] = None
    previous: InitVar[FleetSnapshot | None] = None
    spec_constants: tuple[tuple, ...] = field(init=False, compare=False, repr=False)
    """``spec_constants[i]``: ``prepared.substrate_constants(fleet.substrates[i])``, what ``prepare``
    reads from the spec alone: handed on from ``previous`` when it is a snapshot of the same fleet,
    else worked out here (once per fleet in a chain of snapshots)."""
    prepared: tuple[PreparedSubstrate, ...] = field(init=False, compare=False, repr=False)
    """``prepared[i]``: what placement works out once from ``fleet.substrates[i]`` and
    ``signals[i]`` (``prepared.py``), derived here so that no request repeats it."""
    scored_for: PlacementPolicy | None = field(init=False, compare=False, repr=False)
    """The policy ``scoring`` was folded for, or None."""
    scoring: tuple[ScoringRow, ...] | None = field(init=False, compare=False, repr=False)
    """``scoring[i]``: ``prepared.scoring_row(prepared[i], ...)`` for ``scored_for``."""

    def __post_init__(self, policy: PlacementPolicy | None, previous: FleetSnapshot | None) -> None:
        if len(self.signals) != len(self.fleet.substrates):
            raise ValueError("one SubstrateSignals per substrate, in fleet order")
        constants = None if policy is None else _row_constants(policy)
        if previous is not None and previous.fleet is self.fleet:
            specs = previous.spec_constants
            old_signals, old_prepared = previous.signals, previous.prepared
            reuse_rows = constants is not None and previous.scored_for is policy
            old_rows = previous.scoring
            prepared = list(old_prepared)
            rows = list(old_rows) if reuse_rows else None
            for i, sig in enumerate(self.signals):
                if sig is not old_signals[i]:
                    prepared[i] = entry = prepare(specs[i], sig)
                    if reuse_rows:
                        rows[i] = scoring_row(entry, constants)
            prepared = tuple(prepared)
            if reuse_rows:
                rows = tuple(rows)
            elif constants is not None:
                rows = tuple([scoring_row(e, constants) for e in prepared])
        else:
            specs = tuple(map(substrate_constants, self.fleet.substrates))
            prepared = tuple(map(prepare, specs, self.signals))
            rows = None if constants is None else tuple([scoring_row(e, constants) for e in prepared])
        # Derived fields of a frozen dataclass, set once while it is being built.
        object.__setattr__(self, "spec_constants", specs)
        object.__setattr__(self, "prepared", prepared)
        object.__setattr__(self, "scored_for", None if constants is None else policy)
        object.__setattr__(self, "scoring", rows)

    def with_dispatches(self, reported: Mapping[str, int], current: Mapping[str, int],
                        lane_clock: Mapping[str, float] | None = None,
                        rate_spent: Mapping[str, tuple[int, int]] | None = None,
                        rate_share: float = 1.0) -> FleetSnapshot:
        """This snapshot as one ingress replica sees it: the in-flight counts it reported when the
        snapshot was made are replaced by its current ones (``in_flight + current - reported``), so
        a burst between two syncs is not placed as if the fleet were idle, ``lane_clock``
        (substrate -> when its prefill lanes clear this replica's dispatches) is set as each named
        substrate's ``prefill_clear_at_s``, and ``rate_spent`` (substrate -> requests and tokens
        this replica dispatched there since its rate-limit readings were observed) is taken off
        those readings, so a burst between two reports does not spend the same headroom twice;
        with ``rate_share`` below 1 (one of several ingress replicas) they are first cut to that
        share, as a per-instance limit of a gateway's replicas is the global one over their count.
        Ages do not change.

        Called on every dispatch, so it costs one look-up per named substrate plus the
        ``prepared`` (and ``scoring``) entries of the substrates whose count or clock changed, not
        a pass over the fleet."""
        changed: dict[int, SubstrateSignals] = {}
        index = self.fleet.index
        signals = self.signals
        # The names whose counts differ, found by a set operation rather than a pass in Python.
        for name, _ in current.items() ^ reported.items():
            i = index.get(name)
            if i is None or i in changed:
                continue
            delta = current.get(name, 0) - reported.get(name, 0)
            sig = signals[i]
            if delta and sig.in_flight is not None:
                copy = changed[i] = _copy(sig)
                _SET_IN_FLIGHT(copy, Reading(max(0.0, sig.in_flight.value + delta), sig.in_flight.observed_at_s))
        if lane_clock:
            for name, clear_at in lane_clock.items():
                i = index.get(name)
                if i is not None and signals[i].prefill_clear_at_s != clear_at:
                    copy = changed.get(i)
                    if copy is None:
                        copy = changed[i] = _copy(signals[i])
                    _SET_PREFILL_CLEAR(copy, clear_at)
        if rate_spent:
            for name, (n, tokens) in rate_spent.items():
                i = index.get(name)
                if i is None:
                    continue
                sig = signals[i]
                req_left, tok_left = sig.rate_limit_requests_remaining, sig.rate_limit_tokens_remaining
                if req_left is None and tok_left is None:
                    continue
                copy = changed.get(i)
                if copy is None:
                    copy = changed[i] = _copy(sig)
                if req_left is not None:
                    _SET_RL_REQUESTS(copy, Reading(max(0.0, req_left.value * rate_share - n), req_left.observed_at_s))
                if tok_left is not None:
                    _SET_RL_TOKENS(copy, Reading(max(0.0, tok_left.value * rate_share - tokens), tok_left.observed_at_s))
        if not changed:
            return self
        signals = list(signals)
        prepared = list(self.prepared)
        rows = self.scoring
        constants = None
        if rows is not None:
            rows = list(rows)
            constants = _row_constants(self.scored_for)
        specs = self.spec_constants
        for i, sig in changed.items():
            signals[i] = sig
            prepared[i] = entry = prepare(specs[i], sig)
            if constants is not None:
                rows[i] = scoring_row(entry, constants)
        view = object.__new__(FleetSnapshot)
        # The same fields as a constructed snapshot; only the changed entries were prepared anew.
        for set_field, value in zip(_SNAPSHOT_SETTERS, (
                self.version, self.taken_at_s, self.fleet, tuple(signals), self.tenant_spend_usd,
                self.expected_output_tokens, specs, tuple(prepared), self.scored_for,
                None if rows is None else tuple(rows))):
            set_field(view, value)
        return view

    def with_signals(
        self, version: int, taken_at_s: float, updates: Mapping[str, SubstrateSignals]
    ) -> FleetSnapshot:
        """A newer snapshot in which the named substrates carry new signals (the others keep
        their prepared entries)."""
        unknown = set(updates) - {s.name for s in self.fleet.substrates}
        if unknown:
            raise KeyError(f"unknown substrates: {sorted(unknown)}")
        signals = tuple(
            updates.get(spec.name, current) for spec, current in zip(self.fleet.substrates, self.signals)
        )
        return FleetSnapshot(version=version, taken_at_s=taken_at_s, fleet=self.fleet, signals=signals,
                             tenant_spend_usd=self.tenant_spend_usd,
                             expected_output_tokens=self.expected_output_tokens, policy=self.scored_for,
                             previous=self)


def _row_constants(policy: PlacementPolicy) -> tuple[float, bool, float, float, float] | None:
    plan = policy.plan
    return scoring(policy).row_constants if plan is None else plan.scoring.row_constants


_SNAPSHOT_SETTERS = tuple(getattr(FleetSnapshot, name).__set__ for name in (
    "version", "taken_at_s", "fleet", "signals", "tenant_spend_usd", "expected_output_tokens", "spec_constants",
    "prepared", "scored_for", "scoring"))
if {f.name for f in fields(FleetSnapshot)} != {"version", "taken_at_s", "fleet", "signals", "tenant_spend_usd",
                                               "expected_output_tokens", "spec_constants", "prepared", "scored_for",
                                               "scoring"}:
    raise ImportError("FleetSnapshot.with_dispatches must set every field of the snapshot")
