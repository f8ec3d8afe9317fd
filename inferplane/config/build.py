"""Phase two of loading: a validated config becomes the runtime fleet spec and policy.

Runs once at start-up (ingress, actor, replay, CLI), never per request. Everything the hot path
reads is converted here: milliseconds to seconds, per-1M prices to per-token, jurisdiction tokens to
sets of countries, weights normalised to sum to 1.
"""

from __future__ import annotations

import hashlib
import math
import json
from dataclasses import dataclass
from types import MappingProxyType

from typing import get_args

from inferplane.config.schema import (
    EmulatedSettings,
    EmulatedSubstrate,
    HonourableParameter,
    InferplaneConfig,
    OpenAICompatibleSubstrate,
    Substrate,
    SubstrateKind,
    VllmSubstrate,
)
from inferplane.config.sizing import substrate_sizing
from inferplane.jurisdiction import JurisdictionCatalog
from inferplane.placement.fleet import (
    CostModel,
    FleetSpec,
    LatencyModel,
    ModelRoute,
    PrefixCacheSpec,
    Rollout,
    SubstrateSpec,
    served_key,
)
from inferplane.placement.policy import (
    ExternalRule,
    PlacementPolicy,
    QueueSettings,
    Quota,
    ScorerWeight,
    SlaPolicy,
    TenantPolicy,
)
from inferplane.placement.signals import REQUIRED_SIGNALS


@dataclass(frozen=True, slots=True)
class BuiltConfig:
    """The runtime objects of one config file."""

    config: InferplaneConfig
    fleet: FleetSpec
    policy: PlacementPolicy
    ingress_region: str | None
    ingress_zone: str | None


def build(cfg: InferplaneConfig) -> BuiltConfig:
    catalog = JurisdictionCatalog(cfg.jurisdiction_groups)
    substrates = tuple(_substrate(i, s, catalog) for i, s in enumerate(cfg.substrates))
    index = {s.name: s.index for s in substrates}

    models: dict[str, ModelRoute] = {}
    names: dict[str, str] = {}
    rollouts: dict[str, Rollout] = {}
    for m in cfg.models:
        serving = tuple(s.index for s in substrates if m.name in s.context_windows)
        models[m.name] = ModelRoute(
            name=m.name,
            aliases=tuple(m.aliases),
            primary=m.primary_substrate,
            spillover_substrates=None if m.spillover_substrates is None else frozenset(m.spillover_substrates),
            substrate_indices=serving,
        )
        for n in (m.name, *m.aliases):
            names[n] = m.name
        if m.versions:
            # Each version is a route of its own: its primary and spillover, on the substrates serving it.
            rollouts[m.name] = Rollout.of(m.name, [
                (v.name, v.weight, ModelRoute(
                    name=m.name, aliases=tuple(m.aliases), primary=primary,
                    spillover_substrates=None if spill is None else frozenset(spill),
                    substrate_indices=tuple(s.index for s in substrates
                                            if served_key(m.name, v.name) in s.context_windows),
                    version=v.name))
                for v, primary, spill in m.version_routes()])
    del index
    fleet = FleetSpec(substrates=substrates, models=MappingProxyType(models), model_names=MappingProxyType(names),
                      rollouts=MappingProxyType(rollouts))

    tenants = {}
    for t in cfg.tenants:
        allowed_sla = set(t.allowed_sla_classes or ()) | {t.default_sla_class}
        tenants[t.name] = TenantPolicy(
            name=t.name,
            allowed_jurisdictions=tuple(t.allowed_jurisdictions),
            allowed_countries=catalog.expand_all(t.allowed_jurisdictions),
            default_sla_class=t.default_sla_class,
            allowed_sla_classes=frozenset(allowed_sla),
            allowed_models=None if t.allowed_models is None else frozenset(names[n] for n in t.allowed_models),
            budget_usd=None if t.budget is None else t.budget.usd_per_period,
            over_budget_classes=None if t.budget is None or t.budget.when_exceeded == "reject"
            else frozenset(c.value for c in t.budget.restrict_to_classes),
            share=t.share,
            quotas=tuple(Quota(q.substrate_class.value, q.guaranteed_slots, q.max_slots,
                               q.lendable_slots or 0)
                         for q in t.quotas),
        )
    sla = {
        c.name: SlaPolicy(c.name, c.ttft_deadline_ms / 1000.0, c.e2e_deadline_ms / 1000.0, c.priority,
                          c.while_scaling_up)
        for c in cfg.sla_classes
    }
    raw_weights = cfg.policy.scorer_weights.model_dump()
    weights = tuple(ScorerWeight(n, w) for n, w in zip(raw_weights, normalised_weights(list(raw_weights.values())))
                    if w > 0)
    spill = cfg.policy.spillover
    policy = PlacementPolicy(
        tenants=MappingProxyType(tenants),
        sla_classes=MappingProxyType(sla),
        weights=weights,
        spillover_mode=spill.mode.value,
        spillover_classes=frozenset(c.value for c in spill.allowed_classes),
        spillover_classes_per_model=MappingProxyType(
            {names[m]: frozenset(c.value for c in classes) for m, classes in spill.per_model.items()}
        ),
        signal_staleness_bound_s=cfg.policy.signal_staleness_bound_ms / 1000.0,
        snapshot_staleness_bound_s=cfg.policy.snapshot_staleness_bound_ms / 1000.0,
        cost_reference_usd_per_token=cfg.policy.cost_reference_usd_per_1m_tokens / 1e6,
        policy_hash=policy_hash(cfg),
        fleet=fleet,  # compiles the placement plan of (fleet, policy) once, here
        ingress_locations=() if cfg.ingress.topology is None else (
            (cfg.ingress.topology.region, cfg.ingress.topology.zone),),
        half_open_probe_limit=cfg.policy.health.half_open_probe_limit,
        slow_drop_factor=cfg.policy.health.drop_when_predicted_over_deadline,
        require_node_labels=cfg.policy.topology.require_node_labels,
        external_rules=tuple(
            ExternalRule(r.name, r.reject_below, r.reject_above, r.missing == "reject", r.ttl_ms / 1000.0)
            for r in cfg.policy.external_signals
        ),
        queue=QueueSettings(cfg.policy.queue.hold, cfg.policy.queue.max_waiting_requests,
                            cfg.policy.queue.output_token_weight),
    )
    topo = cfg.ingress.topology
    return BuiltConfig(
        config=cfg,
        fleet=fleet,
        policy=policy,
        ingress_region=None if topo is None else topo.region,
        ingress_zone=None if topo is None else topo.zone,
    )


def normalised_weights(raw: list[float]) -> list[float]:
    """``raw / sum(raw)``, nudged so that the left-to-right float sum is at most 1: a substrate
    scoring 1 everywhere then totals at most 1, not 1.0000000000000002."""
    total = sum(raw)
    out = [w / total for w in raw]
    while sum(out) > 1.0:
        i = max(range(len(out)), key=out.__getitem__)
        out[i] = math.nextafter(out[i], 0.0)
    return out


def policy_hash(cfg: InferplaneConfig) -> str:
    """SHA-256 (first 16 hex) of the whole validated config except the tenants' key digests: it
    names the config a decision was made under. Any change, placement-relevant or not (a replica
    count, the audit directory), makes a new hash, so two replicas agree on it only when they run
    the same config; rotating a key keeps it."""
    relevant = cfg.model_dump(mode="json", by_alias=True)
    for t in relevant["tenants"]:
        t.pop("api_keys_sha256", None)
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _substrate(i: int, s: Substrate, catalog: JurisdictionCatalog) -> SubstrateSpec:
    sizing = substrate_sizing(s)
    return SubstrateSpec(
        index=i,
        name=s.name,
        substrate_class=s.substrate_class.value,
        kind=s.kind.value,
        emulated=s.kind is SubstrateKind.EMULATED,
        emulates=s.emulated.emulates if isinstance(s, EmulatedSubstrate) else None,
        context_windows=_context_windows(s),
        region=s.topology.region,
        zone=s.topology.zone,
        jurisdiction=s.jurisdiction,
        countries=catalog.expand(s.jurisdiction),
        tier=s.capacity.tier.value,
        max_concurrent=sizing.slots,
        max_queued=s.capacity.max_queued_requests,
        requests_per_minute=s.capacity.requests_per_minute,
        tokens_per_minute=s.capacity.tokens_per_minute,
        latency=LatencyModel(
            base_ttft_s=s.latency.base_ttft_ms / 1000.0,
            network_rtt_s=s.latency.network_rtt_ms / 1000.0,
            prefill_tokens_per_s=s.latency.prefill_tokens_per_s,
            decode_tokens_per_s=s.latency.decode_tokens_per_s,
            decode_slowdown_at_full_batch=s.latency.decode_slowdown_at_full_batch,
            prefill_lanes=s.latency.prefill_concurrency,
        ),
        cost=CostModel(
            usd_per_input_token=s.cost.usd_per_1m_input_tokens / 1e6,
            usd_per_output_token=s.cost.usd_per_1m_output_tokens / 1e6,
            usd_per_slot_second=sizing.owned_usd_per_slot_second,
            egress_usd_per_byte=s.cost.egress_usd_per_gb / 1e9,
        ),
        required_signals=REQUIRED_SIGNALS[s.kind.value],
        features=honoured_parameters(s),
        prefix_cache=None if s.latency.kv_cache_tokens_per_replica is None else PrefixCacheSpec(
            1 if isinstance(s, OpenAICompatibleSubstrate) else sizing.replicas.maximum,
            s.latency.kv_cache_tokens_per_replica),
        # An engine's (or an emulation's) slots are its replicas': its capacity follows the replicas
        # live. A provider API's limit is the provider's, whatever number of adapters relay to it.
        replicas=None if isinstance(s, OpenAICompatibleSubstrate) else sizing.replicas.maximum,
    )


def _context_windows(s: Substrate) -> MappingProxyType:
    """Served key -> the model's context window on ``s``: ``model`` for an entry without a version;
    ``model@version`` for a version's entry, and ``model`` for the smallest of its versions' windows
    there (what code that does not know versions, such as the replay's substrate model, reads)."""
    out: dict[str, int] = {}
    for m in s.models:
        if m.version is not None:
            out[served_key(m.name, m.version)] = m.context_window_tokens
            out[m.name] = min(out.get(m.name, m.context_window_tokens), m.context_window_tokens)
        else:
            out[m.name] = m.context_window_tokens
    return MappingProxyType(out)


ALL_PARAMETERS = frozenset(get_args(HonourableParameter))


def honoured_parameters(s: Substrate) -> frozenset[str]:
    """The request parameters a substrate honours, by kind: a vLLM engine all but ``suffix`` (vLLM
    has no insertion), and ``tools`` only with a tool-call parser; a provider API all but those its
    config lists as unsupported (the rest are passed through); an emulation what it applies
    faithfully (``EmulatedSettings.HONOURED``)."""
    if isinstance(s, VllmSubstrate):
        out = ALL_PARAMETERS - {"suffix"}
        return out if s.vllm.tool_call_parser is not None else out - {"tools"}
    if isinstance(s, OpenAICompatibleSubstrate):
        return ALL_PARAMETERS - frozenset(s.openai_compatible.unsupported_parameters)
    return EmulatedSettings.HONOURED
