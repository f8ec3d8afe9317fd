"""The placement authority's state: what it knows of every substrate, turned into snapshots.

Pure bookkeeping with an injected clock; the Ray actor (``deployments.placement_actor``) is a thin
wrapper around it. Two kinds of report arrive:

- from each ingress replica: its in-flight requests per substrate and its recent outcomes
  (time to first token, time per output token, errors);
- from each substrate replica: what its adapter knows (in flight, queued, KV-cache use, rate-limit
  headroom, Retry-After). These are also the substrate's heartbeat.

A substrate's in-flight signal is the sum over the live ingress replicas' reports (the ingress
knows what it dispatched, including requests still waiting in Serve's handle), and exists only
while a substrate replica reports: no heartbeat, no signal, not eligible. Queued, KV-cache use and rate-limit headroom come from the substrate
replicas (summed or maxed across replicas). Each signal keeps the time of the oldest report it was
built from, so its age is honest. Reports from a replica that has gone quiet for longer than the
staleness bound are dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from inferplane.placement.fleet import FleetSpec
from inferplane.placement.signals import CircuitState, Reading, SubstrateSignals

OUTCOME_WINDOW = 64


@dataclass(frozen=True, slots=True)
class SubstrateReport:
    """One substrate replica's view of itself (what its adapter's ``load()`` returns).
    None: not known to that adapter."""

    in_flight: int
    queued: int = 0
    kv_cache_usage: float | None = None
    rate_limit_requests_remaining: float | None = None
    rate_limit_tokens_remaining: float | None = None
    retry_after_until_s: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    substrate: str
    ok: bool
    ttft_s: float | None
    tpot_s: float | None
    at_s: float


@dataclass(frozen=True, slots=True)
class PublishedSnapshot:
    """What the actor sends an ingress: signals in fleet order, without the static fleet spec
    (every ingress builds the same spec from the same config; ``policy_hash`` proves it)."""

    version: int
    taken_at_s: float
    policy_hash: str
    signals: tuple[SubstrateSignals, ...]


class FleetState:
    def __init__(self, fleet: FleetSpec, policy_hash: str, staleness_bound_s: float) -> None:
        self._fleet = fleet
        self._names = [s.name for s in fleet.substrates]
        self._policy_hash = policy_hash
        self._bound = staleness_bound_s
        self._ingress: dict[str, tuple[float, dict[str, int]]] = {}
        self._replicas: dict[str, dict[str, tuple[float, SubstrateReport]]] = {n: {} for n in self._names}
        self._outcomes: dict[str, deque[Outcome]] = {n: deque(maxlen=OUTCOME_WINDOW) for n in self._names}
        self._version = 0
        self._published: PublishedSnapshot | None = None
        self._dirty = True

    # -- reports ------------------------------------------------------------------------------
    def report_ingress(self, ingress_id: str, in_flight: dict[str, int], outcomes: list[Outcome], now_s: float) -> None:
        self._ingress[ingress_id] = (now_s, {k: v for k, v in in_flight.items() if k in self._replicas})
        for o in outcomes:
            if o.substrate in self._outcomes:
                self._outcomes[o.substrate].append(o)
        self._dirty = True

    def report_substrate(self, substrate: str, replica_id: str, report: SubstrateReport, now_s: float) -> None:
        if substrate not in self._replicas:
            raise KeyError(f"unknown substrate {substrate!r}")
        self._replicas[substrate][replica_id] = (now_s, report)
        self._dirty = True

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot(self, now_s: float) -> PublishedSnapshot:
        """The current snapshot; a new version whenever a report arrived since the last one."""
        if self._published is None or self._dirty:
            self._expire(now_s)
            self._version += 1
            self._published = PublishedSnapshot(
                version=self._version,
                taken_at_s=now_s,
                policy_hash=self._policy_hash,
                signals=tuple(self._signals(spec.name, spec.kind, now_s) for spec in self._fleet.substrates),
            )
            self._dirty = False
        return self._published

    def _expire(self, now_s: float) -> None:
        horizon = now_s - self._bound
        for ingress_id in [i for i, (t, _) in self._ingress.items() if t < horizon]:
            del self._ingress[ingress_id]
        for per_replica in self._replicas.values():
            for rid in [r for r, (t, _) in per_replica.items() if t < horizon]:
                del per_replica[rid]

    def _signals(self, name: str, kind: str, now_s: float) -> SubstrateSignals:
        ingress_reports = [(t, counts.get(name, 0)) for t, counts in self._ingress.values()]
        replica_reports = list(self._replicas[name].values())
        # Liveness comes from the substrate's own replicas: without a fresh replica report the
        # substrate is unknown, whatever the ingress replicas think they sent it.
        in_flight = None
        if replica_reports:
            newest_replica = max(t for t, _ in replica_reports)
            if ingress_reports:
                value = float(sum(v for _, v in ingress_reports))
                at = min(newest_replica, min(t for t, _ in ingress_reports))
            else:
                value = float(sum(r.in_flight for _, r in replica_reports))
                at = min(t for t, _ in replica_reports)
            in_flight = Reading(value, at)
        queued = kv = rl_req = rl_tok = None
        circuit = CircuitState.CLOSED
        if replica_reports:
            oldest = min(t for t, _ in replica_reports)
            queued = Reading(float(sum(r.queued for _, r in replica_reports)), oldest)
            kvs = [r.kv_cache_usage for _, r in replica_reports if r.kv_cache_usage is not None]
            if kvs:
                kv = Reading(max(kvs), oldest)
            reqs = [r.rate_limit_requests_remaining for _, r in replica_reports if r.rate_limit_requests_remaining is not None]
            if reqs:
                rl_req = Reading(min(reqs), oldest)
            toks = [r.rate_limit_tokens_remaining for _, r in replica_reports if r.rate_limit_tokens_remaining is not None]
            if toks:
                rl_tok = Reading(min(toks), oldest)
            if any(r.retry_after_until_s is not None and r.retry_after_until_s > now_s for _, r in replica_reports):
                circuit = CircuitState.OPEN
        outcomes = self._outcomes[name]
        ttft = tpot = err = None
        recent = [o for o in outcomes if now_s - o.at_s <= self._bound * 5]
        if recent:
            at = max(o.at_s for o in recent)
            ttfts = sorted(o.ttft_s for o in recent if o.ttft_s is not None)
            tpots = sorted(o.tpot_s for o in recent if o.tpot_s is not None)
            if ttfts:
                ttft = Reading(ttfts[len(ttfts) // 2], at)
            if tpots:
                tpot = Reading(tpots[len(tpots) // 2], at)
            err = Reading(sum(1 for o in recent if not o.ok) / len(recent), at)
        return SubstrateSignals(
            in_flight=in_flight, queued=queued, kv_cache_usage=kv,
            rate_limit_requests_remaining=rl_req, rate_limit_tokens_remaining=rl_tok,
            recent_ttft_s=ttft, recent_tpot_s=tpot, error_rate=err, circuit=circuit,
        )
