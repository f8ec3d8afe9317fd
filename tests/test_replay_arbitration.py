"""The default policy against the policy that was tuned to enterprise-burst's fleet, side by side on
the whole Azure conversation trace: the default ``on_need`` meets at least as many deadlines."""

from __future__ import annotations

import shutil
from pathlib import Path

from inferplane.replay.runner import ReplayOptions, replay

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "configs" / "scenarios" / "enterprise-burst.yaml"
AZURE_CONV = str(ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv")

# The policy enterprise-burst.fleet.yaml carried until the scenario moved to the default policy
# (git show 476f4f6^:configs/scenarios/enterprise-burst.fleet.yaml): tuned to this fleet.
TUNED = """
policy:
  scorer_weights: {predicted_latency: 0.35, queue_pressure: 0.35, memory_pressure: 0.0, cost: 0.1,
                   locality: 0.0, reserved_tier: 0.2}
  spillover: {mode: scored}
"""


def test_the_default_policy_meets_as_many_deadlines_as_the_one_tuned_to_the_fleet(tmp_path):
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    shutil.copy(SCENARIO, tuned / SCENARIO.name)
    fleet_text = (SCENARIO.parent / "enterprise-burst.fleet.yaml").read_text()
    assert "\npolicy:" not in fleet_text, "the shipped scenario runs the default policy"
    (tuned / "enterprise-burst.fleet.yaml").write_text(fleet_text + TUNED)
    default, _ = replay(ReplayOptions(str(SCENARIO), AZURE_CONV, routers=("inferplane",), bound=False))
    tuned_report, _ = replay(ReplayOptions(str(tuned / SCENARIO.name), AZURE_CONV, routers=("inferplane",),
                                           bound=False))
    assert default["policy_hash"] != tuned_report["policy_hash"]
    ours, theirs = default["runs"][0], tuned_report["runs"][0]
    assert ours["sla_attainment"] >= theirs["sla_attainment"], (ours["sla_attainment"], theirs["sla_attainment"])
    assert ours["sovereignty_violations"] == 0 and ours["rejected"] == 0
