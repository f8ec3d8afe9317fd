"""The Grafana dashboard shipped in configs/: valid JSON whose every metric exists in PlaneMetrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inferplane.placement.signals import CircuitState, Reading, SubstrateSignals
from inferplane.telemetry.metrics import LabelVocabulary, MetricsOutbox, PlaneMetrics
from tests.builders import NOW, snapshot
from tests.test_audit import plane
from tests.test_metrics import sent_by_ingress

DASHBOARD = Path(__file__).resolve().parents[1] / "configs" / "grafana-dashboard.json"
METRIC_RE = re.compile(r"\binferplane_[a-z0-9_]+")


def exprs(dashboard: dict) -> list[str]:
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    out += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return out


def populated_sample_names() -> set[str]:
    """Every series PlaneMetrics can expose, each with at least one sample."""
    built = plane(budget={"usd_per_period": 10.0, "period": "day"})  # the budget gauges need one
    metrics = PlaneMetrics(LabelVocabulary.of(built.fleet, built.policy))
    outbox = MetricsOutbox()
    sent_by_ingress(built, outbox, placed=2, spilled=2, refused=1, auth=1, tag="x")
    outbox.delta.record_audit_dropped(1)
    metrics.apply_batch("ingress-a", outbox.pending())
    every = SubstrateSignals(
        in_flight=Reading(1, NOW), queued=Reading(0, NOW), gpu_memory_used_ratio=Reading(0.5, NOW),
        kv_cache_usage=Reading(0.5, NOW), rate_limit_requests_remaining=Reading(10, NOW),
        rate_limit_tokens_remaining=Reading(1000, NOW), recent_ttft_s=Reading(0.1, NOW),
        recent_tpot_s=Reading(0.01, NOW), error_rate=Reading(0.0, NOW), circuit=CircuitState.CLOSED,
        external=(("power_headroom", Reading(0.7, NOW)),))
    metrics.set_signals(snapshot(built, {"gpu": every}), NOW)
    metrics.set_ingress("ingress-a", 3, 0.1)
    metrics.set_replicas({"gpu": {"live": 1, "stopping": 0, "starting": 1, "target": 2}}, {"gpu": 60.0})
    text = generate_latest(metrics.registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_the_dashboard_is_valid_json_with_unique_panels_that_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] == "inferplane" and dashboard["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}"


def test_every_metric_the_dashboard_uses_is_exposed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {name for e in exprs(dashboard) for name in METRIC_RE.findall(e)}
    exposed = populated_sample_names()
    assert used - exposed == set()


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    text = "\n".join(exprs(dashboard))
    for needed in ("inferplane_placements_total", "inferplane_spillovers_total", "inferplane_rejections_total",
                   "inferplane_request_duration_seconds_bucket", "inferplane_time_to_first_token_seconds_bucket",
                   "inferplane_cost_usd_total", "inferplane_substrate_in_flight_requests",
                   "inferplane_substrate_queued_requests", "inferplane_substrate_gpu_memory_used_ratio",
                   "inferplane_substrate_kv_cache_usage_ratio", "inferplane_substrate_rate_limit_remaining_requests",
                   "inferplane_substrate_circuit_state", "inferplane_substrate_signal_age_seconds",
                   "inferplane_ingress_snapshot_age_seconds"):
        assert needed in text, needed
    assert "histogram_quantile(0.95, sum by (le, substrate)" in text
    assert "sum by (tenant) (rate(inferplane_cost_usd_total" in text
    # Every exposed metric family appears somewhere on the dashboard.
    families = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in populated_sample_names()}
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in METRIC_RE.findall(text)}
    assert families - shown == set()



