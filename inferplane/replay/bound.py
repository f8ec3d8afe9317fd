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

Chunks of arrival time (so that memory and time grow linearly with the trace). The programme over
a whole trace is too big to solve at once (fleet-64 x Azure conversation x4: 77k requests, 2.7M
pairs; building it passed 13 GB), and most of its rows only couple requests that arrive close
together. So the requests are split by arrival into chunks of K consecutive windows (K a power of
two, aligned to the window grid; ``chunk_s``, by default chosen so that a chunk holds about
``CHUNK_REQUESTS`` requests on average), and each chunk gets its own programme over its own pairs:
every row above whose terms include a pair of the chunk, with the other chunks' terms dropped,
except the e2e rows of blocks longer than K windows, which are dropped whole. Every term is
non-negative (coefficients >= 0, x >= 0), so a row with terms dropped is implied by the full row,
and dropping a row only relaxes: any x feasible for the whole programme is, chunk by chunk,
feasible for every chunk's programme. So

    max sum x over the chunks' programmes (each solved alone, then summed) >= M*,

still an upper bound on any router, looser only through rows that straddle a chunk boundary: an
e2e block's rows never do (blocks of at most K windows lie inside one chunk), but first-token
windows that are not a divisor of K's length, long e2e deadlines (a request arriving near a
chunk's end may use capacity up to its deadline, which the next chunk's requests may use too)
and the blocks longer than K windows do. With one chunk covering every window (``chunk_s`` =
inf) the programme is the whole one, row for row. Measured on the suite's cells: see the tests
and ``CHUNK_REQUESTS``.

The least cost across chunks. The chunks share one row, sum x >= m * N. Write
phi_c(mu) = min usage cost of chunk c's programme s.t. its sum x >= mu (convex, piecewise linear,
non-decreasing, phi_c(0) = 0); the chunked least cost is min sum_c phi_c(mu_c) s.t.
sum_c mu_c >= m * N, at most the whole programme's least cost (a relaxation, as above), so still
a lower bound on what a router meeting m deadlines pays. It is bracketed, never guessed:

* a point: for a price lambda >= 0, solving min (usage_cost - lambda) . x over chunk c alone gives
  x* with mu = sum x*, phi_c(mu) = usage_cost . x*, and the line phi_c(mu) + lambda (mu' - mu),
  which lies below phi_c everywhere (weak duality of the Lagrangian of that one row: the
  Lagrangian relaxation with one price for every chunk is the special case where every chunk is
  evaluated at the same lambda). The free pairs' most is a point too (phi_c = 0 up to there).
* an upper bound: the chords between a chunk's points (and the max LP's solution, feasible, so at
  or above phi_c) are >= phi_c and feasible (a convex mix of two feasible points is feasible), so
  the same greedy over chords is >= the chunked least cost. Before any cost LP: every chunk at its
  max LP's solution is feasible at any attainment up to the max; where its usage is within
  ``COST_GAP`` of the total, the fixed cost is the floor and nothing more is solved. (With several
  chunks each max LP breaks ties towards cheap pairs, weight ``TIE`` = 1e-6 of the per-request
  objective, so that point pays nearly the least; the max it reports, V / (1 - TIE) from its value
  V, is an upper bound on the chunk's exact max, above it by at most 1e-6 of it.)
* a lower bound: the upper envelope of a chunk's lines is <= phi_c; the least sum of envelopes
  at sum mu_c >= m * N (a greedy over their pieces by slope: they are convex) is <= the chunked
  least cost. That is what is returned (plus the fixed cost).
* refinement (the sandwich method on Phi, the chunks' least costs summed at one price, i.e. their
  infimal convolution, Phi(m) = the chunked least usage at sum x >= m): every chunk solved at one
  price lambda gives a point of Phi (the points summed) and a line below it (the lines summed:
  Lagrangian duality of the one coupling row). While upper - lower > ``COST_GAP`` of the total
  (fixed + upper: what a router's cost is divided by), every chunk is solved at lambda = the slope
  of the chord between the two points of Phi around the target, which either adds a point of Phi
  below that chord or shows the chord is Phi there (its price is then one already solved, and the
  chunks' lines at it meet the chord). A chunk is not solved where what it already knows answers
  that price within a slack of ``COST_GAP`` / (8 chunks) of the total (a known point's
  usage - lambda mu against the least of its lines' envelope less lambda mu): late rounds, at
  prices close together, mostly solve nothing. Points, lines and Phi's points are kept per
  programme, and they hold for every attainment: the next one (one per router of a cell) starts
  from them and solves only the prices around its own target. (Refining each chunk at its own
  chord's slope instead, the method before this one, stalled short of the gap on whole traces:
  three-jurisdictions x azure-conv x4 took 190 s per router's floor at 4-13 times the gap aimed
  at; the common price reaches the gap in 30-50 s.)

The returned floor is never above the exact least cost of the chunked programme, and below it by
at most the gap reached (in the result, ``cost_gap_usd``): ``COST_GAP`` of the total is the aim,
and the refinement stops short of it only when a price comes round again (then the gap left is
the skipped chunks' slack, at most an eighth of it) or after ``_MAX_REFINE_ROUNDS`` rounds. Every
line's value at 0 comes from the LP's duals by weak duality (``_dual_floor``), not from its primal
value, so the solver's tolerance cannot lift a line above phi_c.
With one chunk the least-cost LP is solved directly (exact), as before chunking.

How each LP is solved (``lp_method``): HiGHS's dual simplex where the chunk's rows have fewer than
``IPM_FROM_NONZEROS`` non-zeros, its interior point with crossover from there. Both end at an optimal
basic solution with its duals, and any dual solution gives a valid line (``_dual_floor`` holds for
every y >= 0), so the choice moves only the time: the max and the floors agree to LP tolerance
(tests/test_replay_bound_solver.py). Measured per LP, each LP solved by both in one process: the
suite's chunks but fleet-64's (1k-11k pairs, 20k-250k non-zeros) solve by dual simplex in 0.6-1.2
times interior point's time for the max and 0.3-1.1 times for a price (three-jurisdictions x
azure-conv x4, 3,000 rows: 127 LPs, 21.8 s by interior point, 11.7 s by dual simplex); fleet-64's
(26k-97k pairs, 0.6-2.3M non-zeros) in 2-5.5 times for the max and up to 7 for a price, about even at
0.6M, so the threshold sits between. (``highs``, HiGHS's own choice, is dual simplex here. Interior
point without crossover, 1.5-2.6x faster on fleet-64's max LPs, stopped short of optimal on 53 of
those 127 LPs and on a fleet-64 price LP.)
"""

from __future__ import annotations

import heapq
import math
import time
from array import array
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, csr_matrix, vstack

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
CHUNK_REQUESTS = 2000
"""About this many requests per chunk on average (``chunk_s`` None): the chunk length is the
largest power-of-two number of windows whose mean request count stays under it."""
TIE = 1e-6
"""With several chunks, each chunk's max LP breaks ties towards cheap pairs with this weight
(``_chunk_max``): the max it gives is an upper bound at most this fraction above the exact one."""
COST_GAP = 1e-4
"""The least cost across chunks is refined until its bracket is within this fraction of the total
(fixed + usage) least cost: what a router's cost is compared with."""
_MAX_REFINE_ROUNDS = 60
IPM_FROM_NONZEROS = 500_000
"""An LP whose rows have at least this many non-zeros is solved by interior point, a smaller one by
dual simplex (``lp_method``): the measured crossover on the suite's chunks (module docstring)."""


class BoundError(RuntimeError):
    """The LP solver failed (it should not: x = 0 is always feasible)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """The pairs of the requests arriving in windows [first_window, first_window + K)."""

    first_window: int
    cols: np.ndarray
    """Indices of the chunk's pairs in the programme's pair arrays."""
    memo: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FluidProgramme:
    """The LP's data: one column per (request, substrate) pair that can meet its deadlines, in
    chunks of arrival time whose programmes are built and solved one at a time (module docstring)."""

    requests: int
    request_of: np.ndarray
    substrate_of: np.ndarray
    usage_cost: np.ndarray
    effective: np.ndarray
    prefill: np.ndarray
    arrival: np.ndarray
    """Seconds since the first request's arrival."""
    d_e2e: np.ndarray
    d_ttft: np.ndarray
    tokens: np.ndarray
    chunks: tuple[Chunk, ...]
    chunk_windows: int
    """K: windows per chunk (a power of two)."""
    n_windows: int
    horizon_s: float
    e2e_deadlines: tuple[float, ...]
    ttft_deadlines: tuple[float, ...]
    """The distinct deadlines of the whole programme: every chunk has the rows of each."""
    caps: tuple[int, ...]
    lanes: tuple[int, ...]
    rate_limits: tuple[tuple[float | None, float | None], ...]
    fixed_cost_usd: float
    window_s: float
    build_s: float
    first_token_rows: bool = True
    """Whether the rows for first-token deadlines inside bursts are in (the tight bound)."""
    memo: dict = field(default_factory=dict, compare=False, repr=False)
    """Results solved once per programme (``max_met``, ``free_met``, the rows' count)."""

    @property
    def pairs(self) -> int:
        return int(self.usage_cost.size)

    @property
    def chunk_s(self) -> float:
        return self.chunk_windows * self.window_s


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
    chunks: int = 1
    chunk_s: float = math.inf
    cost_gap_usd: float | None = None
    """How far above ``cost_usd`` the chunked programme's exact least cost may lie (0: exact)."""

    def to_dict(self) -> dict:
        method = ("fluid LP (HiGHS) over windows, with first-token deadlines inside bursts: max deadlines met, "
                  "then least cost at that" if self.first_token_rows else
                  "fluid LP (HiGHS) over windows, e2e deadlines only (loose): max deadlines met, then least "
                  "cost at that")
        if self.chunks > 1:
            method += (f"; in {self.chunks} chunks of {self.chunk_s:.0f} s of arrivals solved apart and summed "
                       "(a relaxation: still a bound), the least cost bracketed across chunks from below")
        return {"sla_attainment": self.sla_attainment, "met": self.met, "cost_usd": self.cost_usd,
                "fixed_cost_usd": self.fixed_cost_usd, "requests": self.requests, "pairs": self.pairs,
                "constraints": self.constraints, "window_s": self.window_s, "solve_s": self.solve_s,
                "first_token_rows": self.first_token_rows, "chunks": self.chunks,
                "chunk_s": None if math.isinf(self.chunk_s) else self.chunk_s,
                "cost_gap_usd": self.cost_gap_usd, "method": method}


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


def _pow2_at_least(n: float) -> int:
    k = 1
    while k < n:
        k *= 2
    return k


def build_programme(built: BuiltConfig, physics: tuple[PhysicsModel, ...], requests: tuple[ReplayRequest, ...],
                    events: tuple[Event, ...] = (), *, span_s: float, window_s: float = DEFAULT_WINDOW_S,
                    prefix_caches: tuple | None = None, first_token_rows: bool = True,
                    chunk_s: float | None = None) -> FluidProgramme:
    """``prefix_caches``: each substrate's real prefix caches (``runner.Prepared.prefix_caches``);
    None: as the config declares them. ``first_token_rows``: the tight bound (module docstring);
    False: the loose one. ``chunk_s``: seconds of arrivals per chunk, rounded down to a power-of-two
    number of windows (at least one); inf: one chunk, the whole programme; None: about
    ``CHUNK_REQUESTS`` requests per chunk."""
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
    # Typed arrays, not lists of floats: 2.7M pairs on the largest suite cell.
    req_of, sub_of = array("q"), array("q")
    cost, eff, prefill, arrival, d_e2e, d_ttft, tokens = (array("d") for _ in range(7))
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

    arr_a = np.frombuffer(arrival, dtype=float) if len(arrival) else np.zeros(0)
    n_vars = arr_a.size
    horizon = max(span_s, float(arr_a.max()) if n_vars else 0.0)
    n_windows = max(1, math.ceil((horizon + 1e-9) / window_s))
    # K: a power of two, so that every block of k <= K windows (aligned at multiples of k) lies in one chunk.
    if chunk_s is None:
        per_window = len(requests) / n_windows
        k_chunk = 1
        while k_chunk * 2 * per_window <= CHUNK_REQUESTS and k_chunk < n_windows:
            k_chunk *= 2
    elif math.isinf(chunk_s):
        k_chunk = _pow2_at_least(n_windows)
    else:
        k_chunk = 1
        while k_chunk * 2 * window_s <= chunk_s + 1e-9:
            k_chunk *= 2
    if k_chunk >= n_windows:
        k_chunk = _pow2_at_least(n_windows)
    window_of = np.minimum((arr_a // window_s).astype(np.int64), n_windows - 1)
    chunk_of = window_of // k_chunk
    order = np.argsort(chunk_of, kind="stable")
    bounds = np.searchsorted(chunk_of[order], np.arange(int(chunk_of.max()) + 2 if n_vars else 1))
    chunks = tuple(Chunk(first_window=c * k_chunk, cols=order[bounds[c]:bounds[c + 1]])
                   for c in range(len(bounds) - 1) if bounds[c + 1] > bounds[c])
    return FluidProgramme(
        requests=len(requests), request_of=np.frombuffer(req_of, dtype=np.int64) if n_vars else np.zeros(0, np.int64),
        substrate_of=np.frombuffer(sub_of, dtype=np.int64) if n_vars else np.zeros(0, np.int64),
        usage_cost=np.frombuffer(cost, dtype=float) if n_vars else np.zeros(0),
        effective=np.frombuffer(eff, dtype=float) if n_vars else np.zeros(0),
        prefill=np.frombuffer(prefill, dtype=float) if n_vars else np.zeros(0), arrival=arr_a,
        d_e2e=np.frombuffer(d_e2e, dtype=float) if n_vars else np.zeros(0),
        d_ttft=np.frombuffer(d_ttft, dtype=float) if n_vars else np.zeros(0),
        tokens=np.frombuffer(tokens, dtype=float) if n_vars else np.zeros(0),
        chunks=chunks, chunk_windows=k_chunk, n_windows=n_windows, horizon_s=horizon,
        e2e_deadlines=tuple(sorted({float(d) for d in np.unique(np.frombuffer(d_e2e, dtype=float))})) if n_vars else (),
        ttft_deadlines=tuple(sorted({float(d) for d in np.unique(np.frombuffer(d_ttft, dtype=float))})) if n_vars else (),
        caps=tuple(p.max_concurrency for p in physics), lanes=tuple(prefill_slots(p) for p in physics),
        rate_limits=tuple((s.requests_per_minute, s.tokens_per_minute) for s in subs),
        fixed_cost_usd=fixed_cost_usd(fleet, span_s), window_s=window_s,
        build_s=time.perf_counter() - t_build, first_token_rows=first_token_rows,
    )


def chunk_lp(programme: FluidProgramme, chunk: Chunk) -> tuple[csr_matrix, np.ndarray]:
    """One chunk's rows (module docstring) over its own pairs, in the order of ``chunk.cols``:
    capacity and rate-limit rows, then one row per request. Built when solved, not kept (the
    matrices of every chunk at once are what did not fit)."""
    p = programme
    sel = chunk.cols
    sub, arr, eff, pre = p.substrate_of[sel], p.arrival[sel], p.effective[sel], p.prefill[sel]
    de, dt, tok = p.d_e2e[sel], p.d_ttft[sel], p.tokens[sel]
    n_vars = sel.size
    window_s, n_windows, k_chunk = p.window_s, p.n_windows, p.chunk_windows
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    rhs: list[np.ndarray] = []
    next_row = 0

    def add_block(mask: np.ndarray, group: np.ndarray, coef: np.ndarray | float, limit: float) -> None:
        # one row per group (interval) that has a term of this chunk; rows without terms hold trivially
        nonlocal next_row
        idx = np.nonzero(mask)[0]
        if idx.size == 0:
            return
        groups, inv = np.unique(group[idx], return_inverse=True)
        rows.append(next_row + inv)
        cols.append(idx)
        vals.append(coef[idx] if isinstance(coef, np.ndarray) else np.full(idx.size, coef))
        rhs.append(np.full(groups.size, limit))
        next_row += groups.size

    deadlines, ttft_deadlines = p.e2e_deadlines, p.ttft_deadlines
    for s_idx in np.unique(sub):
        on_s = sub == s_idx
        cap = p.caps[s_idx]
        k = 1
        while k <= k_chunk:  # blocks longer than a chunk are dropped (a relaxation)
            block = k * window_s
            n_blocks = max(1, math.ceil(n_windows / k))
            j = np.minimum((arr // block).astype(np.int64), n_blocks - 1)
            for d in deadlines:
                end = (j + 1) * block + d
                add_block(on_s & (arr + de <= end + 1e-9), j, eff, cap * (block + d))
            if k >= n_windows:
                break
            k *= 2
        if p.first_token_rows:
            lanes = p.lanes[s_idx]
            w = max(ttft_deadlines[0], 1e-3)
            while w < window_s:
                n_w = max(1, math.ceil((p.horizon_s + 1e-9) / w))
                j = np.minimum((arr // w).astype(np.int64), n_w - 1)
                for d in ttft_deadlines:
                    mask = on_s & (dt <= d + 1e-9)
                    end = (j + 1) * w + d
                    coef = pre + np.minimum(eff - pre, np.maximum(0.0, end - arr - dt))
                    add_block(mask, j, coef, cap * (w + d))
                    if lanes < cap:
                        add_block(mask, j, pre, lanes * (w + d))
                w *= 2
        rpm, tpm = p.rate_limits[s_idx]
        if rpm is not None or tpm is not None:
            j = np.minimum((arr // window_s).astype(np.int64), n_windows - 1)
            for d in ttft_deadlines:
                mask = on_s & (dt <= d + 1e-9)
                allowance = 1.0 + (window_s + d) / 60.0
                if rpm is not None:
                    add_block(mask, j, 1.0, rpm * allowance)
                if tpm is not None:
                    add_block(mask, j, tok, tpm * allowance)
    # Each request at most once.
    add_block(np.ones(n_vars, dtype=bool), np.unique(p.request_of[sel], return_inverse=True)[1], 1.0, 1.0)
    a_ub = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(next_row, n_vars)).tocsr()
    return a_ub, np.concatenate(rhs)


def lp_method(a) -> str:
    """HiGHS's dual simplex below ``IPM_FROM_NONZEROS`` non-zeros of the rows, its interior point
    (with crossover) from there (module docstring)."""
    return "highs-ds" if a.nnz < IPM_FROM_NONZEROS else "highs-ipm"


def _linprog(objective: np.ndarray, a, b: np.ndarray):
    res = linprog(objective, A_ub=a, b_ub=b, bounds=(0.0, 1.0), method=lp_method(a))
    if res.status != 0:
        raise BoundError(f"the bound's LP did not solve: {res.message}")
    return res


def _with_sum_row(a, b: np.ndarray, target: float):
    """The rows plus sum x >= target (as -sum x <= -target)."""
    return vstack([a, csr_matrix(-np.ones((1, a.shape[1])))]).tocsr(), np.append(b, -target)


def _chunk_max(programme: FluidProgramme, chunk: Chunk) -> float:
    """The chunk's most met. With several chunks the max LP breaks ties towards cheap pairs
    (objective sum (TIE * cost / max cost - 1) x, module docstring): its value V gives
    max <= V / (1 - TIE), returned (an upper bound, above the exact max by at most TIE of it), and
    its solution is a feasible point at (nearly) the max paying (nearly) the least there, and its
    duals a line below phi_c at slope top / TIE: the least cost's first bracket at the max,
    without another LP."""
    if "max" not in chunk.memo:
        a, b = chunk_lp(programme, chunk)
        chunk.memo["rows"] = a.shape[0]
        cost = programme.usage_cost[chunk.cols]
        top = float(cost.max()) if cost.size else 0.0
        if len(programme.chunks) == 1 or top <= 0.0:
            res = _linprog(-np.ones(a.shape[1]), a, b)
            chunk.memo["max"] = float(-res.fun)
        else:
            res = _linprog(TIE * cost / top - 1.0, a, b)
            # never above the chunk's requests that have a pair (each counts once)
            chunk.memo["max"] = min(max(float(res.x.sum()), float(-res.fun) / (1.0 - TIE)),
                                    float(np.unique(programme.request_of[chunk.cols]).size))
            # (TIE / top) (cost - price): a price LP at price top / TIE, whose duals give a line
            price = top / TIE
            chunk.memo["max_line"] = (price, _dual_floor(a, b, cost - price, res, top / TIE))
        chunk.memo["max_point"] = (float(res.x.sum()), float(cost @ res.x))
    return chunk.memo["max"]


def max_met(programme: FluidProgramme) -> float:
    """The most requests (fluid) that can meet their deadlines: each chunk's most, summed."""
    if "max" not in programme.memo:
        programme.memo["max"] = float(sum(_chunk_max(programme, c) for c in programme.chunks))
    return programme.memo["max"]


def _chunk_free(programme: FluidProgramme, chunk: Chunk) -> float:
    if "free" not in chunk.memo:
        free = programme.usage_cost[chunk.cols] <= 0.0
        if not free.any():
            chunk.memo["free"] = 0.0
        elif free.all() and "max" in chunk.memo:
            chunk.memo["free"] = chunk.memo["max"]
        else:
            a, b = chunk_lp(programme, chunk)
            cols = np.nonzero(free)[0]
            chunk.memo["free"] = float(-_linprog(-np.ones(cols.size), a.tocsc()[:, cols], b).fun)
    return chunk.memo["free"]


def free_met(programme: FluidProgramme, target: float) -> float | None:
    """The most requests (fluid) that can meet their deadlines on pairs of no usage cost (reserved
    hardware in the ingress's region: paid whether it serves or not), solved once per programme
    (chunk by chunk, summed); None, without solving, when fewer than ``target`` requests have such
    a pair at all."""
    free = programme.usage_cost <= 0.0
    if "free" not in programme.memo and free.all() and "max" in programme.memo:
        programme.memo["free"] = programme.memo["max"]
    if "free" not in programme.memo:
        if np.unique(programme.request_of[free]).size < target:
            return None
        programme.memo["free"] = float(sum(_chunk_free(programme, c) for c in programme.chunks))
    return programme.memo["free"]


def least_cost_usd(programme: FluidProgramme, met: float) -> float:
    """The least total cost (fixed + usage) at which ``met`` requests meet their deadlines; across
    chunks, a lower bound within ``COST_GAP`` of the total of the chunked programme's exact one (module
    docstring; the gap reached is in ``programme.memo["cost_gap"]``).

    Usage costs are never negative, so the least cost is at least the fixed cost; where that many
    requests can meet their deadlines on pairs of no usage cost (``free_met``, a smaller LP solved
    once per programme), it is exactly the fixed cost and the least-cost LP (the slowest of the
    bound's: 33-391 s against 30-67 s for the max on the suite's full or large cells) is not solved."""
    programme.memo["cost_gap"] = 0.0
    if programme.pairs == 0 or met <= 0:
        return programme.fixed_cost_usd
    # A hair under the target: the solver's tolerance must not make the bound's own optimum infeasible.
    target = met * (1.0 - 1e-7) - 1e-6
    if len(programme.chunks) > 1:
        # every chunk at its most met, as its max LP solved it: feasible, so its usage is >= the chunked
        # least usage at any target up to the max; where that is within COST_GAP, no cost LP is solved
        max_met(programme)
        high = sum(c.memo["max_point"][1] for c in programme.chunks)
        if high <= COST_GAP * (programme.fixed_cost_usd + high):
            programme.memo["cost_gap"] = high
            return programme.fixed_cost_usd
        # what the programme already knows (other attainments' prices) may bracket it: then neither
        # the free pairs' LPs (137 s on fleet-64 x azure-conv x4 whole) nor a price LP is solved
        low, high = _least_usage_across_chunks(programme, target, solve=False)
        if high - low <= COST_GAP * (programme.fixed_cost_usd + high) + 1e-12:
            programme.memo["cost_gap"] = high - low
            return programme.fixed_cost_usd + low
    if programme.usage_cost.min() >= 0.0:
        free = free_met(programme, target)
        if free is not None and free >= target:
            return programme.fixed_cost_usd
    if len(programme.chunks) == 1:
        chunk = programme.chunks[0]
        a, b = _with_sum_row(*chunk_lp(programme, chunk), target)
        res = _linprog(programme.usage_cost[chunk.cols], a, b)
        return programme.fixed_cost_usd + float(res.fun)
    low, high = _least_usage_across_chunks(programme, target)
    programme.memo["cost_gap"] = high - low
    return programme.fixed_cost_usd + low


# -- the least cost across chunks: the sandwich of phi_c (module docstring) -------------------------


def _dual_floor(a, b: np.ndarray, objective: np.ndarray, res, scale: float = 1.0) -> float:
    """A lower bound on min objective . x over A x <= b, 0 <= x <= 1 from the solver's duals
    (``scale``: the solved objective was ``objective / scale``): for any y >= 0 (weak duality, the
    box kept), min >= -b . y + sum_j min(0, objective_j + (A^T y)_j). Valid whatever the solver's
    tolerance, so a line through it lies below phi_c."""
    y = np.maximum(0.0, -np.asarray(res.ineqlin.marginals, dtype=float)) * scale
    return float(-(b @ y) + np.minimum(0.0, objective + a.T @ y).sum())


def _at_price(programme: FluidProgramme, chunk: Chunk, price: float) -> tuple[float, float, float]:
    """min (usage_cost - price) . x over the chunk alone: (sum x, usage_cost . x) at the optimum,
    and a lower bound on that min from its duals (``_dual_floor``)."""
    a, b = chunk_lp(programme, chunk)
    cost = programme.usage_cost[chunk.cols]
    res = _linprog(cost - price, a, b)
    programme.memo["price_lps"] = programme.memo.get("price_lps", 0) + 1
    return float(res.x.sum()), float(cost @ res.x), _dual_floor(a, b, cost - price, res)


def _envelope(lines: set[tuple[float, float]], upto: float) -> list[tuple[float, float]]:
    """Pieces (length, slope) on [0, upto] of the upper envelope of ``lines`` (slope, value at 0)
    and y = 0 (usage costs are never negative), in order; its value at 0 is 0."""
    hull: list[tuple[float, float]] = []
    for s, b in sorted(lines | {(0.0, 0.0)}):
        if hull and hull[-1][0] == s:
            hull.pop()  # same slope: the larger value at 0 (sorted last) wins
        while len(hull) >= 2:
            (s1, b1), (s2, b2) = hull[-2], hull[-1]
            if (b1 - b) * (s2 - s1) <= (b1 - b2) * (s - s1):  # the new line overtakes s1 before s2 does
                hull.pop()
            else:
                break
        hull.append((s, b))
    pieces = []
    x = 0.0
    for i, (s, b) in enumerate(hull):
        end = upto if i + 1 == len(hull) else min(upto, (b - hull[i + 1][1]) / (hull[i + 1][0] - s))
        if end > x:
            pieces.append((end - x, s))
            x = end
    return pieces


def _hull(points: dict[float, float]) -> list[tuple[float, float]]:
    """The vertices, from (0, 0), of the least convex non-decreasing function through or below the
    points (mu -> usage of a feasible x): a point serves any smaller mu too (sum x >= mu still holds),
    so one with a cheaper point to its right is dropped, and a mix of two points is feasible, so the
    chords of the lower convex hull of the rest are. Solver tolerance and the max LPs' near-cheapest
    points leave points above it."""
    kept: list[tuple[float, float]] = []
    for mu in sorted(points, reverse=True):
        if mu > 0.0 and (not kept or points[mu] < kept[-1][1]):
            kept.append((mu, points[mu]))
    hull = [(0.0, 0.0)]
    for mu, y in reversed(kept):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (mu - x1) >= (y - y1) * (x2 - x1):  # hull[-1] on or above the chord to here
                hull.pop()
            else:
                break
        hull.append((mu, y))
    return hull


def _chords(points: dict[float, float]) -> list[tuple[float, float, float, float]]:
    """Pieces (start, end, slope, usage at start) of the chords of ``_hull(points)``."""
    hull = _hull(points)
    return [(x0, x1, (y1 - y0) / (x1 - x0), y0) for (x0, y0), (x1, y1) in pairwise(hull)]


def _greedy(pieces: list[list[tuple[float, float]]], target: float) -> tuple[float, list[float]]:
    """The least sum of convex piecewise-linear functions (each a list of (length, slope) from 0 at
    mu = 0) at sum mu >= target: pieces taken in order of slope, each function's in its own order
    (a heap, so chords made slightly non-convex by the solver's tolerance stay feasible). Returns
    (value, mu per function); value inf where the pieces do not reach the target."""
    alloc = [0.0] * len(pieces)
    heap = [(ps[0][1], c, 0) for c, ps in enumerate(pieces) if ps]
    heapq.heapify(heap)
    value, need = 0.0, target
    while need > 0.0 and heap:
        slope, c, i = heapq.heappop(heap)
        take = min(pieces[c][i][0], need)
        value += take * slope
        alloc[c] += take
        need -= take
        if i + 1 < len(pieces[c]):
            heapq.heappush(heap, (pieces[c][i + 1][1], c, i + 1))
    return (value if need <= 1e-9 * max(1.0, target) else math.inf), alloc


def _envelope_min(lines: set[tuple[float, float]], price: float, upto: float) -> float:
    """min over mu in [0, upto] of env(mu) - price * mu, env the upper envelope of ``lines`` and y = 0
    (``_envelope``): a lower bound on the chunk's min (usage_cost - price) . x, known without an LP."""
    value = best = 0.0
    for length, slope in _envelope(lines, upto):
        value += length * (slope - price)
        best = min(best, value)
    return best


def _price_response(programme: FluidProgramme, chunk: Chunk, price: float, slack: float) -> tuple[float, float, float]:
    """(sum x, usage, a lower bound on min (usage_cost - price) . x) for one chunk at one price: from
    what the chunk already knows where that is within ``slack`` of the min (a known point's value,
    usage - price * mu, against the envelope's lower bound: then no LP), else from a price LP, whose
    point and line the chunk keeps."""
    points, lines = chunk.memo["points"], chunk.memo["lines"]
    mu, usage = min([(0.0, 0.0), *points.items()], key=lambda p: p[1] - price * p[0])
    floor = _envelope_min(lines, price, _chunk_max(programme, chunk))
    if usage - price * mu - floor <= slack:
        return mu, usage, floor
    mu, usage, floor = _at_price(programme, chunk, price)
    lines.add((price, floor))
    if usage < points.get(mu, math.inf):
        points[mu] = usage
    return mu, usage, floor


def _least_usage_across_chunks(programme: FluidProgramme, target: float, *, solve: bool = True) -> tuple[float, float]:
    """(lower, upper): the chunked least usage cost at sum x >= target lies between them, and
    upper - lower <= COST_GAP * (fixed + upper) unless the rounds run out (module docstring);
    ``solve`` False: from what is known, no LP."""
    chunks = [c for c in programme.chunks if c.cols.size]
    for c in chunks:
        if "points" not in c.memo:
            _chunk_max(programme, c)
            # points (mu -> usage of a feasible x: on phi_c or above it) span the chords; lines
            # (slope, value at 0) lie below phi_c. The max LP's solution is a point; the free
            # pairs' most is a point on phi_c (0 up to there, the line y = 0 is always in)
            met, usage = c.memo["max_point"]
            c.memo["points"] = {met: usage}
            c.memo["lines"] = {c.memo["max_line"]} if "max_line" in c.memo else set()
        free = c.memo.get("free", 0.0)  # solved (``free_met``) after the first call, maybe
        if 0.0 < free < c.memo["max_point"][0]:
            c.memo["points"][free] = 0.0
    # The chords end at the max LPs' points, which may lie a hair (TIE) below the target: the least
    # cost is non-decreasing in the target, so bracketing it at min(target, their sum) still bounds
    # the target's from below.
    top = sum(c.memo["max_point"][0] for c in chunks)
    target = min(target, top)
    # Points of Phi, the chunks' least cost summed at one price (their infimal convolution): the
    # prices solved so far, for every target of this programme
    agg = programme.memo.setdefault("phi_points", {})
    if not agg:
        agg[0.0] = 0.0
        agg[top] = sum(c.memo["max_point"][1] for c in chunks)
    agg[sum(min(c.memo.get("free", 0.0), c.memo["max_point"][0]) for c in chunks)] = 0.0
    prices = programme.memo.setdefault("phi_prices", set())
    low, high = 0.0, math.inf
    for _ in range(_MAX_REFINE_ROUNDS):
        low, _ = _greedy([_envelope(c.memo["lines"], _chunk_max(programme, c)) for c in chunks], target)
        high, _ = _greedy([[(end - start, s) for start, end, s, _ in _chords(c.memo["points"])] for c in chunks],
                          target)
        allowed = COST_GAP * (programme.fixed_cost_usd + high)
        if high - low <= allowed + 1e-12 or not solve:
            break
        # the chord of Phi's points around the target: its slope is the next price (the sandwich
        # method on Phi); solving there either adds a point of Phi below that chord or shows the
        # chord is Phi (the price is then one already solved)
        chords = _chords(agg)
        price = next((ch for ch in chords if ch[1] >= target), chords[-1])[2]
        if price in prices:
            break
        prices.add(price)
        slack = allowed / (8 * len(chunks))
        total_mu = total_usage = 0.0
        for c in chunks:
            mu, usage, _ = _price_response(programme, c, price, slack)
            total_mu += mu
            total_usage += usage
        if total_usage < agg.get(total_mu, math.inf):
            agg[total_mu] = total_usage
    return low, max(low, high)


def solve_bound(programme: FluidProgramme, *, cost: bool = True) -> Bound:
    """The best attainment, and (``cost``) the least cost at it; without, ``cost_usd`` is None and
    only the max LPs are solved (the loose bound of a suite's cell, where only its attainment is
    read: the least-cost LP is the slower of the two)."""
    t = time.perf_counter()
    met = max_met(programme)
    cost = least_cost_usd(programme, met) if cost else None
    return Bound(
        sla_attainment=met / programme.requests if programme.requests else 0.0, met=met, cost_usd=cost,
        fixed_cost_usd=programme.fixed_cost_usd, requests=programme.requests, pairs=programme.pairs,
        constraints=sum(c.memo.get("rows", 0) for c in programme.chunks), window_s=programme.window_s,
        solve_s=time.perf_counter() - t + programme.build_s, first_token_rows=programme.first_token_rows,
        chunks=len(programme.chunks), chunk_s=programme.chunk_s if len(programme.chunks) > 1 else math.inf,
        cost_gap_usd=programme.memo.get("cost_gap") if cost is not None else None,
    )
