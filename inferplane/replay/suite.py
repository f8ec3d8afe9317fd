"""A scenario suite: many fleets x real traces x load levels, one replay per cell, one table.

``inferplane replay --suite configs/scenarios/suite/suite.yaml`` reads a suite file::

    suite_version: 1
    description: what the suite asks
    scenarios: [gpu-heavy.yaml, api-heavy.yaml]     # scenario files, relative to the suite file
    loads: [1, 4]                                   # rate scales (requests per trace row)
    traces:
      - {name: azure-conv, path: ../traces/AzureLLMInferenceTrace_conv.csv, format: azure}
      - {name: mooncake-conv, path: ../traces/mooncake_conversation_trace.jsonl, format: mooncake,
         loads: [1, 2]}                             # this trace's own loads (default: the suite's)

Its cells are every scenario x every trace x every load of that trace (x mismatch off / on, when
asked: ``simulation.mismatch``, ``inferplane.replay.substrate_physics``). Each cell is one
``runner.replay`` (the same code as ``inferplane replay SCENARIO --trace FILE``), so a cell's row
can be reproduced on its own with the command the JSON report gives for it.

Every cell judges one policy, the default: a scenario whose config sets a policy that differs
from the schema's defaults is refused (a policy tuned to a fleet would win on it and prove
nothing elsewhere).

Against the targets of issue #14 each cell says where the plane falls short (``shortfalls``):
deadlines met below 95 % of the bound's, below a compliant baseline's, dearer than a compliant
baseline within one point of its deadlines met, any sovereignty violation or unlogged spillover.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferplane.config import ConfigError, ConfigProblem
from inferplane.config.schema import Policy
from inferplane.replay.baselines import COMPLIANT, COMPLIANT_VARIANTS
from inferplane.replay.runner import PLANE, ReplayOptions, replay
from inferplane.replay.scenario import Scenario, load_scenario, read_yaml

SUITE_VERSION = 1
DEFAULT_ROUTERS = (PLANE, "ordered_fallback", "fifo_queue", *COMPLIANT_VARIANTS)
"""The plane and the compliant baselines: the comparison that counts."""
MISMATCH_MODES = ("off", "on", "both")

OF_BOUND_TARGET = 0.95
"""Deadlines met at least this fraction of the bound's (issue #14's target)."""
COST_SLA_POINTS = 0.01
"""A compliant baseline within this much of the plane's deadlines met (or above) must not be cheaper."""
COST_TOLERANCE = 1e-4
"""Costs closer than this (relative) are equal: the same reserved hardware over the same span."""
SPEED_TARGET = 2000.0
"""The plane's router simulates at least this many seconds per wall second in every cell (#14)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuiteTrace(_Strict):
    name: str = Field(description="Short name of the trace in the table.")
    path: str = Field(description="The trace file, relative to the suite file.")
    format: Literal["azure", "mooncake", "parquet"] | None = Field(
        default=None, description="Trace format; default: from the file suffix.")
    loads: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None, description="This trace's rate scales; default: the suite's `loads`.")


class SuiteFile(_Strict):
    suite_version: Literal[1] = Field(description="Version of the suite format; currently 1.")
    description: str = Field(default="", description="What the suite asks.")
    scenarios: Annotated[list[str], Field(min_length=1)] = Field(
        description="Scenario files (or plain configs), relative to the suite file.")
    traces: Annotated[list[SuiteTrace], Field(min_length=1)] = Field(description="The traces.")
    loads: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = Field(
        default_factory=lambda: [1.0], description="Rate scales (requests per trace row on average).")


@dataclass(frozen=True, slots=True)
class Cell:
    fleet: str
    """The scenario file's stem (``gpu-heavy``)."""
    scenario: str
    trace_name: str
    trace: str
    format: str | None
    load: float
    mismatch: bool = False

    @property
    def label(self) -> str:
        return f"{self.fleet} x {self.trace_name} x{self.load:g}" + (" mismatch" if self.mismatch else "")


@dataclass(frozen=True, slots=True)
class Suite:
    path: str
    description: str
    cells: tuple[Cell, ...]


def load_suite(path: str | Path, *, mismatch: str = "off") -> Suite:
    """The suite file's cells (``mismatch``: off, on or both), each scenario checked to load and to
    carry the default policy."""
    if mismatch not in MISMATCH_MODES:
        raise ValueError(f"--mismatch {mismatch}: one of {', '.join(MISMATCH_MODES)}")
    path = Path(path)
    doc = read_yaml(path)
    try:
        spec = SuiteFile.model_validate(doc if isinstance(doc, dict) else {})
    except ValidationError as exc:
        raise ConfigError(path, [ConfigProblem(tuple(e["loc"]), e["msg"].removeprefix("Value error, "))
                                 for e in exc.errors()]) from None
    problems: list[ConfigProblem] = []
    for i, name in enumerate(spec.scenarios):
        scenario = load_scenario(path.parent / name)
        if scenario.built.config.policy != Policy():
            problems.append(ConfigProblem(("scenarios", i), f"{scenario.config_path} sets a policy other than the "
                                          "default; every cell of a suite judges the default policy"))
    for i, t in enumerate(spec.traces):
        if not (path.parent / t.path).is_file():
            problems.append(ConfigProblem(("traces", i, "path"), f"no such file: {path.parent / t.path}"))
    if problems:
        raise ConfigError(path, problems)
    flags = {"off": (False,), "on": (True,), "both": (False, True)}[mismatch]
    cells = tuple(
        Cell(fleet=Path(name).stem, scenario=str(path.parent / name), trace_name=t.name,
             trace=str(path.parent / t.path), format=t.format, load=load, mismatch=flag)
        for name in spec.scenarios for t in spec.traces for load in (t.loads or spec.loads) for flag in flags)
    return Suite(str(path), spec.description, cells)


def run_suite(suite: Suite, *, routers: tuple[str, ...] = DEFAULT_ROUTERS, limit: int | None = None,
              bound: bool = True, progress: bool = False, jobs: int = 1) -> dict:
    """Replay every cell; the suite report (plain JSON-able data). ``jobs`` > 1: that many cells at
    a time in worker processes (each cell is independent and seeded, so its numbers are the same
    either way); the cells stay in the suite's order."""
    t_all = time.perf_counter()
    work = [(cell, routers, limit, bound) for cell in suite.cells]
    cells: list[dict] = []

    def done(n: int, summary: dict) -> None:
        cells.append(summary)
        if progress:
            speed, bound_s = summary["plane_replay_speed"], summary["bound_s"]
            print(f"[{n}/{len(work)}] {summary['label']}: {summary['requests']} requests, {summary['wall_time_s']:.0f} s"
                  + ("" if bound_s is None else f" (bound {bound_s:.0f} s)")
                  + ("" if speed is None else f", plane {speed:,.0f} sim s/s"), file=sys.stderr, flush=True)

    if jobs <= 1 or len(work) <= 1:
        for n, args in enumerate(work, 1):
            done(n, _run_cell(args))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # heaviest first would balance better, but the suite's order keeps the output deterministic:
        # map returns in submission order whatever the finishing order
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for n, summary in enumerate(pool.map(_run_cell, work), 1):
                done(n, summary)
    return {
        "suite": suite.path, "description": suite.description, "policy": "default (the schema's)",
        "routers": list(routers), "limit": limit, "bound": bound, "cells": cells,
        "targets": {"of_bound_sla": OF_BOUND_TARGET, "cost_within_sla_points": COST_SLA_POINTS,
                    "plane_replay_speed": SPEED_TARGET},
        "summary": target_counts(cells), "jobs": jobs,
        "wall_time_s": time.perf_counter() - t_all,
    }


_SCENARIOS: dict[str, tuple[bytes, bytes, Scenario]] = {}
"""The scenarios this process has loaded, by path, with the bytes of the scenario file and its
config: a suite replays each file in 8 to 16 cells, and parsing fleet-64's config takes seconds
(pure-Python YAML); a file that changed is loaded again."""


def _scenario(path: str) -> Scenario:
    text = Path(path).read_bytes()
    known = _SCENARIOS.get(path)
    if known is not None and known[0] == text and known[1] == Path(known[2].config_path).read_bytes():
        return known[2]
    scenario = load_scenario(path)
    _SCENARIOS[path] = (text, Path(scenario.config_path).read_bytes(), scenario)
    return scenario


def _run_cell(args: tuple) -> dict:
    """One cell, in this process or a worker's."""
    cell, routers, limit, bound = args
    t_cell = time.perf_counter()
    report, _ = replay(ReplayOptions(
        scenario=cell.scenario, trace=cell.trace, routers=routers, format=cell.format, rate_scale=cell.load,
        limit=limit, bound=bound, mismatch=cell.mismatch, loose_cost=False), _scenario(cell.scenario))
    return cell_summary(cell, report, limit, time.perf_counter() - t_cell)


def cell_summary(cell: Cell, report: dict, limit: int | None, wall_s: float) -> dict:
    """One cell: what it ran, the bound, each router's headline numbers, the plane's shortfalls."""
    bound = report.get("bound")
    runs = [{
        "router": r["router"], "jurisdiction_routes": r["jurisdiction_routes"],
        "sla_attainment": r["sla_attainment"], "sla_attainment_by_class": r["sla_attainment_by_class"],
        "cost_usd": r["cost_usd"], "sovereignty_violations": r["sovereignty_violations"],
        "unlogged_spillovers": r["unlogged_spillovers"], "rejected": r["rejected"] + r["failed"],
        "ttft_p99_s": r["ttft_p99_s"],
        "of_bound_sla": (r.get("bound_fraction") or {}).get("sla"),
        "of_bound_cost": (r.get("bound_fraction") or {}).get("cost"),
        "replay_speed": r["replay_speed"], "wall_time_s": r["wall_time_s"],
    } for r in report["runs"]]
    command = (f"inferplane replay {cell.scenario} --trace {cell.trace}"
               + (f" --format {cell.format}" if cell.format else "") + f" --rate-scale {cell.load:g}"
               + (f" --limit {limit}" if limit is not None else ""))
    return {
        "fleet": cell.fleet, "scenario": cell.scenario, "trace": cell.trace_name, "trace_path": cell.trace,
        "load": cell.load, "mismatch": cell.mismatch, "requests": report["trace"]["requests"],
        "span_s": report["trace"]["span_s"], "policy_hash": report["policy_hash"],
        "bound": None if bound is None else {
            "sla_attainment": bound["sla_attainment"], "cost_usd": bound["cost_usd"],
            "loose_sla_attainment": (bound.get("loose") or {}).get("sla_attainment"),
            "chunks": bound.get("chunks"), "chunk_s": bound.get("chunk_s"), "cost_gap_usd": bound.get("cost_gap_usd")},
        "runs": runs, "shortfalls": shortfalls(runs), "wall_time_s": wall_s, "label": cell.label,
        "bound_s": None if bound is None else bound["solve_s"] + ((bound.get("loose") or {}).get("solve_s") or 0.0),
        "plane_replay_speed": next((r["replay_speed"] for r in runs if r["router"] == PLANE), None),
        "command": command + (" (with simulation.mismatch on)" if cell.mismatch else ""),
    }


def shortfalls(runs: list[dict]) -> list[str]:
    """Where the plane's run misses issue #14's targets against the compliant baselines of the cell."""
    plane = next((r for r in runs if r["router"] == PLANE), None)
    if plane is None:
        return []
    out = []
    if plane["of_bound_sla"] is not None and plane["of_bound_sla"] < OF_BOUND_TARGET:
        out.append(f"deadlines met {plane['of_bound_sla']:.3f} of the bound's (target >= {OF_BOUND_TARGET:g})")
    for r in runs:
        if r["router"] not in COMPLIANT:
            continue
        if r["sla_attainment"] > plane["sla_attainment"]:
            out.append(f"deadlines met below {r['router']} ({100 * plane['sla_attainment']:.2f} % < "
                       f"{100 * r['sla_attainment']:.2f} %)")
        if (r["sla_attainment"] >= plane["sla_attainment"] - COST_SLA_POINTS
                and r["cost_usd"] < plane["cost_usd"] * (1.0 - COST_TOLERANCE)):
            out.append(f"dearer than {r['router']} at deadlines met within 1 point (${plane['cost_usd']:.2f} > "
                       f"${r['cost_usd']:.2f})")
    if plane["sovereignty_violations"]:
        out.append(f"{plane['sovereignty_violations']} sovereignty violations")
    if plane["unlogged_spillovers"]:
        out.append(f"{plane['unlogged_spillovers']} unlogged spillovers")
    return out


def judged(cell: dict) -> bool:
    """Whether a cell can judge the plane on every placement target: the plane ran, the bound was
    solved, and at least one compliant baseline ran beside it. A cell without them has no shortfall
    by construction, which says nothing: it is counted as not judged, never as met."""
    routers = {r["router"] for r in cell["runs"]}
    return PLANE in routers and cell["bound"] is not None and bool(routers & set(COMPLIANT))


def target_counts(cells: list[dict]) -> dict:
    """How many cells meet each of issue #14's targets (the plane's run in each cell; a target a
    cell cannot judge, such as the bound under --no-bound, counts in ``judged`` only where it can).
    ``placement_targets``: judged cells without a shortfall (``shortfalls``); ``all_targets``: those
    whose plane also ran at ``SPEED_TARGET`` simulated seconds per wall second or more."""
    out = {"cells": len(cells), "judged": 0, "placement_targets": 0, "all_targets": 0, "of_bound": 0,
           "of_bound_judged": 0, "at_least_compliant": 0, "not_dearer": 0, "no_violations": 0,
           "no_unlogged_spillovers": 0, "replay_speed": 0}
    for c in cells:
        plane = next((r for r in c["runs"] if r["router"] == PLANE), None)
        if plane is None:
            continue
        compliant = [r for r in c["runs"] if r["router"] in COMPLIANT]
        fast = (plane["replay_speed"] or 0.0) >= SPEED_TARGET
        if judged(c):
            out["judged"] += 1
            out["placement_targets"] += not c["shortfalls"]
            out["all_targets"] += not c["shortfalls"] and fast
        if plane["of_bound_sla"] is not None:
            out["of_bound_judged"] += 1
            out["of_bound"] += plane["of_bound_sla"] >= OF_BOUND_TARGET
        out["at_least_compliant"] += all(r["sla_attainment"] <= plane["sla_attainment"] for r in compliant)
        out["not_dearer"] += not any(r["sla_attainment"] >= plane["sla_attainment"] - COST_SLA_POINTS
                                     and r["cost_usd"] < plane["cost_usd"] * (1.0 - COST_TOLERANCE) for r in compliant)
        out["no_violations"] += plane["sovereignty_violations"] == 0
        out["no_unlogged_spillovers"] += plane["unlogged_spillovers"] == 0
        out["replay_speed"] += fast
    return out


def summary_line(counts: dict) -> str:
    n = counts["cells"]
    return (f"cells meeting each target, of {n}: all {counts['all_targets']} (placement targets "
            f"{counts['placement_targets']}, of {counts['judged']} judged: with a bound and a compliant "
            f"baseline); >= 95 % of the bound "
            f"{counts['of_bound']} (of {counts['of_bound_judged']} with a bound); >= every compliant baseline "
            f"{counts['at_least_compliant']}; no dearer {counts['not_dearer']}; 0 violations {counts['no_violations']}; "
            f"0 unlogged spillovers {counts['no_unlogged_spillovers']}; plane >= {SPEED_TARGET:,.0f} sim s/s "
            f"{counts['replay_speed']}")


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_suite(report: dict) -> str:
    """The per router per cell table, then one line per cell against the targets."""
    from inferplane.cli.table import render_table

    mismatch = any(c["mismatch"] for c in report["cells"])
    lines = [f"suite {report['suite']}: {len(report['cells'])} cells, policy {report['policy']}"
             + (f", first {report['limit']} trace rows per cell" if report["limit"] else ""), ""]
    headers = ["fleet", "trace", "load", *(["mismatch"] if mismatch else []), "router", "routes", "met %",
               "of bound", "cost USD", "violations", "unlogged", "rejected"]
    rows = []
    for c in report["cells"]:
        for i, r in enumerate(c["runs"]):
            head = [c["fleet"], c["trace"], f"x{c['load']:g}", *(["on" if c["mismatch"] else "off"] if mismatch else [])]
            rows.append([*(head if i == 0 else [""] * len(head)), r["router"], r["jurisdiction_routes"],
                         f"{100 * r['sla_attainment']:.2f}", _f(r["of_bound_sla"], ".3f"), f"{r['cost_usd']:.2f}",
                         str(r["sovereignty_violations"]), str(r["unlogged_spillovers"]), str(r["rejected"])])
    lines.append(render_table(headers, rows, "l" * (4 + mismatch) + "l" + "r" * 6))
    lines += ["", "per cell, the plane against the targets (>= 95 % of the bound's deadlines met and >= every "
                  "compliant baseline; cost <= every compliant baseline within 1 point of its deadlines met):"]
    rows = []
    for c in report["cells"]:
        compliant = [r for r in c["runs"] if r["router"] in COMPLIANT]
        plane = next((r for r in c["runs"] if r["router"] == PLANE), None)
        best = max(compliant, key=lambda r: r["sla_attainment"], default=None)
        verdict = "; ".join(c["shortfalls"]) or ("met" if judged(c) else "not judged (no bound or no compliant baseline)")
        rows.append([
            c["fleet"], c["trace"], f"x{c['load']:g}", *(["on" if c["mismatch"] else "off"] if mismatch else []),
            str(c["requests"]), _f(None if c["bound"] is None else 100 * c["bound"]["sla_attainment"], ".2f"),
            _f(None if plane is None else 100 * plane["sla_attainment"], ".2f"),
            _f(None if plane is None else plane["of_bound_sla"], ".3f"),
            "-" if best is None else f"{best['router']} {100 * best['sla_attainment']:.2f}",
            _f(None if plane is None else plane["cost_usd"], ".2f"),
            _f(c.get("plane_replay_speed"), ",.0f"), f"{c['wall_time_s']:.0f}",
            "-" if plane is None else verdict,
        ])
    lines.append(render_table(
        ["fleet", "trace", "load", *(["mismatch"] if mismatch else []), "requests", "bound %", "plane %",
         "of bound", "best compliant %", "plane USD", "plane sim s/s", "cell s", "targets"], rows,
        "l" * (3 + mismatch) + "rrrrlrrrl"))
    counts = report.get("summary") or target_counts(report["cells"])
    lines.append(f"the plane meets every placement target in {counts['placement_targets']} of {counts['judged']} "
                 f"judged cells ({len(report['cells'])} in all), and the replay speed target "
                 f"(>= {SPEED_TARGET:,.0f} sim s/s) in {counts['replay_speed']}; wall time {report['wall_time_s']:.0f} s")
    lines.append(summary_line(counts))
    return "\n".join(lines)


def write_heatmap(report: dict, directory: str | Path) -> list[str]:
    """``suite_heatmap.png`` in ``directory``: deadlines met as a fraction of the bound (or, without
    the bound, deadlines met), and cost over the cheapest compliant router's, per cell and router."""
    import numpy as np

    from inferplane.replay.plots import _pyplot

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cells = report["cells"]
    routers = report["routers"]
    labels = [f"{c['fleet']} · {c['trace']} x{c['load']:g}" + (" · mismatch" if c["mismatch"] else "") for c in cells]
    bounded = report["bound"]
    sla = np.full((len(cells), len(routers)), np.nan)
    cost = np.full((len(cells), len(routers)), np.nan)
    for i, c in enumerate(cells):
        by = {r["router"]: r for r in c["runs"]}
        cheapest = min((r["cost_usd"] for r in c["runs"] if r["router"] in COMPLIANT or r["router"] == PLANE),
                       default=None)
        for j, name in enumerate(routers):
            r = by.get(name)
            if r is None:
                continue
            sla[i, j] = r["of_bound_sla"] if bounded and r["of_bound_sla"] is not None else r["sla_attainment"]
            if cheapest:
                cost[i, j] = r["cost_usd"] / cheapest
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(4 + 2.4 * len(routers), 1.5 + 0.32 * len(cells)))
    panels = ((axes[0], sla, "deadlines met / bound's" if bounded else "deadlines met", "RdYlGn", 0.5, 1.0),
              (axes[1], cost, "cost / cheapest compliant router's", "RdYlGn_r", 1.0, 1.5))
    for ax, data, title, cmap, lo, hi in panels:
        image = ax.imshow(data, aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
        ax.set_xticks(range(len(routers)), routers, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(cells)), labels, fontsize=7)
        ax.set_title(title, fontsize=10)
        for i in range(len(cells)):
            for j in range(len(routers)):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    path = out / "suite_heatmap.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]
