"""`inferplane replay --target`: the same workload sent through a real plane (emulated substrates),
measured from the stream, and compared with its simulation."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inferplane.replay.live import LiveOptions
from inferplane.replay.runner import ReplayOptions, replay_live
from inferplane.telemetry.audit import read_audit
from tests.integration.conftest import EMULATED_CONFIG, EU_KEY, GLOBAL_KEY

TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
ROWS = 40


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("scenario") / "live.yaml"
    path.write_text(f"""
scenario_version: 1
description: the first {ROWS} Azure conversations, five times faster, through the emulated plane
config: {EMULATED_CONFIG}
trace: {{format: azure, time_scale: 0.2, limit: {ROWS}}}
workload:
  model: smollm2-135m-instruct
  seed: 3
  max_tokens: {{rule: fixed, tokens: 8}}
  tenants:
    - {{name: eu-bank, share: 0.5, sla_classes: {{interactive: 1.0}}}}
    - {{name: global-app, share: 0.5, sla_classes: {{interactive: 0.5, realtime: 0.5}}}}
""")
    return str(path)


@pytest.fixture(scope="module")
def live_report(emulated_plane, scenario):
    started = time.time()
    options = ReplayOptions(scenario=scenario, trace=str(TRACE), routers=("inferplane",))
    live = LiveOptions(target=emulated_plane.url, api_keys={"eu-bank": EU_KEY, "global-app": GLOBAL_KEY},
                       max_in_flight=32, max_duration_s=60, request_timeout_s=60)
    report, results = replay_live(options, live)
    return report, results, started


def test_every_request_is_sent_and_settled(live_report):
    report, _, _ = live_report
    measured, simulated = report["runs"]
    assert measured["router"] == "inferplane (live)"
    assert simulated["router"] == "inferplane (simulated)"
    assert report["live"]["sent"] == measured["requests"] == ROWS
    assert report["live"]["not_sent"] == 0
    assert measured["completed"] + measured["rejected"] + measured["failed"] == ROWS
    assert measured["completed"] > ROWS // 2
    assert measured["failed"] == 0, measured["rejections"]


def test_no_request_ran_outside_its_tenants_jurisdiction_and_every_spill_was_said(live_report):
    report, results, _ = live_report
    measured = report["runs"][0]
    assert measured["sovereignty_violations"] == 0
    assert measured["unlogged_spillovers"] == 0
    eu = [o for o in results[0].outcomes if o.tenant == "eu-bank" and o.status == "completed"]
    assert eu and all(o.substrate in ("local-gpu-emulated", "sovereign-de-emulated") for o in eu)


def test_the_plane_audited_every_request_the_replay_sent(live_report, emulated_plane):
    report, _, started = live_report
    deadline = time.monotonic() + 15
    while True:
        rows = read_audit(emulated_plane.audit_dir, since=datetime.fromtimestamp(started, UTC)).to_pylist()
        if len(rows) >= ROWS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rows) == ROWS
    served = {r["substrate"] for r in rows if r["status_code"] == 200}
    assert served == {s for s, n in report["runs"][0]["served_by_substrate"].items() if n}


def test_fidelity_compares_the_completed_requests_of_both_runs(live_report):
    report, results, _ = live_report
    fidelity = report["fidelity"]
    completed_live = {o.index for o in results[0].outcomes if o.status == "completed"}
    assert 0 < fidelity["requests_compared"] <= len(completed_live)
    for name in ("ttft_p50", "ttft_p90", "e2e_p50", "e2e_p90", "per_token_p50"):
        m = fidelity["metrics"][name]
        assert m["measured_s"] > 0 and m["simulated_s"] > 0
        assert m["simulated_over_measured"] == pytest.approx(m["simulated_s"] / m["measured_s"])
