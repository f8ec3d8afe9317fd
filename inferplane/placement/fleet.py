"""The static fleet: substrates and model routes, compiled once from the config.

Everything here is immutable and cheap to read on the hot path: units are converted to seconds,
USD per token and countries once, at build time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from inferplane.placement.signals import Capacity


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """The substrate's latency profile, in seconds and tokens per second."""

    base_ttft_s: float
    network_rtt_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_slowdown_at_full_batch: float = 1.0
    prefill_lanes: int | None = None
    """Prefills the substrate runs at once at full scale (``prefill_concurrency``); later ones wait
    for a lane. None: every slot prefills in parallel."""


@dataclass(frozen=True, slots=True)
class CostModel:
    """Prices converted for per-request arithmetic."""

    usd_per_input_token: float
    usd_per_output_token: float
    usd_per_slot_second: float
    """Owned hardware: GPU-hour price x GPUs of the substrate / 3600 / concurrent slots."""
    egress_usd_per_byte: float


class PrefixCacheSpec(NamedTuple):
    """A substrate's prefix caches: ``replicas`` engine caches of ``tokens_per_replica`` each."""

    replicas: int
    tokens_per_replica: int

    @property
    def total_tokens(self) -> int:
        return self.replicas * self.tokens_per_replica


@dataclass(frozen=True, slots=True)
class SubstrateSpec:
    index: int
    name: str
    substrate_class: str
    kind: str
    emulated: bool
    emulates: str | None
    context_windows: Mapping[str, int]
    region: str
    zone: str
    jurisdiction: str
    countries: frozenset[str]
    tier: str
    max_concurrent: int
    max_queued: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    latency: LatencyModel
    cost: CostModel
    required_signals: tuple[str, ...]
    features: frozenset[str] = frozenset()
    """The request parameters it honours (``config.schema.HonourableParameter`` names), from its
    kind and config: a request requiring one it lacks is not placed here (``ParametersHonoured``).
    None by default: fail closed."""
    prefix_cache: PrefixCacheSpec | None = None
    """Its prefix caches (``latency.kv_cache_tokens_per_replica`` and its replicas at full scale);
    None: no prefix cache."""
    replicas: int | None = None
    """The replicas ``max_concurrent`` and ``max_queued`` are declared across (its deployment's
    maximum): its capacity follows the replicas live now (``capacity_at``). None: a fleet-level
    limit that no replica count changes (a provider API, whose adapter replicas only relay)."""

    def capacity_at(self, live: int) -> Capacity | None:
        """Its admission limits with ``live`` replicas reporting: each limit scaled by
        ``live / replicas``, rounded up (``ceil(max_concurrent * live / replicas)``: the declared
        limits exactly at full scale, at least one slot per live replica, and 0 with none live).
        None for a fleet-level limit (``replicas`` None): the spec's own apply."""
        full = self.replicas
        if full is None:
            return None
        if live == full:
            return Capacity(self.max_concurrent, self.max_queued)
        return Capacity(-(-self.max_concurrent * live // full), -(-self.max_queued * live // full))

    @property
    def display_name(self) -> str:
        """The name as shown to people: emulated substrates always say so."""
        return f"{self.name} (emulated)" if self.emulated and "emulated" not in self.name else self.name


def served_key(model: str, version: str | None) -> str:
    """The key a substrate's ``context_windows`` lists a model (``model``) or one version of it
    (``model@version``) under; ``@`` is in no model name."""
    return model if version is None else f"{model}@{version}"


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    aliases: tuple[str, ...]
    primary: str
    spillover_substrates: frozenset[str] | None
    """None: any substrate serving the model may take spillover (class rules still apply)."""
    substrate_indices: tuple[int, ...]
    """Indices (into ``FleetSpec.substrates``) of the substrates serving this model (this version)."""
    version: str | None = None
    """The version this route places (``Rollout``); None for a model's own route."""
    key: str = ""
    """``served_key(name, version)``: where the substrates' ``context_windows`` list it (set from them)."""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", served_key(self.name, self.version))


class RolloutVersion(NamedTuple):
    """One version of a rollout: requests whose bucket is below ``upper_bucket`` (and at or above
    the previous version's) get it."""

    name: str
    weight_pct: int
    upper_bucket: int
    route: ModelRoute


ROLLOUT_BUCKETS = 100
"""A request's bucket is in [0, 100): the weights are percentages."""


@dataclass(frozen=True, slots=True)
class Rollout:
    """A model's versions and their split, compiled once from the config (``models[].versions``).

    ``pick(request_id)``: the request's bucket is ``blake2b(model + "/" + request_id) mod 100``, a
    stable hash, so every placement of one request (a retry, a re-placement after a wait) gets the
    same version, on any replica, with no shared state; over many requests each version gets its
    weight's share in expectation. Buckets are handed out in the versions' order ([0, w1) to the
    first, [w1, w1 + w2) to the next), so shifting weight from one version to the next moves
    requests in one direction only: raising a canary from 10 to 20 % keeps every request that was on
    it there. A version of weight 0 gets none."""

    model: str
    versions: tuple[RolloutVersion, ...]
    split: str
    """The split as decisions and audit rows record it: ``v1=90,v2=10``."""

    def pick(self, request_id: str) -> RolloutVersion:
        digest = hashlib.blake2b(f"{self.model}/{request_id}".encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest, "big") % ROLLOUT_BUCKETS
        for v in self.versions:
            if bucket < v.upper_bucket:
                return v
        return self.versions[-1]  # unreachable: the weights sum to 100

    def version(self, name: str) -> RolloutVersion | None:
        return next((v for v in self.versions if v.name == name), None)

    @classmethod
    def of(cls, model: str, versions: list[tuple[str, int, ModelRoute]]) -> Rollout:
        out, upper = [], 0
        for name, weight, route in versions:
            upper += weight
            out.append(RolloutVersion(name, weight, upper, route))
        return cls(model, tuple(out), ",".join(f"{n}={w}" for n, w, _ in versions))


@dataclass(frozen=True, slots=True, eq=False)
class FleetSpec:
    """Compared and hashed by identity: every snapshot of one fleet shares the same object, which
    lets the engine memoise per-fleet work."""

    substrates: tuple[SubstrateSpec, ...]
    models: Mapping[str, ModelRoute]
    model_names: Mapping[str, str]
    """Every public name and alias -> the canonical model name."""
    rollouts: Mapping[str, Rollout] = field(default_factory=lambda: MappingProxyType({}))
    """Canonical model name -> its versions, for the models that declare them."""
    index: Mapping[str, int] = field(init=False, repr=False)
    """Substrate name -> its position in ``substrates``."""
    _lacking: dict[frozenset[str], frozenset[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Derived fields of a frozen dataclass, set once while it is being built.
        object.__setattr__(self, "index", MappingProxyType({s.name: i for i, s in enumerate(self.substrates)}))
        object.__setattr__(self, "_lacking", {})

    def lacking(self, features: frozenset[str]) -> frozenset[str]:
        """Names of the substrates that do not honour every one of ``features``; remembered per
        set of features (requests ask for few distinct sets), so the hot path pays a lookup."""
        found = self._lacking.get(features)
        if found is None:
            found = frozenset(s.name for s in self.substrates if not features <= s.features)
            if len(self._lacking) < 1024:  # bounded: the sets come from clients
                self._lacking[features] = found
        return found

    def resolve_model(self, name: str) -> ModelRoute | None:
        canonical = self.model_names.get(name)
        return None if canonical is None else self.models[canonical]

    def route_for(self, name: str, request_id: str) -> ModelRoute | None:
        """The route a request for model ``name`` (or an alias) is placed on: the version its id
        picks (``Rollout.pick``) for a model with versions, else the model's own."""
        canonical = self.model_names.get(name)
        if canonical is None:
            return None
        rollout = self.rollouts.get(canonical)
        return self.models[canonical] if rollout is None else rollout.pick(request_id).route

    def substrate(self, name: str) -> SubstrateSpec:
        return self.substrates[self.index[name]]
