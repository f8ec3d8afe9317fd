"""A replay scenario: which config, which workload, which faults, and how the simulation runs.

``inferplane replay FILE`` takes either a plain inferplane config (then: the config's first model,
every tenant at an equal share in its default SLA class, no faults) or a scenario file::

    scenario_version: 1
    description: what this scenario asks
    config: enterprise-burst.fleet.yaml        # relative to this file; a config `serve` would take
    trace: {format: azure, time_scale: 1.0, rate_scale: 1.0}
    workload:
      model: llama-3.1-70b-instruct
      seed: 7
      max_tokens: {rule: round_up, tokens: 256}
      tenants:
        - {name: eu-bank, share: 0.3, sla_classes: {interactive: 0.7, batch: 0.3}}
        - {name: global-app, share: 0.7,
           bursts: [{start_s: 600, duration_s: 300, rate_multiplier: 4}]}   # 4x its own rate
    simulation: {jitter_ratio: 0.1, physics: {gpu-fra: {decode_tokens_per_s: 40}}, replica_start_s: 6}
    # or, for physics the plane has to learn (true physics drawn around the declared, drift, brown-outs):
    #   simulation: {jitter_ratio: 0.1, mismatch: {ratio: 0.3, drift_ratio: 0.1, brownouts_per_hour: 0.5}}
    replicas:                                   # what if gpu-fra autoscaled (its slots per replica kept)?
      gpu-fra: {autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 10}}
    baselines: {first_byte_timeout_s: 10, ejection_s: 30, consecutive_errors: 3, queue_max_requests: 1024}
    events:
      - {kind: outage, substrate: gpu-fra, at_s: 900, for_s: 120}
      - {kind: failure_rate, substrate: groq-us, at_s: 0, for_s: 600, value: 0.2}
      - {kind: slowdown, substrate: provider-us, at_s: 1200, for_s: 300, value: 2.0}

Command-line options override ``trace`` and the tenant shares (keeping each tenant's classes and
bursts); ``replicas`` replaces a vLLM or emulated substrate's ``replicas:`` block, keeping its
slots per replica (its declared capacity is rescaled to the new maximum), so one fleet file serves
a scaling what-if; events from the command line are added to the file's; ``--without-tenant`` drops a
tenant's requests and keeps every other one. Times (events, bursts) are simulated seconds from the
(scaled) trace's start.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inferplane.config import BuiltConfig, ConfigError, ConfigProblem, build, load_config
from inferplane.config.schema import InferplaneConfig, OpenAICompatibleSubstrate, Replicas
from inferplane.config.sizing import replica_counts
from inferplane.replay.trace import FORMATS
from inferplane.replay.workload import Burst, MaxTokens, TenantShare, WorkloadSpec

SCENARIO_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TraceDefaults(_Strict):
    format: Literal["azure", "mooncake", "parquet"] | None = Field(
        default=None, description=f"Trace format ({', '.join(FORMATS)}); default: from the file suffix.")
    time_scale: Annotated[float, Field(gt=0)] = Field(
        default=1.0, description="Arrival times are multiplied by this (< 1 compresses the trace).")
    rate_scale: Annotated[float, Field(gt=0)] = Field(
        default=1.0, description="Requests per trace row on average (> 1 superposes copies, < 1 thins).")
    limit: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Use only the first N rows.")


class MaxTokensSpec(_Strict):
    rule: Literal["trace", "round_up", "fixed"] = Field(
        default="round_up", description="How the client's max_tokens follows from the trace's output "
        "(see inferplane.replay.workload).")
    tokens: Annotated[int, Field(ge=1)] = Field(
        default=256, description="The quantum for round_up, the cap for fixed.")


class BurstSpec(_Strict):
    start_s: Annotated[float, Field(ge=0)] = Field(
        description="Start, simulated seconds from the (scaled) trace's start.")
    duration_s: Annotated[float, Field(gt=0)] = Field(description="How long the burst lasts, seconds.")
    rate_multiplier: Annotated[float, Field(ge=1)] = Field(
        description="The tenant's rate during the burst, as a multiple of its own (extra copies of its "
        "requests, see inferplane.replay.workload).")


class TenantMixEntry(_Strict):
    name: str = Field(description="A tenant of the config.")
    share: Annotated[float, Field(ge=0)] = Field(
        description="Relative share of the trace's requests (the traffic mix; the fair-share weight is the "
        "config's `tenants[].share`).")
    sla_classes: dict[str, Annotated[float, Field(ge=0)]] | None = Field(
        default=None, description="SLA class -> relative share; omit for the tenant's default class.")
    bursts: list[BurstSpec] = Field(
        default_factory=list, description="Windows in which the tenant sends a multiple of its own rate.")

    @field_validator("bursts")
    @classmethod
    def _bursts_apart(cls, bursts: list[BurstSpec]) -> list[BurstSpec]:
        spans = sorted((b.start_s, b.start_s + b.duration_s) for b in bursts)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"bursts overlap at {start:g} s; give each window once")
        return bursts


class WorkloadSection(_Strict):
    model: str | None = Field(default=None, description="The model every request asks for; default: "
                              "the config's first model.")
    seed: int = Field(default=0, description="Seed of the tenant, class and copy draws.")
    max_tokens: MaxTokensSpec = Field(default_factory=MaxTokensSpec, description="The client's max_tokens.")
    tenants: list[TenantMixEntry] | None = Field(
        default=None, description="The tenant mix; default: every tenant, equal shares.")


class PhysicsOverride(_Strict):
    """Replaces fields of a substrate's simulated physics (the truth the replay runs on)."""

    ttft_ms: Annotated[float, Field(ge=0)] | None = Field(default=None, description="Fixed start-up, ms.")
    network_rtt_ms: Annotated[float, Field(ge=0)] | None = Field(default=None, description="Round trip, ms.")
    prefill_tokens_per_s: Annotated[float, Field(gt=0)] | None = Field(default=None, description="Prefill rate.")
    decode_tokens_per_s: Annotated[float, Field(gt=0)] | None = Field(default=None, description="Decode rate.")
    decode_slowdown_at_full_batch: Annotated[float, Field(ge=1)] | None = Field(
        default=None, description="Per-stream decode slowdown at a full batch.")
    max_concurrency: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Slots.")
    jitter_ratio: Annotated[float, Field(ge=0, le=1)] | None = Field(default=None, description="Jitter.")
    failure_rate: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Probability of failing before the first token.")
    prefill_concurrency: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Prefills at once, later ones wait in order.")
    decode_share_during_prefill: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Fraction of its decode rate a stream keeps while a prefill runs.")
    replica_start_s: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Seconds a new replica of this autoscaled substrate takes to start "
        "(default: `simulation.replica_start_s`).")
    kv_cache_tokens_per_replica: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="KV-cache tokens each replica really keeps prompts' blocks in (the prefix "
        "caches the replay runs on); the plane keeps believing the config's `latency.kv_cache_tokens_per_replica`.")


class MismatchSpec(_Strict):
    """Physics the plane has to learn: each substrate's true physics drawn, seeded, around what it
    declares (``inferplane.replay.substrate_physics``). Placement keeps seeing the declared profile
    and what outcomes teach it."""

    ratio: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.3, description="Prefill time, decode time and first-token start-up are each off by a factor "
        "drawn once per substrate, uniformly in [1 - ratio, 1 + ratio].")
    seed: int | None = Field(default=None, description="Seed of the draws; default: the workload's seed.")
    drift_ratio: Annotated[float, Field(ge=0)] = Field(
        default=0.1, description="Slow drift: every duration x a factor that moves between 1 and 1 + this "
        "along a sine of the substrate's own period and phase (slowdown events).")
    drift_period_s: Annotated[float, Field(gt=0)] = Field(
        default=3600.0, description="Mean period of the drift, seconds (each substrate's is drawn in 0.5-1.5x).")
    step_s: Annotated[float, Field(gt=0)] = Field(
        default=120.0, description="The drift and brown-outs change a substrate's slowdown at most this often.")
    brownouts_per_hour: Annotated[float, Field(ge=0)] = Field(
        default=0.5, description="Brown-outs per substrate per hour on average (each step starts one with "
        "probability rate x step).")
    brownout_s: Annotated[float, Field(gt=0)] = Field(default=240.0, description="A brown-out's length, seconds.")
    brownout_factor: Annotated[float, Field(ge=1)] = Field(
        default=3.0, description="Every duration x this during a brown-out (on top of the drift).")


class SimulationSection(_Strict):
    jitter_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0, description="Jitter of substrates whose physics is derived from their latency "
        "profile (vllm, openai_compatible); emulated substrates keep their own.")
    heartbeat_ms: Annotated[float, Field(gt=0)] = Field(
        default=250.0, description="How often each substrate reports its load to the placement actor "
        "(the plane's HEARTBEAT_S, deployments/substrate.py).")
    physics: dict[str, PhysicsOverride] = Field(
        default_factory=dict, description="Substrate name -> overrides of its simulated physics.")
    sample_interval_s: Annotated[float, Field(gt=0)] = Field(
        default=10.0, description="How often substrate load is sampled for the load-over-time plot.")
    mismatch: MismatchSpec | None = Field(
        default=None, description="Draw each substrate's true physics around its declared profile, with drift "
        "and brown-outs (`inferplane replay --suite ... --mismatch on`); none: the truth is the profile.")
    replica_start_s: Annotated[float, Field(ge=0)] = Field(
        default=6.0, description="Seconds from the plane's scale-up to a new replica of an autoscaled "
        "substrate admitting (measured live for an emulated substrate: 4.9-6.2 s; a vLLM replica on a GPU "
        "loads its weights first and takes minutes: set it per substrate in `physics`).")


class BaselineSection(_Strict):
    first_byte_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=10.0, description="A gateway's per-try timeout to the first byte; then it tries the next "
        "endpoint.")
    ejection_s: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="How long a gateway ejects an endpoint after consecutive errors.")
    consecutive_errors: Annotated[int, Field(ge=1)] = Field(
        default=3, description="Consecutive 5xx/timeouts that eject an endpoint (a 429 ejects it until "
        "its Retry-After at once).")
    queue_max_requests: Annotated[int, Field(ge=1)] = Field(
        default=1024, description="Requests the queueing gateway (fifo_queue) holds at most; then it refuses "
        "(`queue_full`). A request waits at most its SLA class's first-token deadline.")


class EventKind(str, enum.Enum):
    OUTAGE = "outage"
    FAILURE_RATE = "failure_rate"
    SLOWDOWN = "slowdown"


class EventSpec(_Strict):
    kind: EventKind = Field(description="outage (unreachable, no heartbeat), failure_rate (fail before the "
                            "first token with probability `value`), slowdown (every duration x `value`).")
    substrate: str = Field(description="The substrate it hits.")
    at_s: Annotated[float, Field(ge=0)] = Field(description="Start, simulated seconds from the trace's start.")
    for_s: Annotated[float, Field(gt=0)] = Field(description="Duration, seconds.")
    value: float | None = Field(default=None, description="The failure rate (0-1) or slowdown factor (>= 1).")

    @model_validator(mode="after")
    def _value_fits_kind(self) -> EventSpec:
        if self.kind is EventKind.OUTAGE:
            if self.value is not None:
                raise ValueError("an outage takes no value")
        elif self.value is None:
            raise ValueError(f"a {self.kind.value} event needs a value")
        elif self.kind is EventKind.FAILURE_RATE and not 0.0 <= self.value <= 1.0:
            raise ValueError("a failure rate is in [0, 1]")
        elif self.kind is EventKind.SLOWDOWN and self.value < 1.0:
            raise ValueError("a slowdown factor is >= 1")
        return self


class ScenarioFile(_Strict):
    scenario_version: Literal[1] = Field(description="Version of the scenario format; currently 1.")
    description: str = Field(default="", description="What the scenario asks.")
    config: str = Field(description="The inferplane config, relative to this file.")
    trace: TraceDefaults = Field(default_factory=TraceDefaults, description="Trace defaults.")
    workload: WorkloadSection = Field(default_factory=WorkloadSection, description="The workload.")
    simulation: SimulationSection = Field(default_factory=SimulationSection, description="Simulation.")
    baselines: BaselineSection = Field(default_factory=BaselineSection, description="Baseline gateways.")
    events: list[EventSpec] = Field(default_factory=list, description="Injected faults.")
    replicas: dict[str, Replicas] = Field(
        default_factory=dict, description="Substrate name -> its deployment's `replicas:` block instead of "
        "the config's (a vLLM or emulated substrate; its slots per replica are kept).")


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    substrate: str
    at_s: float
    for_s: float
    value: float | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a replay needs besides the trace, resolved and validated."""

    path: str
    config_path: str
    built: BuiltConfig
    description: str
    trace: TraceDefaults
    workload: WorkloadSpec
    simulation: SimulationSection
    baselines: BaselineSection
    events: tuple[Event, ...]


def read_yaml(path: Path):
    """The YAML document at ``path``; a missing file or bad YAML is a ``ConfigError`` naming it."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, [ConfigProblem((), "file not found")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [ConfigProblem((), f"not valid YAML: {exc}")]) from None


def load_scenario(path: str | Path) -> Scenario:
    """A scenario file, or a plain config taken as a scenario with defaults."""
    path = Path(path)
    doc = read_yaml(path)
    if isinstance(doc, dict) and "schema_version" in doc:
        built = build(load_config(path))
        spec = ScenarioFile(scenario_version=1, config=str(path))
        return _resolve(path, path, built, spec)
    try:
        spec = ScenarioFile.model_validate(doc if isinstance(doc, dict) else {})
    except ValidationError as exc:
        raise ConfigError(path, [ConfigProblem(tuple(e["loc"]), e["msg"].removeprefix("Value error, "))
                                 for e in exc.errors()]) from None
    config_path = (path.parent / spec.config).resolve()
    built = build(_with_replicas(path, load_config(config_path), spec.replicas))
    return _resolve(path, config_path, built, spec)


def _with_replicas(path: Path, cfg: InferplaneConfig, replicas: dict[str, Replicas]) -> InferplaneConfig:
    """``cfg`` with the scenario's ``replicas`` blocks, each substrate's declared capacity rescaled
    from its old maximum replicas to the new one (slots per replica kept)."""
    if not replicas:
        return cfg
    problems, substrates = [], []
    for s in cfg.substrates:
        new = replicas.get(s.name)
        if new is None:
            substrates.append(s)
            continue
        if isinstance(s, OpenAICompatibleSubstrate):
            problems.append(ConfigProblem(("replicas", s.name), "a provider API's capacity is fleet-level: "
                                          "only a vllm or emulated substrate's replicas may change"))
            continue
        old_max, new_max = replica_counts(s.settings.replicas).maximum, replica_counts(new).maximum
        c = s.capacity
        if c.max_concurrent_requests % old_max or c.max_queued_requests % old_max:
            problems.append(ConfigProblem(("replicas", s.name), f"its capacity ({c.max_concurrent_requests} "
                                          f"concurrent, {c.max_queued_requests} queued) is not a whole number "
                                          f"per replica over its {old_max} replicas"))
            continue
        capacity = c.model_copy(update={"max_concurrent_requests": c.max_concurrent_requests // old_max * new_max,
                                        "max_queued_requests": c.max_queued_requests // old_max * new_max})
        block = s.settings.model_copy(update={"replicas": new})
        substrates.append(s.model_copy(update={"capacity": capacity, s.kind: block}))
    unknown = sorted(set(replicas) - {s.name for s in cfg.substrates})
    problems += [ConfigProblem(("replicas", n), "no such substrate") for n in unknown]
    if problems:
        raise ConfigError(path, problems)
    return cfg.model_copy(update={"substrates": substrates})


def _resolve(path: Path, config_path: Path, built: BuiltConfig, spec: ScenarioFile) -> Scenario:
    problems: list[ConfigProblem] = []
    substrates = {s.name for s in built.fleet.substrates}
    models = list(built.fleet.models)
    model = spec.workload.model or models[0]
    if built.fleet.resolve_model(model) is None:
        problems.append(ConfigProblem(("workload", "model"), f"`{model}` is not a model of the config; "
                                      f"models: {', '.join(models)}"))
    route = built.fleet.resolve_model(model)
    if spec.workload.tenants is None:
        tenants = tuple(TenantShare(name, 1.0) for name, t in built.policy.tenants.items()
                        if route is None or t.allowed_models is None or route.name in t.allowed_models)
    else:
        tenants = tuple(
            TenantShare(t.name, t.share, tuple((t.sla_classes or {}).items()),
                        tuple(Burst(b.start_s, b.duration_s, b.rate_multiplier) for b in t.bursts))
            for t in spec.workload.tenants)
        for i, t in enumerate(spec.workload.tenants):
            policy = built.policy.tenants.get(t.name)
            if policy is None:
                problems.append(ConfigProblem(("workload", "tenants", i, "name"), f"`{t.name}` is not a tenant "
                                              f"of the config; tenants: {', '.join(built.policy.tenants)}"))
                continue
            for cls in t.sla_classes or {}:
                if cls not in policy.allowed_sla_classes:
                    problems.append(ConfigProblem(
                        ("workload", "tenants", i, "sla_classes", cls),
                        f"tenant `{t.name}` may not use this class; allowed: "
                        f"{', '.join(sorted(policy.allowed_sla_classes))}"))
    for name in spec.simulation.physics:
        if name not in substrates:
            problems.append(ConfigProblem(("simulation", "physics", name), f"no such substrate; substrates: "
                                          f"{', '.join(sorted(substrates))}"))
    for i, e in enumerate(spec.events):
        if e.substrate not in substrates:
            problems.append(ConfigProblem(("events", i, "substrate"), f"`{e.substrate}` is not a substrate; "
                                          f"substrates: {', '.join(sorted(substrates))}"))
    if not tenants:
        problems.append(ConfigProblem(("workload", "tenants"), f"no tenant may use model `{model}`"))
    if problems:
        raise ConfigError(path, problems)
    workload = WorkloadSpec(
        model=route.name, tenants=tenants, seed=spec.workload.seed,
        max_tokens=MaxTokens(spec.workload.max_tokens.rule, spec.workload.max_tokens.tokens),
        time_scale=spec.trace.time_scale, rate_scale=spec.trace.rate_scale,
    )
    return Scenario(
        path=str(path), config_path=str(config_path), built=built, description=spec.description,
        trace=spec.trace, workload=workload, simulation=spec.simulation, baselines=spec.baselines,
        events=tuple(Event(e.kind, e.substrate, e.at_s, e.for_s, e.value) for e in spec.events),
    )


def parse_event(kind: EventKind, text: str) -> Event:
    """``NAME:AT_S:FOR_S`` (outage) or ``NAME:AT_S:FOR_S:VALUE`` (failure_rate, slowdown), from the CLI."""
    parts = text.split(":")
    want = 3 if kind is EventKind.OUTAGE else 4
    if len(parts) != want:
        shape = "NAME:AT_S:FOR_S" + ("" if kind is EventKind.OUTAGE else ":VALUE")
        raise ValueError(f"--{kind.value.replace('_', '-')} `{text}` is not {shape}")
    try:
        spec = EventSpec(kind=kind, substrate=parts[0], at_s=float(parts[1]), for_s=float(parts[2]),
                         value=float(parts[3]) if want == 4 else None)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"--{kind.value.replace('_', '-')} `{text}`: "
                         f"{first['msg'].removeprefix('Value error, ')}") from None
    except ValueError:
        raise ValueError(f"--{kind.value.replace('_', '-')} `{text}`: AT_S, FOR_S and VALUE are numbers") from None
    return Event(spec.kind, spec.substrate, spec.at_s, spec.for_s, spec.value)
