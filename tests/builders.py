"""Small fluent builders for test fleets, in the style of Kubernetes' ``MakePod().Name(...).Obj()``.

``substrate("a")...obj()`` gives the config dict of one substrate; ``fleet(...)...build()`` gives a
``BuiltConfig`` through the real path (``InferplaneConfig.model_validate`` -> ``check_references``
-> ``build``), so every test fleet is a fleet the loader would accept. ``snapshot`` and ``request``
make the other two inputs of ``place``; ``context`` makes the ``PlacementContext`` filters and
scorers read.

    built = (fleet(substrate("gpu").kind("vllm").jurisdiction("DE"),
                   substrate("api").cls("provider_api").jurisdiction("US"))
             .tenant("bank", allowed=["DE"]).build())
    snap = snapshot(built, {"gpu": signals(in_flight=16, queued=16)})
    decision = place(request(tenant="bank"), snap, built.policy)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from inferplane.config.build import BuiltConfig, build
from inferplane.config.errors import ConfigError
from inferplane.config.references import check_references
from inferplane.config.schema import InferplaneConfig
from inferplane.placement.context import PlacementContext
from inferplane.placement.request import PlacementRequest
from inferplane.placement.signals import CircuitState, Reading, SubstrateSignals
from inferplane.placement.snapshot import FleetSnapshot

NOW = 1_000_000.0
"""The decision time of every test request, on the plane's clock (seconds)."""

MODEL = "m"
TENANT = "t"
SLA = "interactive"

EU = ["AT", "BE", "DE", "DK", "ES", "FI", "FR", "IE", "IT", "NL", "PL", "SE"]
DIGEST = "0" * 64


# ---------------------------------------------------------------------------------------------
# Substrates


class SubstrateBuilder:
    """One substrate's config dict. Defaults: an emulated provider API in DE (eu-central-1a),
    reserved, 16 slots and no queue, 100 ms to the first token, 10k tok/s prefill, 100 tok/s
    decode, free; it serves ``m`` with an 8192-token window unless ``serves`` says otherwise."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._class = "provider_api"
        self._kind = "emulated"
        self._jurisdiction = "DE"
        self._region, self._zone = "eu-central", "eu-central-1a"
        self._models: list[dict[str, Any]] = []
        self._capacity: dict[str, Any] = {"tier": "reserved", "max_concurrent_requests": 16,
                                          "max_queued_requests": 0}
        self._latency: dict[str, Any] = {"base_ttft_ms": 100.0, "network_rtt_ms": 0.0,
                                         "prefill_tokens_per_s": 10_000.0, "decode_tokens_per_s": 100.0,
                                         "decode_slowdown_at_full_batch": 1.0}
        self._cost: dict[str, Any] = {}
        self._max_model_len: int | None = None
        self._replicas: dict[str, Any] = {"num_replicas": 1}

    def cls(self, substrate_class: str) -> SubstrateBuilder:
        self._class = substrate_class
        return self

    def kind(self, kind: str) -> SubstrateBuilder:
        self._kind = kind
        return self

    def jurisdiction(self, token: str) -> SubstrateBuilder:
        self._jurisdiction = token
        return self

    def zone(self, region: str, zone: str) -> SubstrateBuilder:
        self._region, self._zone = region, zone
        return self

    def serves(self, model: str = MODEL, *, window: int = 8192) -> SubstrateBuilder:
        """Add a served model (the first call replaces the default ``m``)."""
        self._models.append({"name": model, "context_window_tokens": window})
        return self

    def capacity(self, max_concurrent: int, *, queued: int = 0, rpm: int | None = None,
                 tpm: int | None = None) -> SubstrateBuilder:
        self._capacity.update(max_concurrent_requests=max_concurrent, max_queued_requests=queued)
        if rpm is not None:
            self._capacity["requests_per_minute"] = rpm
        if tpm is not None:
            self._capacity["tokens_per_minute"] = tpm
        return self

    def tier(self, tier: str) -> SubstrateBuilder:
        self._capacity["tier"] = tier
        return self

    def latency(self, *, base_ttft_ms: float = 100.0, rtt_ms: float = 0.0, prefill: float = 10_000.0,
                decode: float = 100.0, slowdown: float = 1.0, prefill_lanes: int | None = None,
                decode_share: float = 1.0) -> SubstrateBuilder:
        self._latency = {"base_ttft_ms": base_ttft_ms, "network_rtt_ms": rtt_ms,
                         "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode,
                         "decode_slowdown_at_full_batch": slowdown, "prefill_concurrency": prefill_lanes,
                         "decode_share_during_prefill": decode_share}
        return self

    def cost(self, *, input_per_1m: float = 0.0, output_per_1m: float = 0.0, gpu_hour: float = 0.0,
             gpus: int = 0, egress_per_gb: float = 0.0) -> SubstrateBuilder:
        self._cost = {"usd_per_1m_input_tokens": input_per_1m, "usd_per_1m_output_tokens": output_per_1m,
                      "usd_per_gpu_hour": gpu_hour, "gpus_per_replica": gpus,
                      "egress_usd_per_gb": egress_per_gb}
        return self

    def replicas(self, n: int) -> SubstrateBuilder:
        self._replicas = {"num_replicas": n}
        return self

    def max_model_len(self, tokens: int) -> SubstrateBuilder:
        """vLLM only; defaults to the largest context window served."""
        self._max_model_len = tokens
        return self

    def obj(self) -> dict[str, Any]:
        models = self._models or [{"name": MODEL, "context_window_tokens": 8192}]
        out: dict[str, Any] = {
            "name": self._name,
            "class": self._class,
            "kind": self._kind,
            "models": copy.deepcopy(models),
            "topology": {"region": self._region, "zone": self._zone},
            "jurisdiction": self._jurisdiction,
            "capacity": dict(self._capacity),
            "latency": dict(self._latency),
        }
        if self._cost:
            out["cost"] = dict(self._cost)
        if self._kind == "vllm":
            max_len = self._max_model_len or max(m["context_window_tokens"] for m in models)
            out["vllm"] = {"engine": {"model_path": f"/models/{self._name}", "max_model_len": max_len},
                           "replicas": dict(self._replicas)}
        elif self._kind == "openai_compatible":
            out["openai_compatible"] = {"base_url": f"https://{self._name}.example.com/v1",
                                        "replicas": dict(self._replicas)}
        else:
            lat = self._latency
            out["emulated"] = {
                "emulates": f"test substrate {self._name}",
                "physics": {"ttft_ms": lat["base_ttft_ms"], "prefill_tokens_per_s": lat["prefill_tokens_per_s"],
                            "decode_tokens_per_s": lat["decode_tokens_per_s"],
                            "max_concurrency": self._capacity["max_concurrent_requests"]},
                "replicas": dict(self._replicas),
            }
        return out


def substrate(name: str) -> SubstrateBuilder:
    return SubstrateBuilder(name)


# ---------------------------------------------------------------------------------------------
# Fleets (whole configs)


class FleetBuilder:
    """A whole config document. Defaults fill what a test does not care about: model ``m`` with the
    first substrate as primary, tenant ``t`` allowed anywhere, SLA class ``interactive``
    (1.5 s / 20 s), group ``EU``, the schema's default policy."""

    def __init__(self, substrates: Iterable[SubstrateBuilder | dict[str, Any]]) -> None:
        self._substrates = [s.obj() if isinstance(s, SubstrateBuilder) else s for s in substrates]
        self._models: list[dict[str, Any]] = []
        self._tenants: list[dict[str, Any]] = []
        self._sla: list[dict[str, Any]] = []
        self._groups: dict[str, list[str]] = {"EU": list(EU)}
        self._policy: dict[str, Any] = {}
        self._ingress: dict[str, Any] = {}

    def model(self, name: str = MODEL, *, primary: str | None = None, aliases: Iterable[str] = (),
              spillover: Iterable[str] | None = None) -> FleetBuilder:
        m: dict[str, Any] = {"name": name, "aliases": list(aliases),
                             "primary_substrate": primary or self._substrates[0]["name"]}
        if spillover is not None:
            m["spillover_substrates"] = list(spillover)
        self._models.append(m)
        return self

    def tenant(self, name: str = TENANT, *, allowed: Iterable[str] = ("*",), sla: str = SLA,
               allowed_sla: Iterable[str] | None = None, models: Iterable[str] | None = None,
               budget: Mapping[str, Any] | None = None) -> FleetBuilder:
        t: dict[str, Any] = {"name": name, "api_keys_sha256": [f"{len(self._tenants):064x}"],
                             "allowed_jurisdictions": list(allowed), "default_sla_class": sla}
        if budget is not None:
            t["budget"] = dict(budget)
        if allowed_sla is not None:
            t["allowed_sla_classes"] = list(allowed_sla)
        if models is not None:
            t["allowed_models"] = list(models)
        self._tenants.append(t)
        return self

    def sla(self, name: str = SLA, *, ttft_ms: float = 1500.0, e2e_ms: float = 20_000.0,
            while_scaling_up: str | None = None) -> FleetBuilder:
        self._sla.append({"name": name, "ttft_deadline_ms": ttft_ms, "e2e_deadline_ms": e2e_ms})
        if while_scaling_up is not None:
            self._sla[-1]["while_scaling_up"] = while_scaling_up
        return self

    def group(self, name: str, countries: Iterable[str]) -> FleetBuilder:
        self._groups[name] = list(countries)
        return self

    def weights(self, **weights: float) -> FleetBuilder:
        """Scorer weights; the ones not given are 0 (unlike the schema, whose defaults are > 0)."""
        names = ("predicted_latency", "queue_pressure", "memory_pressure", "cost", "locality", "reserved_tier",
                 "prefix_locality")
        self._policy["scorer_weights"] = {n: float(weights.get(n, 0.0)) for n in names}
        return self

    def spillover(self, *, mode: str | None = None, classes: Iterable[str] | None = None,
                  per_model: Mapping[str, Iterable[str]] | None = None) -> FleetBuilder:
        rules = self._policy.setdefault("spillover", {})
        if mode is not None:
            rules["mode"] = mode
        if classes is not None:
            rules["allowed_classes"] = list(classes)
        if per_model is not None:
            rules["per_model"] = {m: list(c) for m, c in per_model.items()}
        return self

    def policy(self, section: str, **values: Any) -> FleetBuilder:
        """Set fields of a policy section, e.g. ``policy("health", half_open_probe_limit=2)``."""
        self._policy.setdefault(section, {}).update(values)
        return self

    def external_rule(self, name: str, **rule: Any) -> FleetBuilder:
        self._policy.setdefault("external_signals", []).append({"name": name, **rule})
        return self

    def staleness_ms(self, bound_ms: float) -> FleetBuilder:
        self._policy["signal_staleness_bound_ms"] = bound_ms
        return self

    def cost_reference(self, usd_per_1m_tokens: float) -> FleetBuilder:
        self._policy["cost_reference_usd_per_1m_tokens"] = usd_per_1m_tokens
        return self

    def ingress(self, region: str, zone: str) -> FleetBuilder:
        self._ingress = {"topology": {"region": region, "zone": zone}}
        return self

    def doc(self) -> dict[str, Any]:
        """The config document (a deep copy: editing it does not change the builder)."""
        return copy.deepcopy(self._doc())

    def _doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema_version": 1,
            "jurisdiction_groups": self._groups,
            "sla_classes": self._sla or [{"name": SLA, "ttft_deadline_ms": 1500.0, "e2e_deadline_ms": 20_000.0}],
            "substrates": self._substrates,
            "models": self._models or [{"name": MODEL, "primary_substrate": self._substrates[0]["name"]}],
            "tenants": self._tenants or [{"name": TENANT, "api_keys_sha256": [DIGEST],
                                          "allowed_jurisdictions": ["*"], "default_sla_class": SLA}],
            "policy": self._policy,
        }
        if self._ingress:
            doc["ingress"] = self._ingress
        return doc

    def build(self) -> BuiltConfig:
        """Validated and built; validation only reads the document, so no copy is needed."""
        return build_doc(self._doc())


def fleet(*substrates: SubstrateBuilder | dict[str, Any]) -> FleetBuilder:
    return FleetBuilder(substrates)


def build_doc(doc: dict[str, Any]) -> BuiltConfig:
    """The real loading path minus YAML: shape, then cross-references, then build."""
    cfg = InferplaneConfig.model_validate(doc)
    problems = check_references(cfg)
    if problems:
        raise ConfigError("<test fleet>", problems)
    return build(cfg)


# ---------------------------------------------------------------------------------------------
# Signals, snapshots, requests


def signals(*, in_flight: float | None = 0.0, queued: float | None = 0.0, kv: float | None = None,
            gpu: float | None = None, rl_requests: float | None = None, rl_tokens: float | None = None,
            ttft_s: float | None = None, tpot_s: float | None = None, error_rate: float | None = None,
            circuit: str | CircuitState = CircuitState.CLOSED, age_s: float = 0.0,
            ages: Mapping[str, float] | None = None, now: float = NOW) -> SubstrateSignals:
    """Signals observed ``age_s`` before ``now`` (``ages`` overrides per signal). None = missing."""
    values = {"in_flight": in_flight, "queued": queued, "kv_cache_usage": kv, "gpu_memory_used_ratio": gpu,
              "rate_limit_requests_remaining": rl_requests, "rate_limit_tokens_remaining": rl_tokens,
              "recent_ttft_s": ttft_s, "recent_tpot_s": tpot_s, "error_rate": error_rate}
    ages = dict(ages or {})
    unknown = set(ages) - set(values)
    if unknown:
        raise KeyError(f"no such signals: {sorted(unknown)}")
    readings = {name: None if v is None else Reading(float(v), now - ages.get(name, age_s))
                for name, v in values.items()}
    return SubstrateSignals(circuit=CircuitState(circuit), **readings)


def idle_for(kind: str, now: float = NOW) -> SubstrateSignals:
    """Idle and fresh, with every signal the kind requires (vLLM also reports KV-cache use)."""
    return signals(kv=0.0 if kind == "vllm" else None, now=now)


def snapshot(built: BuiltConfig, by_name: Mapping[str, SubstrateSignals] | None = None, *,
             version: int = 1, now: float = NOW) -> FleetSnapshot:
    """Every substrate idle and fresh unless ``by_name`` gives its signals."""
    by_name = dict(by_name or {})
    names = {s.name for s in built.fleet.substrates}
    unknown = set(by_name) - names
    if unknown:
        raise KeyError(f"no such substrates: {sorted(unknown)}")
    sigs = tuple(by_name.get(s.name, idle_for(s.kind, now)) for s in built.fleet.substrates)
    return FleetSnapshot(version=version, taken_at_s=now, fleet=built.fleet, signals=sigs)


def request(*, request_id: str = "req-1", tenant: str = TENANT, model: str = MODEL, sla_class: str = SLA,
            input_tokens: int = 1000, max_output_tokens: int = 200, now: float = NOW,
            ingress_region: str | None = None, ingress_zone: str | None = None,
            exclude: Iterable[str] = (), attempt: int = 1,
            closed: tuple[tuple[str, str], ...] = (),
            prefix_hits: tuple[tuple[str, float], ...] = ()) -> PlacementRequest:
    return PlacementRequest(request_id=request_id, tenant=tenant, model=model, sla_class=sla_class,
                            input_tokens=input_tokens, max_output_tokens=max_output_tokens,
                            arrived_at_s=now, ingress_region=ingress_region, ingress_zone=ingress_zone,
                            exclude=frozenset(exclude), attempt=attempt, closed=closed,
                            prefix_hits=prefix_hits)


def context(built: BuiltConfig, req: PlacementRequest | None = None) -> PlacementContext:
    """The context a filter or scorer sees for ``req`` (default: ``request()``) on ``built``."""
    req = req or request()
    policy = built.policy
    route = built.fleet.resolve_model(req.model)
    if route is None:
        raise KeyError(req.model)
    return PlacementContext(
        request=req, tenant=policy.tenants[req.tenant], sla=policy.sla_classes[req.sla_class],
        route=route, policy=policy, spill_classes=policy.spill_classes(route.name),
        now_s=req.arrived_at_s, staleness_bound_s=policy.signal_staleness_bound_s,
    )
