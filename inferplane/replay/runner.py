"""A whole replay: scenario + trace -> workload -> one simulation per router -> bound -> report.

``replay(options)`` returns the report (plain JSON-able data) and the simulation results (for
plots). Every router runs on its own ``Simulator`` over the same workload and the same seeded
physics, so the only difference between two runs is the router.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace

from inferplane.config import BuiltConfig
from inferplane.config.sizing import plane_autoscaled
from inferplane.replay.baselines import BASELINES, COMPLIANT, COMPLIANT_VARIANTS, baseline
from inferplane.replay.bound import DEFAULT_WINDOW_S, build_programme, least_cost_usd, solve_bound
from inferplane.replay.drift_timeline import drift_section
from inferplane.replay.fidelity import compare, measured_shapes
from inferplane.replay.live import LiveOptions, run_live
from inferplane.replay.outcome import fixed_cost_usd
from inferplane.replay.plane_router import PlaneRouter
from inferplane.replay.prefix_oracle import PrefixOracle
from inferplane.replay.report import run_report
from inferplane.replay.scenario import Event, MismatchSpec, Scenario, load_scenario
from inferplane.replay.simulator import SimulationResult, Simulator
from inferplane.replay.substrate_physics import mismatch_events, physics_for, prefix_cache_for
from inferplane.replay.trace import load_trace
from inferplane.replay.workload import ReplayRequest, build_workload, drop_tenants, parse_tenants, validate_spec
from inferplane.placement.fleet import PrefixCacheSpec
from substrate_adapters.physics import PhysicsModel

PLANE = "inferplane"
PLANE_NO_PREFIX = "inferplane-no-prefix"
"""The plane with the same policy but no prefix-cache belief (no hit predicted, no prefix credit):
asked for by name, not part of ``all``."""
PLANE_PREFIX_ORACLE = "inferplane-prefix-oracle"
"""Not a router anyone can run: the plane whose prefix belief is the simulator's caches
(``prefix_oracle.PrefixOracle``), everything else identical; the ceiling of prefix affinity given
perfect knowledge. Asked for by name, not part of ``all``."""
PLANE_VARIANTS = (PLANE, PLANE_NO_PREFIX, PLANE_PREFIX_ORACLE)
ROUTERS = (PLANE, *BASELINES, *COMPLIANT_VARIANTS)


def jurisdiction_routes(router: str) -> str:
    """How a router keeps tenants inside their jurisdictions: ``policy`` (the plane's hard filter),
    ``per tenant`` (a gateway configured with per-tenant endpoint lists) or ``none`` (a gateway as
    deployed, over every endpoint serving the model)."""
    if router in PLANE_VARIANTS:
        return "policy"
    return "per tenant" if router in COMPLIANT else "none"


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    scenario: str
    trace: str
    routers: tuple[str, ...] = ROUTERS
    format: str | None = None
    time_scale: float | None = None
    rate_scale: float | None = None
    limit: int | None = None
    seed: int | None = None
    tenants: str | None = None
    without_tenants: tuple[str, ...] = ()
    """Tenants whose requests are dropped; every other request stays as in the full workload."""
    events: tuple[Event, ...] = ()
    bound: bool = True
    window_s: float = DEFAULT_WINDOW_S
    progress: bool = False
    drift: bool = False
    """Feed the plane's drift detector and report its flags (``replay.drift_timeline``); on by
    itself when a fault is injected. Off, the replay skips the detector's cost (about a third of
    the inferplane router's run)."""
    loose_cost: bool = True
    """Solve the loose bound's least cost too (False: its attainment only, as a suite reads it)."""
    mismatch: bool | None = None
    """Draw the true physics around the declared profiles (``simulation.mismatch``; on without one:
    its defaults); None: as the scenario says."""


@dataclass(frozen=True, slots=True)
class Prepared:
    scenario: Scenario
    requests: tuple[ReplayRequest, ...]
    physics: tuple[PhysicsModel, ...]
    events: tuple[Event, ...]
    trace_rows: int
    prefix_caches: tuple[PrefixCacheSpec | None, ...] | None = None
    """Each substrate's real prefix caches (``substrate_physics.prefix_cache_for``); None: as declared."""
    replica_start_s: tuple[float, ...] | None = None
    """Each substrate's replica start delay (``simulation.replica_start_s``, or its ``physics``'
    own); None: 0 s."""


def parse_routers(text: str) -> tuple[str, ...]:
    """``all``, one name, or a comma-separated list."""
    if text == "all":
        return ROUTERS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ROUTERS and n not in PLANE_VARIANTS]
    if unknown or not names:
        raise ValueError(f"unknown router {', '.join(unknown) or '(none)'}; routers: all, {', '.join(ROUTERS)}, "
                         f"{PLANE_NO_PREFIX}, {PLANE_PREFIX_ORACLE}")
    return names


def fair_shares(built: BuiltConfig) -> dict[str, float]:
    """Each tenant's fair-share weight, as the config gives it (``tenants[].share``)."""
    return {name: t.share for name, t in built.policy.tenants.items()}


def prepare(options: ReplayOptions, scenario: Scenario | None = None) -> Prepared:
    """``scenario``: ``options.scenario`` already loaded (a suite loads each of its files once)."""
    scenario = load_scenario(options.scenario) if scenario is None else scenario
    built = scenario.built
    names = {s.name for s in built.fleet.substrates}
    for e in options.events:
        if e.substrate not in names:
            raise ValueError(f"event on unknown substrate `{e.substrate}`; substrates: {', '.join(sorted(names))}")
    spec = scenario.workload
    changes: dict = {}
    if options.seed is not None:
        changes["seed"] = options.seed
    if options.tenants is not None:
        changes["tenants"] = parse_tenants(options.tenants, spec.tenants)
    if options.time_scale is not None:
        changes["time_scale"] = options.time_scale
    if options.rate_scale is not None:
        changes["rate_scale"] = options.rate_scale
    spec = replace(spec, **changes)
    validate_spec(spec, built.policy, frozenset(built.fleet.models))
    rows = load_trace(options.trace, options.format or scenario.trace.format,
                      options.limit if options.limit is not None else scenario.trace.limit)
    requests = build_workload(rows, spec, built.policy)
    if options.without_tenants:
        unknown = [t for t in options.without_tenants if t not in built.policy.tenants]
        if unknown:
            raise ValueError(f"--without-tenant {', '.join(unknown)}: not a tenant of the config; tenants: "
                             f"{', '.join(built.policy.tenants)}")
        requests = drop_tenants(requests, options.without_tenants)
    sim = scenario.simulation
    mismatch = sim.mismatch if options.mismatch is None else (sim.mismatch or MismatchSpec()) if options.mismatch else None
    physics = tuple(
        physics_for(s, i, jitter_ratio=sim.jitter_ratio, seed=spec.seed, override=sim.physics.get(s.name),
                    mismatch=mismatch)
        for i, s in enumerate(built.config.substrates))
    drawn = () if mismatch is None or not requests else mismatch_events(
        tuple(s.name for s in built.config.substrates), mismatch,
        spec.seed if mismatch.seed is None else mismatch.seed, requests[-1].arrival_s)
    caches = tuple(prefix_cache_for(s, built.fleet.substrates[i].prefix_cache, sim.physics.get(s.name))
                   for i, s in enumerate(built.config.substrates))
    starts = tuple(sim.replica_start_s if sim.physics.get(s.name) is None or sim.physics[s.name].replica_start_s
                   is None else sim.physics[s.name].replica_start_s for s in built.config.substrates)
    scenario = replace(scenario, workload=spec)
    return Prepared(scenario, requests, physics, scenario.events + options.events + drawn, len(rows), caches, starts)


def simulate(prepared: Prepared, router_name: str, *, progress: bool = False, drift: bool = False) -> SimulationResult:
    scenario = prepared.scenario
    built = scenario.built
    sim = Simulator(built, prepared.physics, prepared.requests, prepared.events,
                    sample_interval_s=scenario.simulation.sample_interval_s, prefix_caches=prepared.prefix_caches,
                    replica_start_s=prepared.replica_start_s)
    if router_name in PLANE_VARIANTS:
        oracle = PrefixOracle(sim.substrates) if router_name == PLANE_PREFIX_ORACLE else None
        router = PlaneRouter(built, sim.loads(), heartbeat_s=scenario.simulation.heartbeat_ms / 1000.0,
                             start_s=sim.start_s, drift=drift, prefix_affinity=router_name != PLANE_NO_PREFIX,
                             prefix_belief=oracle)
        if oracle is not None:
            router.name = PLANE_PREFIX_ORACLE
    else:
        router = baseline(router_name, built, scenario.baselines)
    result = _run(sim, router, prepared, router_name, progress)
    if isinstance(router, PlaneRouter) and router.scaling:
        result = replace(result, scaling=tuple(
            {"at_s": t - (prepared.requests[0].arrival_s if prepared.requests else 0.0), "substrate": n,
             "target": k, "reason": why} for t, n, k, why in router.scaling))
    if isinstance(router, PlaneRouter) and router.drift is not None:
        drift = router.drift
        result = replace(result, drift=drift_section(drift.spans(), drift.settings, router.drift_penalty_requested,
                                                     result.outcomes, result.substrates, prepared.events))
    return result


def _run(sim: Simulator, router, prepared: Prepared, router_name: str, progress: bool) -> SimulationResult:
    if not progress:
        return sim.run(router)
    from tqdm import tqdm

    first = prepared.requests[0].arrival_s
    total = prepared.requests[-1].arrival_s - first
    with tqdm(total=round(total), desc=f"{router_name:>17}", unit="sim s", file=sys.stderr, leave=True,
              dynamic_ncols=True, mininterval=0.5) as bar:
        def step(now: float) -> None:
            done = min(round(total), max(0, round(now - first)))
            if done > bar.n:
                bar.update(done - bar.n)
        result = sim.run(router, step)
        bar.update(max(0, round(total) - bar.n))
    return result


def replay(options: ReplayOptions, scenario: Scenario | None = None) -> tuple[dict, tuple[SimulationResult, ...]]:
    """``scenario``: ``options.scenario`` already loaded (``prepare``)."""
    t_all = time.perf_counter()
    prepared = prepare(options, scenario)
    scenario = prepared.scenario
    built = scenario.built
    drift = options.drift or bool(prepared.events)
    results = tuple(simulate(prepared, name, progress=options.progress, drift=drift) for name in options.routers)
    span = results[0].span_s if results else 0.0
    fixed = fixed_cost_usd(built.fleet, span)
    shares = fair_shares(built)
    elastic = plane_autoscaled(built.config)
    runs = [run_report(r, fixed_cost_usd(built.fleet, span, _elastic_replica_s(r, elastic)) if elastic else fixed,
                       prepared.requests, shares) for r in results]
    for run, result in zip(runs, results):
        if elastic:
            run["replica_seconds"] = {n: rs for n, rs in zip(result.substrates, result.replica_s) if rs is not None}
            run["scaling"] = result.scaling
        run["jurisdiction_routes"] = jurisdiction_routes(result.router)
        if result.drift is not None:
            run["drift"] = result.drift
    bound_out = None
    if options.bound:
        if options.progress:
            print("solving the bound (fluid LP, HiGHS)...", file=sys.stderr)
        programme = build_programme(built, prepared.physics, prepared.requests, prepared.events,
                                    span_s=span, window_s=options.window_s, prefix_caches=prepared.prefix_caches)
        bound = solve_bound(programme)
        bound_out = bound.to_dict()
        loose = solve_bound(build_programme(built, prepared.physics, prepared.requests, prepared.events,
                                            span_s=span, window_s=options.window_s,
                                            prefix_caches=prepared.prefix_caches, first_token_rows=False),
                            cost=options.loose_cost)
        bound_out["loose"] = loose.to_dict()
        floors = {bound.met: bound.cost_usd}
        for run in runs:
            floor = _floor(programme, bound, min(run["met_sla"], bound.met), floors)
            run["bound_fraction"] = {
                "sla": run["sla_attainment"] / bound.sla_attainment if bound.sla_attainment > 0 else None,
                "cost": floor / run["cost_usd"] if run["cost_usd"] > 0 else None,
                "least_cost_at_this_attainment_usd": floor,
            }
    report = _header(options, prepared, span)
    report.update(runs=runs, bound=bound_out, wall_time_s=time.perf_counter() - t_all)
    return report, results


def _floor(programme, bound, met: float, known: dict[float, float]) -> float:
    """The least cost at which ``met`` requests meet their deadlines, solved once per distinct
    ``met`` of a cell (``known``: met -> cost; the bound's own is solved with it). The least cost
    is nondecreasing in ``met``, from the fixed cost at 0 to ``bound.cost_usd`` at ``bound.met``:
    where that whole range is within a relative 1e-6 (no usage to trade: every deadline met on
    hardware paid anyway), the fixed cost is the floor (a lower bound, off by at most that) and no
    LP is solved."""
    if met not in known:
        if bound.cost_usd - programme.fixed_cost_usd <= 1e-6 * max(bound.cost_usd, 1e-9):
            known[met] = programme.fixed_cost_usd
        else:
            known[met] = least_cost_usd(programme, met)
    return known[met]


def _elastic_replica_s(result: SimulationResult, elastic: frozenset[str]) -> dict[str, float]:
    """Billed replica-seconds of the autoscaled substrates in one run (``outcome.fixed_cost_usd``)."""
    return {n: rs for n, rs in zip(result.substrates, result.replica_s) if n in elastic}


def _header(options: ReplayOptions, prepared: Prepared, span: float) -> dict:
    scenario = prepared.scenario
    built = scenario.built
    spec = scenario.workload
    return {
        "scenario": scenario.path,
        "config": scenario.config_path,
        "policy_hash": built.policy.policy_hash,
        "description": scenario.description,
        "trace": {
            "path": options.trace, "format": options.format or scenario.trace.format or "from suffix",
            "rows": prepared.trace_rows, "requests": len(prepared.requests),
            "span_s": span, "time_scale": spec.time_scale, "rate_scale": spec.rate_scale,
            "load_factor": spec.load_factor,
            "offered_rps": len(prepared.requests) / span if span > 0 else None,
        },
        "workload": {
            "model": spec.model, "seed": spec.seed,
            "tenants": [{"name": t.tenant, "share": t.share, "sla_classes": dict(t.sla_mix) or "default",
                         "bursts": [{"start_s": b.start_s, "duration_s": b.duration_s,
                                     "rate_multiplier": b.rate_multiplier} for b in t.bursts]}
                        for t in spec.tenants],
            "without_tenants": list(options.without_tenants),
            "max_tokens": {"rule": spec.max_tokens.rule, "tokens": spec.max_tokens.tokens},
        },
        "events": [{"kind": e.kind.value, "substrate": e.substrate, "at_s": e.at_s, "for_s": e.for_s,
                    "value": e.value} for e in prepared.events],
    }


def replay_live(options: ReplayOptions, live: LiveOptions) -> tuple[dict, tuple[SimulationResult, ...]]:
    """Send the workload through the plane at ``live.target`` (``inferplane.replay.live``), then
    simulate the same requests with the shapes they really had and compare
    (``inferplane.replay.fidelity``). Runs: the live one, then the simulated one."""
    t_all = time.perf_counter()
    if options.routers not in (ROUTERS, (PLANE,)):
        raise ValueError("a live replay measures the running plane: --router applies to simulated replays only")
    prepared = prepare(options)
    if prepared.events:
        raise ValueError("a live replay cannot inject faults (outage, failure rate, slowdown) into a running "
                         "plane; drop the events or replay in simulation")
    built = prepared.scenario.built
    run = run_live(built, prepared.requests, live, progress=options.progress)
    shapes = measured_shapes(run)
    simulated = simulate(replace(prepared, requests=shapes), PLANE)
    simulated = replace(simulated, router=f"{PLANE} (simulated)")
    span = run.result.span_s
    fixed = fixed_cost_usd(built.fleet, span)
    shares = fair_shares(built)
    runs = [run_report(run.result, fixed, prepared.requests, shares), run_report(simulated, fixed, shapes, shares)]
    runs[0]["slot_utilisation"] = None  # a client cannot see slots; the plane's metrics can
    report = _header(options, prepared, span)
    report.update(
        runs=runs, bound=None,
        live={"target": live.target, "sent": len(run.requests), "not_sent": run.not_sent,
              "send_lag_p99_s": run.send_lag_p99_s,
              "max_in_flight": live.max_in_flight, "max_duration_s": live.max_duration_s},
        fidelity=compare(run, simulated, shapes),
        wall_time_s=time.perf_counter() - t_all)
    return report, (run.result, simulated)
