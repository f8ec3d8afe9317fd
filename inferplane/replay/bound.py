"""An offline bound on placement quality: a fluid relaxation solved as a linear programme (HiGHS).

Full knowledge of the whole workload, the same fleet and physics, the same jurisdictions and
deadlines; no queueing, no staleness, no integrality. No router can do better, because every
constraint below holds for any real execution in the simulator:

Variables: x[r, s] in [0, 1], the share of request r that meets its deadlines on substrate s. A
pair exists only where r may meet its deadlines on s at all:

    s serves the model, lies inside the tenant's allowed jurisdictions (``is_within``), and its
    context window holds input + max_tokens;
    best case (no queue, running = 1, jitter at its low end 1 - j, the substrate's base physics:
    injected slowdowns only lengthen durations):
        ttft_best = (outbound_delay_s + first_token_delay_s(input)) * (1 - j)  <= ttft deadline
        e2e_best  = ttft_best + (output - 1) * decode_interval_s(running=1)    <= e2e deadline
    and s is reachable at some time in [arrival, arrival + ttft deadline] (outage events).

Prefix caches, at their best: on a substrate with a prefix cache (``substrate_sim``), a request's
prefill is taken as ``input - cached_best`` tokens, where ``cached_best = min(run * 512, input - 1)``
and ``run`` is the leading run of its prefix blocks that any request arriving before it also had:
an unbounded cache shared by every replica, holding every prompt from its arrival on. A real cache
is bounded, per replica, and filled only once a prefill has run, so it can only serve less; the
bound stays an upper bound. Without prefix blocks (Azure traces) nothing changes.

Capacity, from the physics: a request holds a slot for its first-token delay and then decodes; at
``running`` = n slots held, one stream decodes at R / (f * (1 + (sigma - 1) n / cap)) tokens/s. Over
any interval of length T in which a set of requests does all its work, prefill slot-time P and
decode tokens D satisfy P + D * decode_interval_s(running=cap) <= cap * T (the token rate with
n_p slots prefilling is at most (cap - n_p) * R / (f * sigma)). So each request contributes

    e[r, s] = first_token_delay_s(prefilled input) * (1 - j) + (output - 1) * decode_interval_s(running=cap)

effective slot-seconds, and for every interval I = [j*k*W, (j+1)*k*W + d] (windows of W seconds,
blocks of k = 1, 2, 4, ... windows, d each distinct e2e deadline) the requests that must run
entirely inside I (arrival >= start of I and arrival + e2e deadline <= end of I) satisfy

    sum of e[r, s] * x[r, s]  <=  max_concurrency(s) * |I|.

First-token deadlines inside bursts (the tight bound; ``first_token_rows``). The rows above let a
request use its interval's slot-seconds anywhere up to its e2e deadline, so a burst that no
router could start within a 2 s first-token deadline still looks attainable. A request r that
meets its first-token deadline D_r starts after its arrival a_r and has its first token, so its
whole prefill, by a_r + D_r. So for every interval I = [j*w, (j+1)*w + d] (windows of w seconds,
w = the tightest first-token deadline, 2w, 4w, ... below W; d each distinct first-token deadline)
the requests arriving in [j*w, (j+1)*w) with D_r <= d do inside I their prefill, first*(1 - j),
and at least min(decode, end of I - a_r - D_r) of decode (a stream that decodes for t seconds
uses at least t effective slot-seconds, since decode_interval_s(running=cap) is the slowest):

    sum of (first[r, s] + min(e[r, s] - first[r, s], end(I) - a_r - D_r)) * x[r, s]
        <=  max_concurrency(s) * |I|.

An engine that prefills a few prompts at a time (``prefill_concurrency`` = L lanes below its
slots, ``substrate_adapters.physics``) holds a lane for each request's whole first-token phase,
so the same intervals also have

    sum of first[r, s] * x[r, s]  <=  L(s) * |I|.

Valid for any execution (so still a bound), and tighter where arrivals bunch or prefill is the
bottleneck: the loose bound (``first_token_rows=False``, the e2e rows above only, which count
every slot as a prefill lane) is reported beside it.

Rate limits (token buckets of one minute's allowance, refilled per second): requests meeting their
deadlines on s and arriving in window w were accepted within [w start, w end + ttft deadline], so
their count is <= rpm * (1 + |I| / 60) and their input + max_tokens <= tpm * (1 + |I| / 60).

Each request once: sum over s of x[r, s] <= 1.

Solved twice: the best SLA attainment M* = max sum x / N; then the least cost at an attainment
``m`` (for the bound itself m = M*, and for each router the attainment it reached):
min sum usage_cost[r, s] x[r, s] s.t. sum x >= m * N, plus the fixed cost of reserved hardware.
A router meeting m deadlines pays at least that: its served-and-met requests are one feasible point.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from inferplane.config import BuiltConfig
from inferplane.jurisdiction import is_within
from inferplane.replay.outcome import fixed_cost_usd, usage_cost_usd
from inferplane.replay.scenario import Event, EventKind
from inferplane.replay.trace import MOONCAKE_BLOCK_TOKENS
from inferplane.replay.workload import ReplayRequest
from substrate_adapters.physics import (
    PhysicsModel,
    decode_interval_s,
    first_token_delay_s,
    outbound_delay_s,
    prefill_slots,
)

DEFAULT_WINDOW_S = 60.0


class BoundError(RuntimeError):
    """The LP solver failed (it should not: x = 0 is always feasible)."""


@dataclass(frozen=True, slots=True)
class FluidProgramme:
    """The LP's data: one column per (request, substrate) pair that can meet its deadlines."""

    requests: int
    request_of: np.ndarray
    substrate_of: np.ndarray
    usage_cost: np.ndarray
    a_ub: object
    """scipy.sparse matrix: capacity and rate-limit rows, then one row per request."""
    b_ub: np.ndarray
    fixed_cost_usd: float
    window_s: float
    capacity_rows: int
    build_s: float
    first_token_rows: bool = True
    """Whether the rows for first-token deadlines inside bursts are in (the tight bound)."""
    memo: dict = field(default_factory=dict, compare=False, repr=False)
    """Results solved once per programme (``free_met``)."""


@dataclass(frozen=True, slots=True)
class Bound:
    sla_attainment: float
    met: float
    """Requests (fluid) meeting their deadlines at the best attainment."""
    cost_usd: float | None
    """The least total cost at which ``sla_attainment`` is reached (fixed + usage); None when not
    asked for (``solve_bound(cost=False)``)."""
    fixed_cost_usd: float
    requests: int
    pairs: int
    constraints: int
    window_s: float
    solve_s: float
    first_token_rows: bool = True

    def to_dict(self) -> dict:
        method = ("fluid LP (HiGHS) over windows, with first-token deadlines inside bursts: max deadlines met, "
                  "then least cost at that" if self.first_token_rows else
                  "fluid LP (HiGHS) over windows, e2e deadlines only (loose): max deadlines met, then least "
                  "cost at that")
        return {"sla_attainment": self.sla_attainment, "met": self.met, "cost_usd": self.cost_usd,
                "fixed_cost_usd": self.fixed_cost_usd, "requests": self.requests, "pairs": self.pairs,
                "constraints": self.constraints, "window_s": self.window_s, "solve_s": self.solve_s,
                "first_token_rows": self.first_token_rows, "method": method}


def _reachable_in(outages: list[tuple[float, float]], start: float, end: float) -> bool:
    """Some instant of [start, end] lies outside every outage."""
    t = start
    for a, b in sorted(outages):
        if a <= t < b:
            t = b
    return t <= end


def _cached_at_best(requests: tuple[ReplayRequest, ...]) -> dict[int, int]:
    """Request index -> the most prompt tokens any prefix cache could serve it (module docstring):
    the leading run of its blocks that a request arriving before it had, in an unbounded cache."""
    seen: set[int] = set()
    out: dict[int, int] = {}
    for r in sorted(requests, key=lambda r: (r.arrival_s, r.index)):
        if not r.prefix_blocks:
            continue
        run = 0
        for b in r.prefix_blocks:
            if b not in seen:
                break
            run += 1
        out[r.index] = max(0, min(run * MOONCAKE_BLOCK_TOKENS, r.input_tokens - 1))
        seen.update(r.prefix_blocks)
    return out


def build_programme(built: BuiltConfig, physics: tuple[PhysicsModel, ...], requests: tuple[ReplayRequest, ...],
                    events: tuple[Event, ...] = (), *, span_s: float, window_s: float = DEFAULT_WINDOW_S,
                    prefix_caches: tuple | None = None, first_token_rows: bool = True) -> FluidProgramme:
    """``prefix_caches``: each substrate's real prefix caches (``runner.Prepared.prefix_caches``);
    None: as the config declares them. ``first_token_rows``: the tight bound (module docstring);
    False: the loose one."""
    t_build = time.perf_counter()
    fleet, policy = built.fleet, built.policy
    t0 = requests[0].arrival_s if requests else 0.0
    outages: dict[int, list[tuple[float, float]]] = {}
    for e in events:
        if e.kind is EventKind.OUTAGE:
            outages.setdefault(fleet.substrate(e.substrate).index, []).append((e.at_s, e.at_s + e.for_s))

    # Per substrate constants.
    subs = fleet.substrates
    best_first = []
    for p in physics:
        best_first.append((p, 1.0 - p.jitter_ratio, decode_interval_s(p, 1), decode_interval_s(p, p.max_concurrency)))

    cached_best = _cached_at_best(requests)
    has_cache = [(c is not None) for c in (prefix_caches or tuple(s.prefix_cache for s in fleet.substrates))]
    req_of, sub_of, cost, eff, prefill, arrival, d_e2e, d_ttft, tokens = [], [], [], [], [], [], [], [], []
    for r in requests:
        route = fleet.resolve_model(r.model)
        tenant = policy.tenants.get(r.tenant)
        if route is None or tenant is None:
            continue
        sla = policy.sla_classes[r.sla_class]
        for idx in route.substrate_indices:
            spec = subs[idx]
            if not is_within(spec.countries, tenant.allowed_countries):
                continue
            if r.input_tokens + r.max_tokens > spec.context_windows.get(route.name, 0):
                continue
            base, low, interval_1, interval_full = best_first[idx]
            first = first_token_delay_s(
                base, r.input_tokens - (cached_best.get(r.index, 0) if has_cache[idx] else 0))
            ttft = (outbound_delay_s(base) + first) * low
            if ttft > sla.ttft_deadline_s:
                continue
            if ttft + (r.output_tokens - 1) * interval_1 > sla.e2e_deadline_s:
                continue
            if idx in outages and not _reachable_in(outages[idx], r.arrival_s, r.arrival_s + sla.ttft_deadline_s):
                continue
            req_of.append(r.index)
            sub_of.append(idx)
            cost.append(usage_cost_usd(spec, r.input_tokens, r.output_tokens, built.ingress_region))
            eff.append(first * low + (r.output_tokens - 1) * interval_full)
            prefill.append(first * low)
            arrival.append(r.arrival_s - t0)
            d_e2e.append(sla.e2e_deadline_s)
            d_ttft.append(sla.ttft_deadline_s)
            tokens.append(r.input_tokens + r.max_tokens)

    req_of_a = np.asarray(req_of, dtype=np.int64)
    sub_of_a = np.asarray(sub_of, dtype=np.int64)
    eff_a = np.asarray(eff, dtype=float)
    prefill_a = np.asarray(prefill, dtype=float)
    arr_a = np.asarray(arrival, dtype=float)
    de_a = np.asarray(d_e2e, dtype=float)
    dt_a = np.asarray(d_ttft, dtype=float)
    tok_a = np.asarray(tokens, dtype=float)
    n_vars = len(req_of)
    horizon = max(span_s, float(arr_a.max()) if n_vars else 0.0)
    n_windows = max(1, math.ceil((horizon + 1e-9) / window_s))

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    rhs: list[np.ndarray] = []
    next_row = 0
    cols_all = np.arange(n_vars, dtype=np.int64)

    def add_block(mask: np.ndarray, group: np.ndarray, n_groups: int, coef: np.ndarray, limit: np.ndarray) -> None:
        nonlocal next_row
        sel = np.nonzero(mask)[0]
        rows.append(next_row + group[sel])
        cols.append(cols_all[sel])
        vals.append(coef[sel])
        rhs.append(limit)
        next_row += n_groups

    deadlines = sorted({float(d) for d in de_a}) if n_vars else []
    ttft_deadlines = sorted({float(d) for d in dt_a}) if n_vars else []
    for s_idx, spec in enumerate(subs):
        on_s = sub_of_a == s_idx
        if not on_s.any():
            continue
        cap = physics[s_idx].max_concurrency
        k = 1
        while True:
            block = k * window_s
            n_blocks = max(1, math.ceil(n_windows / k))
            j = np.minimum((arr_a // block).astype(np.int64), n_blocks - 1)
            for d in deadlines:
                end = (j + 1) * block + d
                mask = on_s & (arr_a + de_a <= end + 1e-9)
                add_block(mask, j, n_blocks, eff_a, np.full(n_blocks, cap * (block + d)))
            if k >= n_windows:
                break
            k *= 2
        if first_token_rows:
            lanes = prefill_slots(physics[s_idx])
            w = max(ttft_deadlines[0], 1e-3)
            while w < window_s:
                n_w = max(1, math.ceil((horizon + 1e-9) / w))
                j = np.minimum((arr_a // w).astype(np.int64), n_w - 1)
                for d in ttft_deadlines:
                    mask = on_s & (dt_a <= d + 1e-9)
                    end = (j + 1) * w + d
                    coef = prefill_a + np.minimum(eff_a - prefill_a, np.maximum(0.0, end - arr_a - dt_a))
                    add_block(mask, j, n_w, coef, np.full(n_w, cap * (w + d)))
                    if lanes < cap:
                        add_block(mask, j, n_w, prefill_a, np.full(n_w, lanes * (w + d)))
                w *= 2
        rpm, tpm = spec.requests_per_minute, spec.tokens_per_minute
        if rpm is not None or tpm is not None:
            j = np.minimum((arr_a // window_s).astype(np.int64), n_windows - 1)
            for d in ttft_deadlines:
                mask = on_s & (dt_a <= d + 1e-9)
                allowance = 1.0 + (window_s + d) / 60.0
                if rpm is not None:
                    add_block(mask, j, n_windows, np.ones(n_vars), np.full(n_windows, rpm * allowance))
                if tpm is not None:
                    add_block(mask, j, n_windows, tok_a, np.full(n_windows, tpm * allowance))
    capacity_rows = next_row
    # Each request at most once.
    dense_req = np.unique(req_of_a, return_inverse=True)[1] if n_vars else np.zeros(0, dtype=np.int64)
    n_req_rows = int(dense_req.max()) + 1 if n_vars else 0
    add_block(np.ones(n_vars, dtype=bool), dense_req, n_req_rows, np.ones(n_vars), np.ones(n_req_rows))

    a_ub = coo_matrix(
        (np.concatenate(vals) if vals else np.zeros(0),
         (np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
          np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64))),
        shape=(next_row, n_vars)).tocsr()
    return FluidProgramme(
        requests=len(requests), request_of=req_of_a, substrate_of=sub_of_a,
        usage_cost=np.asarray(cost, dtype=float), a_ub=a_ub,
        b_ub=np.concatenate(rhs) if rhs else np.zeros(0), fixed_cost_usd=fixed_cost_usd(fleet, span_s),
        window_s=window_s, capacity_rows=capacity_rows, build_s=time.perf_counter() - t_build,
        first_token_rows=first_token_rows,
    )


def _solve(programme: FluidProgramme, objective: np.ndarray, extra_row: np.ndarray | None, extra_rhs: float | None):
    from scipy.sparse import vstack

    a, b = programme.a_ub, programme.b_ub
    if extra_row is not None:
        a = vstack([a, extra_row.reshape(1, -1)]).tocsr()
        b = np.append(b, extra_rhs)
    res = linprog(objective, A_ub=a, b_ub=b, bounds=(0.0, 1.0), method="highs-ipm")
    if res.status != 0:
        raise BoundError(f"the bound's LP did not solve: {res.message}")
    return res


def max_met(programme: FluidProgramme) -> float:
    """The most requests (fluid) that can meet their deadlines."""
    n = programme.usage_cost.size
    if n == 0:
        return 0.0
    res = _solve(programme, -np.ones(n), None, None)
    programme.memo["max"] = float(-res.fun)
    return programme.memo["max"]


def free_met(programme: FluidProgramme, target: float) -> float | None:
    """The most requests (fluid) that can meet their deadlines on pairs of no usage cost (reserved
    hardware in the ingress's region: paid whether it serves or not), solved once per programme;
    None, without solving, when fewer than ``target`` requests have such a pair at all."""
    free = programme.usage_cost <= 0.0
    if "free" not in programme.memo and free.all() and "max" in programme.memo:
        programme.memo["free"] = programme.memo["max"]
    if "free" not in programme.memo:
        if np.unique(programme.request_of[free]).size < target:
            return None
        a = programme.a_ub.tocsc()[:, np.nonzero(free)[0]]
        res = linprog(-np.ones(int(free.sum())), A_ub=a, b_ub=programme.b_ub, bounds=(0.0, 1.0), method="highs-ipm")
        if res.status != 0:
            raise BoundError(f"the bound's LP did not solve: {res.message}")
        programme.memo["free"] = float(-res.fun)
    return programme.memo["free"]


def least_cost_usd(programme: FluidProgramme, met: float) -> float:
    """The least total cost (fixed + usage) at which ``met`` requests meet their deadlines.

    Usage costs are never negative, so the least cost is at least the fixed cost; where that many
    requests can meet their deadlines on pairs of no usage cost (``free_met``, a smaller LP solved
    once per programme), it is exactly the fixed cost and the least-cost LP (the slowest of the
    bound's: 33-391 s against 30-67 s for the max on the suite's full or large cells) is not solved."""
    n = programme.usage_cost.size
    if n == 0 or met <= 0:
        return programme.fixed_cost_usd
    # A hair under the target: the solver's tolerance must not make the bound's own optimum infeasible.
    target = met * (1.0 - 1e-7) - 1e-6
    if programme.usage_cost.min() >= 0.0:
        free = free_met(programme, target)
        if free is not None and free >= target:
            return programme.fixed_cost_usd
    res = _solve(programme, programme.usage_cost, -np.ones(n), -target)
    return programme.fixed_cost_usd + float(res.fun)


def solve_bound(programme: FluidProgramme, *, cost: bool = True) -> Bound:
    """The best attainment, and (``cost``) the least cost at it; without, ``cost_usd`` is None and
    only the first LP is solved (the loose bound of a suite's cell, where only its attainment is
    read: the least-cost LP is the slower of the two)."""
    t = time.perf_counter()
    met = max_met(programme)
    cost = least_cost_usd(programme, met) if cost else None
    return Bound(
        sla_attainment=met / programme.requests if programme.requests else 0.0, met=met, cost_usd=cost,
        fixed_cost_usd=programme.fixed_cost_usd, requests=programme.requests, pairs=int(programme.usage_cost.size),
        constraints=int(programme.a_ub.shape[0]), window_s=programme.window_s,
        solve_s=time.perf_counter() - t + programme.build_s, first_token_rows=programme.first_token_rows,
    )
