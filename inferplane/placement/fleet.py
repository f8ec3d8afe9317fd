"""The static fleet: substrates and model routes, compiled once from the config.

Everything here is immutable and cheap to read on the hot path: units are converted to seconds,
USD per token and countries once, at build time.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    aliases: tuple[str, ...]
    primary: str
    spillover_substrates: frozenset[str] | None
    """None: any substrate serving the model may take spillover (class rules still apply)."""
    substrate_indices: tuple[int, ...]
    """Indices (into ``FleetSpec.substrates``) of the substrates serving this model."""


@dataclass(frozen=True, slots=True, eq=False)
class FleetSpec:
    """Compared and hashed by identity: every snapshot of one fleet shares the same object, which
    lets the engine memoise per-fleet work."""

    substrates: tuple[SubstrateSpec, ...]
    models: Mapping[str, ModelRoute]
    model_names: Mapping[str, str]
    """Every public name and alias -> the canonical model name."""
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

    def substrate(self, name: str) -> SubstrateSpec:
        return self.substrates[self.index[name]]
