"""`inferplane replay`, run in-process as a user would run it, on a slice of the real trace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from inferplane.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = str(ROOT / "configs" / "scenarios" / "enterprise-burst.yaml")
FLEET = str(ROOT / "configs" / "scenarios" / "enterprise-burst.fleet.yaml")
AZURE_CONV = str(ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv")
MOONCAKE = str(ROOT.parent / "shared" / "data" / "traces" / "mooncake_synthetic_trace.jsonl")

RUN_FIELDS = {
    "router", "requests", "completed", "rejected", "sla_attainment", "sla_attainment_by_class", "ttft_p50_s",
    "ttft_p99_s", "e2e_p50_s", "e2e_p99_s", "cost_usd", "spillovers", "unlogged_spillovers",
    "sovereignty_violations", "cross_region_requests", "wall_time_s", "replay_speed", "bound_fraction",
    "goodput_rps", "goodput_tokens_per_s", "held_requests", "held_mean_s", "held_p99_s", "tenants",
    "jain_fairness_over_shares",
}
TENANT_FIELDS = {
    "requests", "met_sla", "sla_attainment", "ttft_p99_s", "tokens_offered", "tokens_served", "offered_fraction",
    "served_fraction", "share", "share_fraction", "goodput_rps", "goodput_tokens_per_s", "held_requests",
    "held_mean_s", "held_p99_s",
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_all_writes_report_and_plots(capsys, tmp_path):
    out = tmp_path / "report.json"
    plots = tmp_path / "plots"
    code, stdout, err = run(capsys, "replay", SCENARIO, "--trace", AZURE_CONV, "--limit", "400", "--router", "all",
                            "--out", str(out), "--plots", str(plots))
    assert (code, err) == (0, "")
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report) >= {"runs", "bound", "trace", "workload"}
    assert [r["router"] for r in report["runs"]] == [
        "inferplane", "round_robin", "least_outstanding", "ordered_fallback", "cheapest_first", "fifo_queue",
        "round_robin-compliant", "least_outstanding-compliant", "cheapest_first-compliant"]
    routes = {r["router"]: r["jurisdiction_routes"] for r in report["runs"]}
    assert routes["inferplane"] == "policy" and routes["fifo_queue"] == routes["round_robin-compliant"] == "per tenant"
    assert routes["round_robin"] == "none"
    for r in report["runs"]:
        if r["jurisdiction_routes"] != "none":
            assert r["sovereignty_violations"] == 0, r["router"]
    for r in report["runs"]:
        assert RUN_FIELDS <= set(r), RUN_FIELDS - set(r)
        assert r["requests"] == 400 == r["completed"] + r["rejected"] + r["failed"]
        assert 0.0 <= r["sla_attainment"] <= report["bound"]["sla_attainment"] + 1e-9
        assert set(r["tenants"]) == {"eu-bank", "global-app"}
        for name, t in r["tenants"].items():
            assert TENANT_FIELDS <= set(t), TENANT_FIELDS - set(t)
            assert t["sla_attainment"] == r["sla_attainment_by_tenant"][name]
            assert t["share_fraction"] == 0.5  # the fleet gives no share: 1 each
        assert sum(t["tokens_offered"] for t in r["tenants"].values()) > 0
        assert 0.5 <= r["jain_fairness_over_shares"] <= 1.0
    plane = report["runs"][0]
    assert plane["sovereignty_violations"] == 0 and plane["unlogged_spillovers"] == 0
    assert report["trace"]["rows"] == 400 and report["trace"]["rate_scale"] == 1.0
    for name in ("latency_cdf.png", "sla_and_cost.png", "substrate_load.png"):
        png = plots / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "inferplane" in stdout and "bound (fluid LP" in stdout and "replay speed" in stdout
    assert "Jain's index over tokens served / share" in stdout and "not under-served" in stdout
    assert re.search(r"fifo_queue\s+eu-bank\s+50\.0\s", stdout)


def test_one_router_json_on_stdout_with_cli_faults_and_tenants(capsys):
    code, stdout, err = run(capsys, "replay", SCENARIO, "--trace", AZURE_CONV, "--limit", "200",
                            "--router", "ordered_fallback", "--no-bound", "--json",
                            "--tenants", "eu-bank:1", "--outage", "gpu-fra:0:3600", "--rate-scale", "2")
    assert (code, err) == (0, "")
    report = json.loads(stdout)
    (run_,) = report["runs"]
    assert report["bound"] is None
    assert run_["router"] == "ordered_fallback" and run_["requests"] == 400
    assert report["events"] == [{"kind": "outage", "substrate": "gpu-fra", "at_s": 0.0, "for_s": 3600.0,
                                 "value": None}]
    # Only eu-bank, gpu-fra down: the region-aware gateway serves from the other DE substrates.
    assert run_["served_by_substrate"]["gpu-fra"] == 0
    assert run_["sovereignty_violations"] == 0


def test_without_a_tenant_the_others_requests_are_replayed_as_they_were(capsys):
    argv = ("replay", SCENARIO, "--trace", AZURE_CONV, "--limit", "300", "--router", "ordered_fallback", "--no-bound")
    code, stdout, _ = run(capsys, *argv, "--json")
    full = json.loads(stdout)["runs"][0]
    code, stdout, err = run(capsys, *argv, "--without-tenant", "global-app", "--json")
    assert (code, err) == (0, "")
    report = json.loads(stdout)
    (alone,) = report["runs"]
    assert report["workload"]["without_tenants"] == ["global-app"]
    assert set(alone["tenants"]) == {"eu-bank"}
    assert alone["requests"] == full["tenants"]["eu-bank"]["requests"] == report["trace"]["requests"]
    assert alone["tenants"]["eu-bank"]["tokens_offered"] == full["tenants"]["eu-bank"]["tokens_offered"]
    code, stdout, _ = run(capsys, *argv, "--without-tenant", "global-app")
    assert "without global-app: their requests dropped, every other request as in the full workload" in stdout


def test_a_plain_config_and_a_mooncake_trace(capsys):
    code, stdout, err = run(capsys, "replay", FLEET, "--trace", MOONCAKE, "--limit", "150",
                            "--router", "inferplane,round_robin", "--json")
    assert (code, err) == (0, "")
    report = json.loads(stdout)
    assert [r["router"] for r in report["runs"]] == ["inferplane", "round_robin"]
    # No scenario: every tenant at an equal share, in its default class.
    assert {t["name"] for t in report["workload"]["tenants"]} == {"eu-bank", "global-app"}
    # Mooncake prompts reach 60k+ tokens, beyond the GPU pools' 32k and sovereign-fra's 16k windows.
    # The plane filters by context window; a round-robin gateway sends them anyway and returns the
    # substrate's 400 to the client (a 4xx other than 429 is not retried).
    plane, gateway = report["runs"]
    assert plane["failed"] == plane["rejected"] == 0
    assert gateway["failed"] > 0 and gateway["rejections"] == {"bad_request": gateway["failed"]}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tenants", "eu-bank=1"], "NAME:SHARE"),
        (["--outage", "gpu-fra:soon:10"], "numbers"),
        (["--slowdown", "nowhere:0:10:2"], "unknown substrate"),
        (["--router", "random"], "unknown router"),
        (["--without-tenant", "nobody"], "not a tenant of the config"),
        (["--without-tenant", "eu-bank", "--without-tenant", "global-app"], "no request is left"),
    ],
)
def test_errors_are_one_line(capsys, argv, message):
    code, stdout, err = run(capsys, "replay", SCENARIO, "--trace", AZURE_CONV, "--limit", "10", *argv)
    assert code == 1 and stdout == ""
    assert err.startswith("inferplane: error:") and message in err and err.count("\n") == 1
