"""The plane's drift detector in a replay: a substrate slowed mid-run is flagged after the slowdown
begins, and the same slice of the trace without the slowdown flags nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferplane.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = str(ROOT / "configs" / "scenarios" / "enterprise-burst.yaml")
AZURE_CONV = str(ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv")
# The first 500 rows: about two minutes of the trace, gpu-fra (the EU reserved pool) serving most.
SLICE = ("--limit", "500", "--router", "inferplane", "--no-bound", "--no-progress")
SLOWED, AT_S = "gpu-fra", 40.0


def drift_of(capsys, tmp_path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "report.json"
    code = main(["replay", SCENARIO, "--trace", AZURE_CONV, *SLICE, "--out", str(out), *extra])
    text, err = capsys.readouterr()
    assert (code, err) == (0, "")
    run = json.loads(out.read_text(encoding="utf-8"))["runs"][0]
    assert run["router"] == "inferplane"
    return run["drift"], text


def test_a_substrate_slowed_mid_run_is_flagged_after_the_slowdown_begins(capsys, tmp_path):
    drift, text = drift_of(capsys, tmp_path, "--slowdown", f"{SLOWED}:{AT_S:g}:600:3")
    flags = drift["flags"][SLOWED]
    assert flags, drift["flags"]
    assert all(f["set_s"] >= AT_S for f in flags), flags  # nothing before the fault
    (slowed,) = drift["slowed"]
    assert slowed["substrate"] == SLOWED and slowed["factor"] == 3.0
    assert slowed["flagged_at_s"] == min(f["set_s"] for f in flags)
    assert drift["fault_start_s"] == AT_S
    assert set(drift["deadlines_met"]) >= {SLOWED, "(all substrates)"}
    assert f"{SLOWED} slowed x3 from 40 s" in text and "flagged" in text


def test_the_same_slice_without_the_slowdown_flags_no_substrate(capsys, tmp_path):
    drift, text = drift_of(capsys, tmp_path, "--drift")
    assert {name: f for name, f in drift["flags"].items() if f} == {}
    assert drift["slowed"] == [] and drift["deadlines_met"] is None and drift["fault_start_s"] is None
    assert "drift flags" in text


RAMP = [f"{SLOWED}:{300 + 60 * i}:60:{1.1 + 0.2 * i:.1f}" for i in range(10)]  # x1.1 to x2.9 over 10 min


def test_a_slow_ramp_is_flagged_before_its_deadlines_met_falls_by_a_point(capsys, tmp_path):
    """The issue's promise on a reduced run: gpu-fra slowed by 10 % more each minute from 300 s is
    flagged (slower than its declared profile) before its rolling deadlines-met figure falls by
    more than one point; and not before the ramp begins."""
    out = tmp_path / "report.json"
    ramp = [arg for step in RAMP for arg in ("--slowdown", step)]
    code = main(["replay", SCENARIO, "--trace", AZURE_CONV, "--limit", "6000", "--router", "inferplane",
                 "--no-bound", "--no-progress", "--out", str(out), *ramp])
    text, err = capsys.readouterr()
    assert (code, err) == (0, "")
    drift = json.loads(out.read_text(encoding="utf-8"))["runs"][0]["drift"]
    flags = drift["flags"][SLOWED]
    assert flags and all(f["set_s"] >= 300.0 for f in flags), flags
    first = min(f["set_s"] for f in flags)
    fell = drift["deadlines_met"][SLOWED]["fell_at_s"]
    assert fell is not None, drift["deadlines_met"][SLOWED]  # the ramp does hurt by the end
    assert first < fell, (first, fell)
    assert {name: f for name, f in drift["flags"].items() if f and name != SLOWED} == {}


@pytest.mark.parametrize("scenario", ["enterprise-burst", "enterprise-burst-jitter", "enterprise-burst-off-profile",
                                      "noisy-neighbour"])
def test_an_hour_without_a_fault_raises_no_flag(capsys, tmp_path, scenario):
    """The whole Azure conversation trace (an hour, its load peaks included) on fleets that differ:
    clean, ±40 % jitter, truth steadily off the declared profiles (one pool slower, one faster), and
    a saturated multi-tenant fleet with a hold queue. No substrate is flagged: the detector's early
    warnings on a ramp (the test above) are worth reading only because it does not cry wolf here.
    (Judging the prediction's own error, enterprise-burst's gpu-fra flapped 26 times in this hour;
    TTFT from receipt rather than dispatch flagged noisy-neighbour's pools 27 times.)"""
    out = tmp_path / "report.json"
    code = main(["replay", str(ROOT / "configs" / "scenarios" / f"{scenario}.yaml"), "--trace", AZURE_CONV,
                 "--router", "inferplane", "--no-bound", "--no-progress", "--drift", "--out", str(out)])
    _, err = capsys.readouterr()
    assert (code, err) == (0, "")
    drift = json.loads(out.read_text(encoding="utf-8"))["runs"][0]["drift"]
    assert {name: f for name, f in drift["flags"].items() if f} == {}
