"""From trace rows to the requests a replay sends: tenants, SLA classes, max_tokens, scaling.

The public traces carry no tenant, SLA class or ``max_tokens``; a replay assigns them by a seeded
rule that depends only on (seed, trace row, copy), never on the order of drawing, so a row keeps
its tenant whatever ``--limit`` cuts off:

    u(purpose)  = first 8 bytes of blake2b("{seed}/{row index}/{copy}/{purpose}") / 2**64, in [0, 1)
    tenant      = the first tenant in the mix whose cumulative share exceeds u("tenant")
                  (shares are normalised to sum to 1)
    SLA class   = the same rule on u("sla") over the tenant's class mix; a tenant given no class
                  mix sends every request in its ``default_sla_class``
    (a parquet trace that names a row's tenant or class is taken as it is)

``max_tokens``, what the client asks for (the placement engine predicts with it; the substrate
generates the trace's ``output_tokens``):

    trace      max_tokens = output_tokens (the client knows its output length: an oracle)
    round_up   max_tokens = ceil(output_tokens / quantum) * quantum (clients ask in coarse steps)
    fixed      max_tokens = N, and the substrate stops at min(output_tokens, N)

Scaling (both are stated in every report):

    time_scale X   arrival_s' = arrival_s * X (X < 1 compresses the trace: the same requests,
                   faster; the replay's simulated span is X times the trace's)
    rate_scale X   keeps the time axis and changes the count: each row is sent floor(X) times,
                   plus once more when u("copy") < frac(X); copy 0 at the row's arrival, copy k >= 1
                   at arrival + u("offset") * (gap to the next row), so bursts keep their shape.
                   X < 1 thins the trace by the same rule (a row survives when u("copy") < X).

The offered load is rate_scale / time_scale times the trace's.

Bursts (a noisy neighbour): a tenant may burst to ``rate_multiplier`` times its own rate while
``start_s <= arrival < start_s + duration_s`` (simulated seconds from the scaled trace's start).
Each of its requests arriving in the window gets extra copies, by the rate_scale rule on
m = rate_multiplier - 1: floor(m) copies, plus one when u("burst") < frac(m); extra copy j >= 1
arrives at the request's arrival + u("burst{j}/offset") * (gap to the next row, scaled), is the
same tenant's, and draws its SLA class from u("burst{j}/sla"). Every other request (its tenant,
class and arrival) is exactly what it would be without the burst, and only the bursting tenant's
requests are added: its extra copies are ``burst_copy`` j >= 1, request id ``replay-{row}[.k]+b{j}``.

``drop_tenants`` removes given tenants' requests and keeps every other one as it was (only the
``index`` is renumbered): the same replay without a noisy neighbour.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from inferplane.placement.policy import PlacementPolicy
from inferplane.replay.trace import TraceRow

MaxTokensRule = Literal["trace", "round_up", "fixed"]


class WorkloadError(ValueError):
    """A tenant mix, SLA mix or scaling the config cannot honour."""


@dataclass(frozen=True, slots=True)
class Burst:
    """The tenant sends ``rate_multiplier`` times its own rate in [start_s, start_s + duration_s)."""

    start_s: float
    duration_s: float
    rate_multiplier: float

    def __post_init__(self) -> None:
        if not (self.start_s >= 0 and math.isfinite(self.start_s)):
            raise WorkloadError(f"a burst starts at a time >= 0, got {self.start_s}")
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise WorkloadError(f"a burst lasts > 0 s, got {self.duration_s}")
        if not (self.rate_multiplier >= 1 and math.isfinite(self.rate_multiplier)):
            raise WorkloadError(f"a burst's rate multiplier is >= 1, got {self.rate_multiplier}")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class TenantShare:
    tenant: str
    share: float
    """Relative share of the trace's requests (the traffic mix, not the config's fair-share weight)."""
    sla_mix: tuple[tuple[str, float], ...] = ()
    """(class, share) pairs; empty: every request in the tenant's default class."""
    bursts: tuple[Burst, ...] = ()
    """Windows in which the tenant sends more than its share of the trace (module docstring)."""

    def __post_init__(self) -> None:
        spans = sorted((b.start_s, b.end_s) for b in self.bursts)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                raise WorkloadError(f"tenant `{self.tenant}`: bursts overlap at {start:g} s")

    def burst_at(self, arrival_s: float) -> Burst | None:
        for b in self.bursts:
            if b.start_s <= arrival_s < b.end_s:
                return b
        return None


@dataclass(frozen=True, slots=True)
class MaxTokens:
    rule: MaxTokensRule = "round_up"
    tokens: int = 256
    """The quantum for ``round_up``, the cap for ``fixed``; unused for ``trace``."""

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise WorkloadError("max_tokens quantum/cap must be at least 1")

    def apply(self, output_tokens: int) -> tuple[int, int]:
        """(max_tokens the client sends, tokens the substrate generates), both >= 1."""
        out = max(1, output_tokens)
        if self.rule == "trace":
            return out, out
        if self.rule == "round_up":
            return math.ceil(out / self.tokens) * self.tokens, out
        return self.tokens, min(out, self.tokens)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    model: str
    tenants: tuple[TenantShare, ...]
    seed: int = 0
    max_tokens: MaxTokens = MaxTokens()
    time_scale: float = 1.0
    rate_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.tenants:
            raise WorkloadError("the tenant mix is empty")
        if any(t.share < 0 for t in self.tenants) or sum(t.share for t in self.tenants) <= 0:
            raise WorkloadError("tenant shares must be >= 0 and sum to more than 0")
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise WorkloadError(f"time scale must be > 0, got {self.time_scale}")
        if not (self.rate_scale > 0 and math.isfinite(self.rate_scale)):
            raise WorkloadError(f"rate scale must be > 0, got {self.rate_scale}")

    @property
    def load_factor(self) -> float:
        """Offered load relative to the trace: rate_scale / time_scale."""
        return self.rate_scale / self.time_scale


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """One request the replay sends. Times in simulated seconds from the trace's start."""

    index: int
    """Position in the workload (0-based, arrival order)."""
    request_id: str
    trace_index: int
    copy: int
    arrival_s: float
    tenant: str
    sla_class: str
    model: str
    input_tokens: int
    output_tokens: int
    """What the substrate generates."""
    max_tokens: int
    """What the client asks for (placement predicts with it)."""
    burst_copy: int = 0
    """0, or j >= 1: the j-th extra copy a tenant's burst made of (trace_index, copy)."""
    prefix_blocks: tuple[int, ...] = ()
    """The prompt's chained prefix-cache block ids (the trace row's; copies of a row share them)."""


def parse_tenants(spec: str, base: tuple[TenantShare, ...] = ()) -> tuple[TenantShare, ...]:
    """``eu-bank:0.3,global-app:0.7`` -> shares; a tenant's SLA mix and bursts are kept from
    ``base`` (the scenario's) when it names the same tenant."""
    mixes = {t.tenant: t.sla_mix for t in base}
    bursts = {t.tenant: t.bursts for t in base}
    out = []
    for part in spec.split(","):
        name, sep, share = part.strip().partition(":")
        if not sep or not name:
            raise WorkloadError(f"--tenants: `{part}` is not NAME:SHARE (e.g. eu-bank:0.3,global-app:0.7)")
        try:
            value = float(share)
        except ValueError:
            raise WorkloadError(f"--tenants: share `{share}` of {name} is not a number") from None
        out.append(TenantShare(name, value, mixes.get(name, ()), bursts.get(name, ())))
    return tuple(out)


def unit_draw(seed: int, row: int, copy: int, purpose: str) -> float:
    """A uniform draw in [0, 1) fixed by (seed, row, copy, purpose)."""
    digest = hashlib.blake2b(f"{seed}/{row}/{copy}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _pick(shares: tuple[tuple[str, float], ...], u: float) -> str:
    total = sum(s for _, s in shares)
    acc = 0.0
    for name, share in shares:
        acc += share / total
        if u < acc:
            return name
    return shares[-1][0]


def validate_spec(spec: WorkloadSpec, policy: PlacementPolicy, model_names: frozenset[str]) -> None:
    """Every tenant and class exists and may be used together, and the model is served."""
    if spec.model not in model_names:
        raise WorkloadError(f"model `{spec.model}` is not in the config; models: {', '.join(sorted(model_names))}")
    for t in spec.tenants:
        tenant = policy.tenants.get(t.tenant)
        if tenant is None:
            raise WorkloadError(f"tenant `{t.tenant}` is not in the config; tenants: "
                                f"{', '.join(sorted(policy.tenants))}")
        for cls, share in t.sla_mix:
            if share < 0:
                raise WorkloadError(f"tenant `{t.tenant}`: SLA share of `{cls}` is negative")
            if cls not in tenant.allowed_sla_classes:
                raise WorkloadError(f"tenant `{t.tenant}` may not use SLA class `{cls}`; allowed: "
                                    f"{', '.join(sorted(tenant.allowed_sla_classes))}")


def build_workload(rows: tuple[TraceRow, ...], spec: WorkloadSpec, policy: PlacementPolicy) -> tuple[ReplayRequest, ...]:
    """The requests of ``rows`` under ``spec``, in arrival order (see the module docstring)."""
    tenant_shares = tuple((t.tenant, t.share) for t in spec.tenants)
    mixes = {t.tenant: t.sla_mix for t in spec.tenants}
    bursting = {t.tenant: t for t in spec.tenants if t.bursts}
    whole, frac = divmod(spec.rate_scale, 1.0)
    mean_gap = (rows[-1].arrival_s - rows[0].arrival_s) / max(1, len(rows) - 1)
    drafts: list[tuple[float, int, int, int, str, TraceRow]] = []  # arrival, row, copy, burst copy, tenant
    for pos, row in enumerate(rows):
        copies = int(whole) + (1 if unit_draw(spec.seed, row.index, 0, "copy") < frac else 0)
        gap = rows[pos + 1].arrival_s - row.arrival_s if pos + 1 < len(rows) else mean_gap
        for k in range(copies):
            offset = 0.0 if k == 0 else unit_draw(spec.seed, row.index, k, "offset") * gap
            arrival = (row.arrival_s + offset) * spec.time_scale
            tenant = row.tenant or _pick(tenant_shares, unit_draw(spec.seed, row.index, k, "tenant"))
            drafts.append((arrival, row.index, k, 0, tenant, row))
            burst = bursting[tenant].burst_at(arrival) if tenant in bursting else None
            if burst is None:
                continue
            extra_whole, extra_frac = divmod(burst.rate_multiplier - 1.0, 1.0)
            extra = int(extra_whole) + (1 if unit_draw(spec.seed, row.index, k, "burst") < extra_frac else 0)
            for j in range(1, extra + 1):
                late = unit_draw(spec.seed, row.index, k, f"burst{j}/offset") * gap * spec.time_scale
                drafts.append((arrival + late, row.index, k, j, tenant, row))
    drafts.sort(key=lambda d: d[:4])

    out: list[ReplayRequest] = []
    for arrival, trace_index, k, j, tenant, row in drafts:
        tenant_policy = policy.tenants.get(tenant)
        if tenant_policy is None:
            raise WorkloadError(f"trace row {trace_index}: tenant `{tenant}` is not in the config")
        sla = row.sla_class
        if sla is None:
            mix = mixes.get(tenant, ())
            purpose = "sla" if j == 0 else f"burst{j}/sla"
            sla = _pick(mix, unit_draw(spec.seed, trace_index, k, purpose)) if mix else tenant_policy.default_sla_class
        max_tokens, output = spec.max_tokens.apply(row.output_tokens)
        out.append(ReplayRequest(
            index=len(out),
            request_id=f"replay-{trace_index}" + (f".{k}" if k else "") + (f"+b{j}" if j else ""),
            trace_index=trace_index, copy=k, arrival_s=arrival, tenant=tenant, sla_class=sla,
            model=spec.model, input_tokens=row.input_tokens, output_tokens=output, max_tokens=max_tokens,
            burst_copy=j, prefix_blocks=row.prefix_blocks,
        ))
    if not out:
        raise WorkloadError(f"rate scale {spec.rate_scale} left no request of {len(rows)} rows")
    return tuple(out)


def drop_tenants(requests: tuple[ReplayRequest, ...], tenants: Iterable[str]) -> tuple[ReplayRequest, ...]:
    """``requests`` without those of ``tenants``; every other request as it was, renumbered."""
    gone = frozenset(tenants)
    kept = tuple(replace(r, index=i) for i, r in enumerate(r for r in requests if r.tenant not in gone))
    if not kept:
        raise WorkloadError(f"without {', '.join(sorted(gone))} no request is left")
    return kept
