"""`inferplane replay --suite`: the scenario suite of issue #14, on a reduced slice, through the CLI;
its one-default-policy rule; and physics the plane has to learn (``simulation.mismatch``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from inferplane.cli.main import main
from inferplane.config import ConfigError
from inferplane.config.schema import Policy
from inferplane.replay.plane_router import PlaneRouter
from inferplane.replay.runner import ReplayOptions, prepare
from inferplane.replay.scenario import EventKind, MismatchSpec, load_scenario
from inferplane.replay.simulator import Simulator
from inferplane.replay.suite import _run_cell, load_suite, render_suite, target_counts

ROOT = Path(__file__).resolve().parents[1]
SUITE_DIR = ROOT / "configs" / "scenarios" / "suite"
SUITE = str(SUITE_DIR / "suite.yaml")
AZURE_CONV = str(ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv")
ROUTERS = ("inferplane", "ordered_fallback", "round_robin-compliant")
LIMIT = 40
"""Trace rows per cell of the reduced slice: every cell of the suite, a few seconds each."""


def _expected_cells() -> set[tuple[str, str, float]]:
    doc = yaml.safe_load(Path(SUITE).read_text(encoding="utf-8"))
    return {(Path(s).stem, t["name"], float(load)) for s in doc["scenarios"] for t in doc["traces"]
            for load in (t.get("loads") or doc["loads"])}


def test_the_suite_runs_every_cell_through_the_cli(capsys, tmp_path):
    out, plots = tmp_path / "suite.json", tmp_path / "plots"
    code = main(["replay", "--suite", SUITE, "--limit", str(LIMIT), "--router", ",".join(ROUTERS),
                 "--out", str(out), "--plots", str(plots), "--no-progress", "--jobs", "2"])
    stdout, _ = capsys.readouterr()
    assert code == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    cells = {(c["fleet"], c["trace"], c["load"]) for c in report["cells"]}
    assert cells == _expected_cells() and len(report["cells"]) == len(cells) >= 40
    assert {c["fleet"] for c in report["cells"]} >= {"gpu-heavy", "api-heavy", "sovereign-pool",
                                                      "three-jurisdictions", "fleet-64"}
    for c in report["cells"]:
        assert [r["router"] for r in c["runs"]] == list(ROUTERS)
        assert c["requests"] > 0 and c["bound"] is not None
        for r in c["runs"]:
            # every router here keeps tenants in their jurisdictions: the plane by policy, the others by
            # per-tenant endpoint lists
            assert r["sovereignty_violations"] == 0, (c["fleet"], c["trace"], c["load"], r["router"])
            assert r["of_bound_sla"] is not None and r["of_bound_sla"] <= 1.0 + 1e-9, (c, r["router"])
        plane = c["runs"][0]
        assert plane["unlogged_spillovers"] == 0
        assert isinstance(c["shortfalls"], list)
    assert report["plots"] == [str(plots / "suite_heatmap.png")]
    assert (plots / "suite_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "three-jurisdictions" in stdout and "mooncake-synth" in stdout
    assert f"judged cells ({len(cells)} in all)" in stdout
    # two worker processes: the cells in the suite's order, each as the same cell replayed here
    suite = load_suite(SUITE)
    assert [c["label"] for c in report["cells"]] == [c.label for c in suite.cells]
    for i in (0, len(suite.cells) - 1):
        again = _run_cell((suite.cells[i], ROUTERS, LIMIT, True))
        assert [(r["sla_attainment"], r["cost_usd"], r["of_bound_sla"]) for r in again["runs"]] == \
            [(r["sla_attainment"], r["cost_usd"], r["of_bound_sla"]) for r in report["cells"][i]["runs"]]
    # the summary counts each target over the cells, and each cell says how fast the plane's router ran
    summary = report["summary"]
    assert summary["cells"] == len(cells) and summary["of_bound_judged"] == len(cells)
    assert summary["judged"] == len(cells)  # each cell ran the bound and compliant baselines
    assert summary["placement_targets"] == sum(not c["shortfalls"] for c in report["cells"])
    assert summary["all_targets"] == sum(not c["shortfalls"] and c["plane_replay_speed"] >= 2000
                                         for c in report["cells"])
    assert summary["of_bound"] == sum(c["runs"][0]["of_bound_sla"] >= 0.95 for c in report["cells"])
    assert summary["no_violations"] == len(cells) == summary["no_unlogged_spillovers"]
    assert all(c["plane_replay_speed"] == c["runs"][0]["replay_speed"] > 0 for c in report["cells"])
    assert summary["replay_speed"] == sum(c["plane_replay_speed"] >= 2000 for c in report["cells"])
    assert (f"cells meeting each target, of {len(cells)}: all {summary['all_targets']} (placement targets "
            f"{summary['placement_targets']}, of {len(cells)} judged") in stdout


def _run(router: str, sla: float, speed: float = 100.0) -> dict:
    return {"router": router, "jurisdiction_routes": "policy", "sla_attainment": sla, "of_bound_sla": None,
            "cost_usd": 1.0, "sovereignty_violations": 0, "unlogged_spillovers": 0, "rejected": 0,
            "replay_speed": speed if router == "inferplane" else None}


def test_a_cell_that_cannot_judge_the_plane_is_not_counted_as_meeting_the_targets():
    """With no bound or no compliant baseline a cell has no shortfall by construction: it is "not
    judged", never "met"; and the replay speed target is counted apart from the placement ones."""
    def cell(label, runs, bound):
        return {"fleet": label, "trace": "t", "load": 1.0, "mismatch": False, "requests": 10, "runs": runs,
                "bound": bound, "shortfalls": [], "wall_time_s": 1.0, "plane_replay_speed": runs[0]["replay_speed"]}
    bound = {"sla_attainment": 1.0, "cost_usd": 1.0, "loose_sla_attainment": 1.0}
    cells = [cell("alone", [_run("inferplane", 0.9)], None),
             cell("no-bound", [_run("inferplane", 0.9), _run("round_robin-compliant", 0.8)], None),
             cell("judged", [_run("inferplane", 0.9), _run("round_robin-compliant", 0.8)], bound),
             cell("judged-fast", [_run("inferplane", 0.9, 2500.0), _run("round_robin-compliant", 0.8)], bound)]
    counts = target_counts(cells)
    assert (counts["judged"], counts["placement_targets"], counts["all_targets"], counts["replay_speed"]) == (2, 2, 1, 1)
    text = render_suite({"suite": "s", "policy": "default", "limit": None, "cells": cells, "wall_time_s": 1.0})
    assert text.count("not judged (no bound or no compliant baseline)") == 2
    assert "every placement target in 2 of 2 judged cells (4 in all)" in text


def test_no_fleet_of_the_suite_carries_a_policy():
    """One policy, the default, in every cell: no fleet file has a policy block, and each builds to
    the schema's defaults."""
    doc = yaml.safe_load(Path(SUITE).read_text(encoding="utf-8"))
    assert len(doc["scenarios"]) >= 5
    for name in doc["scenarios"]:
        scenario_doc = yaml.safe_load((SUITE_DIR / name).read_text(encoding="utf-8"))
        fleet_doc = yaml.safe_load((SUITE_DIR / scenario_doc["config"]).read_text(encoding="utf-8"))
        assert "policy" not in fleet_doc, scenario_doc["config"]
        assert load_scenario(SUITE_DIR / name).built.config.policy == Policy()
    fleet64 = load_scenario(SUITE_DIR / "fleet-64.yaml").built.fleet
    assert len(fleet64.substrates) == 64


def test_a_suite_refuses_a_tuned_policy(tmp_path):
    fleet = yaml.safe_load((SUITE_DIR / "gpu-heavy.fleet.yaml").read_text(encoding="utf-8"))
    fleet["policy"] = {"scorer_weights": {"cost": 0.9}}
    (tmp_path / "tuned.fleet.yaml").write_text(yaml.safe_dump(fleet), encoding="utf-8")
    scenario = yaml.safe_load((SUITE_DIR / "gpu-heavy.yaml").read_text(encoding="utf-8"))
    scenario["config"] = "tuned.fleet.yaml"
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(scenario), encoding="utf-8")
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "suite_version": 1, "scenarios": ["tuned.yaml"],
        "traces": [{"name": "azure-conv", "path": AZURE_CONV, "format": "azure"}]}), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_suite(tmp_path / "suite.yaml")
    assert "default policy" in err.value.render()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay"], "CONFIG and --trace FILE, or --suite FILE"),
        (["replay", str(SUITE_DIR / "gpu-heavy.yaml")], "CONFIG and --trace FILE, or --suite FILE"),
        (["replay", "--suite", SUITE, "--trace", AZURE_CONV], "drop CONFIG and --trace"),
        (["replay", str(SUITE_DIR / "gpu-heavy.yaml"), "--trace", AZURE_CONV, "--mismatch", "both"], "single replay"),
    ],
)
def test_suite_and_single_replay_say_what_they_need(capsys, argv, message):
    code = main(argv)
    stdout, err = capsys.readouterr()
    assert code == 1 and stdout == ""
    assert err.startswith("inferplane: error:") and message in err and err.count("\n") == 1


def _prepared(mismatch: bool | None, seed: int | None = None):
    return prepare(ReplayOptions(scenario=str(SUITE_DIR / "three-jurisdictions.yaml"), trace=AZURE_CONV,
                                 format="azure", limit=400, mismatch=mismatch, seed=seed))


def test_mismatch_changes_the_truth_not_what_placement_is_told():
    off, on, again = _prepared(False), _prepared(True), _prepared(True)
    assert on.physics == again.physics and on.events == again.events  # seeded, reproducible
    assert _prepared(True, seed=8).physics != on.physics
    ratio = MismatchSpec().ratio
    declared = off.scenario.built.config.substrates
    assert off.events == () and all(e.kind is EventKind.SLOWDOWN and e.value >= 1.0 for e in on.events)
    assert {e.substrate for e in on.events} == {s.name for s in declared}  # every substrate drifts
    for s in declared:
        mine = sorted((e.at_s, e.at_s + e.for_s) for e in on.events if e.substrate == s.name)
        assert all(end <= start for (_, end), (start, _) in zip(mine, mine[1:]))  # never overlapping
    changed = 0
    for s, truth, base in zip(declared, on.physics, off.physics):
        # off: the truth is the declared profile
        assert base.prefill_tokens_per_s == s.latency.prefill_tokens_per_s
        assert base.ttft_s == pytest.approx(s.latency.base_ttft_ms / 1000.0)
        for true, told in ((1 / truth.prefill_tokens_per_s, 1 / s.latency.prefill_tokens_per_s),
                           (1 / truth.decode_tokens_per_s, 1 / s.latency.decode_tokens_per_s),
                           (truth.ttft_s, s.latency.base_ttft_ms / 1000.0)):
            assert (1 - ratio) * told <= true <= (1 + ratio) * told
            changed += true != pytest.approx(told)
        assert replace(truth, prefill_tokens_per_s=base.prefill_tokens_per_s, decode_tokens_per_s=base.decode_tokens_per_s,
                       ttft_s=base.ttft_s) == base  # only those three fields move
    assert changed >= 2 * len(declared)
    # what placement sees: the plane's router is built from the config alone, the same with and without
    assert on.scenario.built.fleet.substrates == off.scenario.built.fleet.substrates
    sim = Simulator(on.scenario.built, on.physics, on.requests, on.events, prefix_caches=on.prefix_caches)
    router = PlaneRouter(on.scenario.built, sim.loads(), heartbeat_s=0.25, start_s=sim.start_s)
    for spec, s, sub in zip(router._fleet.substrates, declared, sim.substrates):
        assert spec.latency.prefill_tokens_per_s == s.latency.prefill_tokens_per_s
        assert spec.latency.decode_tokens_per_s == s.latency.decode_tokens_per_s
        assert spec.latency.base_ttft_s == pytest.approx(s.latency.base_ttft_ms / 1000.0)
    assert any(sub.base_physics.prefill_tokens_per_s != spec.latency.prefill_tokens_per_s
               for spec, sub in zip(router._fleet.substrates, sim.substrates))
