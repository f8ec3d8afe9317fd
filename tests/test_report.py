"""`inferplane report` on a generated audit set written through AuditLog: the numbers are the ones
worked out by hand below, the plots and the HTML page are written, a recorded decision shows as
`inferplane explain` shows a fresh one."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pytest
import yaml

from inferplane.cli.explain import render
from inferplane.cli.main import main
from inferplane.cli.report import PLOTS, render_recorded_decision
from inferplane.telemetry.audit import AuditLog, read_audit
from inferplane.telemetry.report import summarise
from tests.test_audit import T0, decide, outcome, plane, row_for

ALL = ("gpu", "sov", "de-west", "eu-api", "us-api")
STEP_S = 360.0  # one request every 6 minutes: 20 requests over 1 h 54 min


def audit_set(directory: Path, *, with_sla: bool = True) -> dict[str, object]:
    """20 requests, written by two ingress replicas (even ones by a, odd ones by b):

    - 10 on gpu (tenant t, interactive): ttft 0.1, 0.2 ... 1.0 s, e2e 1 ... 10 s: all within 1.5 / 20 s;
    - 4 spilled to us-api (everything else busy; t, interactive): ttft 0.5, e2e 2 s;
    - 2 spilled to sov (gpu and de-west busy; tenant other, batch): ttft 0.2, e2e 4 s;
    - 1 on gpu that failed mid-stream (502; t, interactive): e2e 0.5 s;
    - 2 refused at capacity (429; t, interactive); 1 refused with a bad key (401).
    """
    built = plane()
    rows, ids = [], {}
    k = 0

    def add(decision, out_kwargs=None, **kwargs) -> None:
        nonlocal k
        received = T0 + k * STEP_S
        rows.append(row_for(built, decision, received=received, request_id=f"req-{k:02d}", with_sla=with_sla,
                            ingress_id="ingress-a" if k % 2 == 0 else "ingress-b",
                            out=outcome(at=received + 10.0, **(out_kwargs or {})), **kwargs))
        k += 1

    for i in range(10):
        add(decide(built, request_id=f"gpu-{i}"), {"ttft": 0.1 * (i + 1), "e2e": float(i + 1), "tokens_out": 200})
    for i in range(4):
        d = decide(built, request_id=f"us-{i}", busy=ALL[:4])
        assert d.substrate == "us-api"
        ids.setdefault("us-api", d.placement_id)
        add(d, {"ttft": 0.5, "e2e": 2.0, "tokens_out": 200})
    for i in range(2):
        d = decide(built, request_id=f"sov-{i}", tenant="other", sla="batch", busy=("gpu", "de-west"))
        assert d.substrate == "sov"
        add(d, {"ttft": 0.2, "e2e": 4.0, "tokens_out": 200}, tenant="other", sla_class="batch")
    add(decide(built, request_id="failed"), {"status": 502, "error": "substrate_error", "ttft": None, "e2e": 0.5})
    for i in range(2):
        add(decide(built, request_id=f"full-{i}", busy=ALL),
            {"status": 429, "error": "capacity", "ttft": None, "e2e": 0.001, "tokens_out": None})
    add(None, {"status": 401, "error": "invalid_api_key", "ttft": None, "e2e": 0.001, "tokens_in": None,
               "tokens_out": None}, tenant=None, sla_class=None)

    writers = [AuditLog(directory, w, background=False) for w in ("ingress-a", "ingress-b")]
    for i, row in enumerate(rows):
        writers[i % 2].append(row)
        if i % 5 == 4:
            writers[i % 2].flush()
    for w in writers:
        w.close()
    return {"built": built, "rows": rows, "spill_id": ids["us-api"]}


# gpu: $3.60/h over 4 slots = $0.00025 per slot-second; sov: $0.0005; us-api: 1000 x 0.15e-6 +
# 200 x 0.6e-6 = $0.00027 of tokens + 4800 bytes x $9e-11 egress = $0.000270432.
GPU_COST = 0.00025 * (sum(range(1, 11)) + 0.5)
US_COST = 4 * 0.000270432
SOV_COST = 2 * 0.0005 * 4.0


def test_the_summary_numbers(tmp_path: Path) -> None:
    audit_set(tmp_path)
    s = summarise(read_audit(tmp_path))
    assert (s.requests, s.placed, s.ok, s.failed, s.refused) == (20, 17, 16, 1, 3)
    assert s.refused_by_code == {"capacity": 2, "invalid_api_key": 1}
    assert (s.spillovers, s.spillover_by_reason) == (6, {"primary_saturated": 6})
    assert s.spillover_rate == pytest.approx(6 / 17)
    assert s.boundaries == {"jurisdiction": 4, "zone": 2}
    # Spilling to us-api saved 4 x (0.0005 - 0.000270432); spilling to sov cost 2 x (0.002 - 0.001).
    assert s.spillover_extra_cost_usd == pytest.approx(-4 * (0.0005 - 0.000270432) + 2 * 0.001, rel=1e-9)

    latency = {(g["substrate"], g["sla_class"]): g for g in s.latency}
    assert set(latency) == {("gpu", "interactive"), ("us-api", "interactive"), ("sov", "batch")}
    gpu = latency[("gpu", "interactive")]
    assert gpu["n"] == 10
    assert gpu["ttft"] == pytest.approx([0.55, 0.91, 0.991])  # linear between ranks of 0.1 ... 1.0
    assert gpu["e2e"] == pytest.approx([5.5, 9.1, 9.91])
    assert latency[("sov", "batch")]["e2e"] == pytest.approx([4.0, 4.0, 4.0])

    # interactive: 10 + 4 met; the failed one and the two refused at capacity missed: 14 / 17.
    sla = {g["sla_class"]: g for g in s.sla}
    assert (sla["interactive"]["n"], sla["interactive"]["met"]) == (17, 14)
    assert (sla["batch"]["n"], sla["batch"]["met"], sla["batch"]["attainment"]) == (2, 2, 1.0)

    assert s.cost_usd == pytest.approx(GPU_COST + US_COST + SOV_COST, rel=1e-9)
    tenants = {g["tenant"]: g for g in s.cost_by_tenant}
    assert tenants["t"]["cost_usd"] == pytest.approx(GPU_COST + US_COST, rel=1e-9)
    assert (tenants["t"]["requests"], tenants["other"]["requests"]) == (15, 2)
    assert tenants["other"]["cost_usd"] == pytest.approx(SOV_COST, rel=1e-9)
    substrates = {g["substrate"]: g for g in s.cost_by_substrate}
    assert substrates["gpu"]["cost_usd"] == pytest.approx(GPU_COST, rel=1e-9)
    assert (substrates["gpu"]["input_tokens"], substrates["gpu"]["output_tokens"]) == (11_000, 10 * 200 + 201)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_report_command_prints_the_summary_and_writes_plots_and_a_page(tmp_path: Path, capsys) -> None:
    audit_set(tmp_path / "audit")
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "report", str(tmp_path / "audit"), "--out", str(out_dir), "--html")
    assert (code, err) == (0, "")
    assert "20 requests · 2025-06-15 15:06:40 → 2025-06-15 17:00:40 UTC" in out
    assert "17 placed (16 ok, 1 failed) · 3 refused" in out
    assert "refused    2 capacity, 1 invalid_api_key" in out
    assert "spillover  6 of 17 placements (35.3%)" in out
    assert re.search(r"primary_saturated\s+6\s+100\.0%", out)
    assert re.search(r"jurisdiction\s+4\s+66\.7%", out) and re.search(r"zone\s+2\s+33\.3%", out)
    assert re.search(r"gpu\s+interactive\s+10\s+0\.550\s+0\.910\s+0\.991\s+5\.500\s+9\.100\s+9\.910", out)
    assert re.search(r"interactive\s+1\.5 / 20\s+17\s+14\s+82\.4%", out)
    assert re.search(r"batch\s+60 / 600\s+2\s+2\s+100\.0%", out)
    assert f"cost by tenant (total ${GPU_COST + US_COST + SOV_COST:.6f})" in out
    assert re.search(rf"\bother\s+2\s+2000\s+400\s+{SOV_COST:.6f}", out)

    for name in PLOTS:
        png = out_dir / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out_dir / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert "spillover  6 of 17 placements (35.3%)" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained


def test_since_keeps_the_later_requests(tmp_path: Path, capsys) -> None:
    audit_set(tmp_path / "audit")
    since = "2025-06-15T16:06:40+00:00"  # T0 + 1 h: requests 10 ... 19
    assert read_audit(tmp_path / "audit").num_rows == 20
    code, out, _ = run(capsys, "report", str(tmp_path / "audit"), "--since", since, "--no-plots")
    assert code == 0
    assert "· 10 requests ·" in out
    assert "7 placed (6 ok, 1 failed) · 3 refused" in out


def test_deadlines_come_from_the_config_when_the_rows_lack_them(tmp_path: Path, capsys) -> None:
    info = audit_set(tmp_path / "audit", with_sla=False)
    code, out, _ = run(capsys, "report", str(tmp_path / "audit"), "--out", str(tmp_path / "r"), "--no-plots")
    assert code == 0 and "SLA attainment: no SLA deadlines recorded" in out
    assert not (tmp_path / "r").exists()
    config = tmp_path / "plane.yaml"
    config.write_text(yaml.safe_dump(info["built"].config.model_dump(mode="json", by_alias=True, exclude_unset=True)),
                      encoding="utf-8")
    code, out, _ = run(capsys, "report", str(tmp_path / "audit"), "--no-plots", "--config", str(config))
    assert code == 0
    assert re.search(r"interactive\s+1\.5 / 20\s+17\s+14\s+82\.4%", out)


def test_an_empty_audit_directory(tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "report", str(tmp_path), "--out", str(tmp_path / "r"))
    assert code == 0 and "no audit rows" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["/nonexistent/audit"], "no audit directory at /nonexistent/audit"),
    (["{tmp}", "--since", "yesterday"], "--since 'yesterday' is not an ISO date"),
])
def test_errors_are_one_line(tmp_path: Path, capsys, args, message) -> None:
    code, out, err = run(capsys, "report", *[a.format(tmp=tmp_path) for a in args])
    assert code == 1 and out == ""
    assert err.startswith("inferplane: error: ") and message in err and err.count("\n") == 1


def test_a_recorded_decision_shows_as_explain_shows_a_fresh_one(tmp_path: Path) -> None:
    info = audit_set(tmp_path)
    built, pid = info["built"], info["spill_id"]
    decision = decide(built, request_id="us-0", busy=ALL[:4])
    assert decision.placement_id == pid
    text = render_recorded_decision(tmp_path, pid)
    fresh = render(decision, built.fleet, "-").splitlines()
    shown = text.splitlines()
    assert shown[0] == fresh[0]
    assert shown[1] == "         recorded 2025-06-15 16:06:40 UTC by ingress-a · signals of snapshot v7, 0.12 s old"
    assert shown[2:len(fresh)] == fresh[2:]
    assert "spillover: yes (primary_saturated; primary is gpu)" in text
    outcome_lines = shown[len(fresh):]
    assert outcome_lines[0] == "outcome  200 · 1 attempt · ttft 0.500 s, e2e 2.000 s · 1000 in / 200 out tokens"
    assert "spillover crossed: jurisdiction" in outcome_lines[-1]


def test_a_recorded_rejection_and_an_unknown_id(tmp_path: Path) -> None:
    info = audit_set(tmp_path)
    refused = next(r for r in info["rows"] if r["status_code"] == 429)
    text = render_recorded_decision(tmp_path, refused["placement_id"])
    assert "rejected (429 capacity): 0/5 substrates serving `m` eligible: 5 at capacity" in text
    assert "outcome  429 capacity" in text
    with pytest.raises(ValueError, match="no audit row with placement id or request id pl-nope"):
        render_recorded_decision(tmp_path, "pl-nope")


def test_explain_says_why_a_request_waited(tmp_path: Path) -> None:
    import dataclasses

    from inferplane.telemetry.audit import audit_row
    from tests.test_audit import record_for

    built = plane()
    decision = decide(built, request_id="waited")
    record = dataclasses.replace(record_for(built, decision), held_s=1.25,
                                 held_reason="0/5 substrates serving `m` eligible: 5 at capacity")
    log = AuditLog(str(tmp_path), "ingress-a", flush_interval_s=60.0)
    log.append(audit_row(record, built.fleet, built.policy))
    log.close()
    text = render_recorded_decision(tmp_path, decision.placement_id)
    assert "waited 1.250 s in the hold queue: 0/5 substrates serving `m` eligible: 5 at capacity" in text


# -- Issue #18: the residual view ----------------------------------------------------------------------


def test_the_residual_view_per_substrate(tmp_path: Path, capsys) -> None:
    made = audit_set(tmp_path / "audit")
    table = read_audit(tmp_path / "audit")
    by_sub = {g["substrate"]: g for g in summarise(table).residuals}
    ok_gpu = [r for r in made["rows"] if r["substrate"] == "gpu" and r["status_code"] == 200]
    assert by_sub["gpu"]["ttft_n"] == 10 == len(ok_gpu)  # the failed request on gpu has none
    expected = sorted(r["ttft_s"] / r["predicted_ttft_s"] for r in ok_gpu)
    assert by_sub["gpu"]["ttft"][0] == pytest.approx((expected[4] + expected[5]) / 2)
    assert set(by_sub) == {"gpu", "us-api", "sov"}
    code, out, _ = run(capsys, "report", str(tmp_path / "audit"), "--out", str(tmp_path / "r"))
    assert code == 0 and "prediction residuals of successful requests" in out
    assert re.search(r"gpu\s+10\s+[\d.]+\s+[\d.]+\s+10\s+[\d.]+\s+[\d.]+", out)
    assert (tmp_path / "r" / "residuals.png").read_bytes()[:4] == b"\x89PNG"


def test_rows_without_residuals_are_skipped(tmp_path: Path, capsys) -> None:
    audit_set(tmp_path / "audit")
    table = read_audit(tmp_path / "audit")
    for col in ("ttft_residual", "tpot_residual"):  # as an audit log written before the columns reads
        i = table.schema.get_field_index(col)
        table = table.set_column(i, col, pa.nulls(table.num_rows, pa.float64()))
    assert summarise(table).residuals == []
    from inferplane.telemetry.report import write_plots

    assert not any(p.name == "residuals.png" for p in write_plots(table, tmp_path / "r"))


def test_the_residual_plot_follows_a_drift_over_time(tmp_path: Path) -> None:
    from inferplane.telemetry.report import _bucketed, residual_medians

    made = audit_set(tmp_path / "audit")
    table, _, _ = _bucketed(read_audit(tmp_path / "audit"))
    series = residual_medians(table.filter(pa.compute.is_valid(table.column("substrate"))), "ttft_residual")
    gpu = [v for _, v in series["gpu"]]
    # gpu's observed TTFT rises 0.1 s -> 1.0 s over the run against one prediction: its median climbs.
    assert gpu == sorted(gpu) and gpu[-1] > 5 * gpu[0]
    assert len(made["rows"]) == 20
