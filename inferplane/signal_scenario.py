"""A what-if description of live signals, for `inferplane explain --signals FILE`.

The file (YAML or JSON) gives some substrates' signals; every substrate it does not name is idle
and fresh. Ages are in seconds before the moment of the decision::

    substrates:
      local-vllm: {in_flight: 16, queued: 16, kv_cache_usage: 0.97, age_s: 0.4}
      groq-class-emulated: {circuit: open}
      provider-api-emulated: {in_flight: 3, age_s: 9.0}   # stale: older than the bound
      sovereign-de-emulated: {missing: [in_flight]}          # never reported its load

``in_flight`` here is what runs and ``queued`` what waits, as an operator reads an engine; the
snapshot's ``in_flight`` signal is everything dispatched, so it is their sum (``queued`` is the
waiting part of it, see ``placement.signals``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferplane.config.errors import ConfigError, ConfigProblem
from inferplane.placement.fleet import FleetSpec
from inferplane.placement.signals import CircuitState, Reading, SubstrateSignals
from inferplane.placement.snapshot import FleetSnapshot

SignalName = Literal[
    "in_flight", "queued", "gpu_memory_used_ratio", "kv_cache_usage", "rate_limit_requests_remaining",
    "rate_limit_tokens_remaining", "recent_ttft_s", "recent_tpot_s", "error_rate",
]


class SubstrateSignalsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    in_flight: Annotated[float, Field(ge=0)] = Field(default=0, description="Requests running.")
    queued: Annotated[float, Field(ge=0)] = Field(default=0, description="Requests waiting.")
    gpu_memory_used_ratio: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="GPU memory used, 0-1.")
    kv_cache_usage: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="KV-cache use, 0-1 (defaults to 0 for vLLM substrates).")
    rate_limit_requests_remaining: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Requests left in the API's window.")
    rate_limit_tokens_remaining: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Tokens left in the API's window.")
    recent_ttft_s: Annotated[float, Field(ge=0)] | None = Field(default=None, description="Observed TTFT, s.")
    recent_tpot_s: Annotated[float, Field(ge=0)] | None = Field(default=None, description="Observed s/token.")
    error_rate: Annotated[float, Field(ge=0, le=1)] | None = Field(default=None, description="Recent error rate.")
    circuit: CircuitState = Field(default=CircuitState.CLOSED, description="Circuit breaker state.")
    age_s: Annotated[float, Field(ge=0)] = Field(default=0.0, description="Age of every reading, s.")
    missing: list[SignalName] = Field(default_factory=list, description="Signals never reported.")


class SignalScenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    substrates: dict[str, SubstrateSignalsSpec] = Field(
        default_factory=dict, description="Substrate name -> its signals.")


def load_scenario(path: str | Path) -> SignalScenario:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return SignalScenario.model_validate(doc)
    except FileNotFoundError:
        raise ConfigError(path, [ConfigProblem((), "file not found")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [ConfigProblem((), f"not valid YAML: {exc}")]) from None
    except ValidationError as exc:
        raise ConfigError(path, [ConfigProblem(tuple(e["loc"]), e["msg"]) for e in exc.errors()]) from None


def snapshot_from_scenario(fleet: FleetSpec, scenario: SignalScenario | None, now_s: float) -> FleetSnapshot:
    names = {s.name for s in fleet.substrates}
    unknown = sorted(set(scenario.substrates) - names) if scenario else []
    if unknown:
        raise ValueError(f"signals for unknown substrates {unknown}; substrates: {sorted(names)}")
    signals = []
    for spec in fleet.substrates:
        given = scenario.substrates.get(spec.name) if scenario else None
        if given is None:
            given = SubstrateSignalsSpec()
        at = now_s - given.age_s
        values = given.model_dump(exclude={"circuit", "age_s", "missing"})
        values["in_flight"] += values["queued"]  # the signal counts what waits as dispatched too
        if spec.kind == "vllm" and values["kv_cache_usage"] is None:
            values["kv_cache_usage"] = 0.0
        readings = {
            name: None if (value is None or name in given.missing) else Reading(float(value), at)
            for name, value in values.items()
        }
        signals.append(SubstrateSignals(circuit=given.circuit, **readings))
    return FleetSnapshot(version=0, taken_at_s=now_s, fleet=fleet, signals=tuple(signals))
