"""A real Prometheus (Debian's ``prometheus`` binary) scraping a real plane: every query of the
Grafana dashboard and every recording rule evaluates through Prometheus's HTTP API, the ones whose
series the traffic produced return data, the counters agree with the audit log, and the shipped
alert rules load healthy.

Prometheus runs on loopback with a temporary data directory, scrapes the plane's one metrics
endpoint every second, evaluates the rules every second, and is terminated by pid at the end.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from deployments.runtime import free_loopback_port
from inferplane.telemetry.metrics import rejection_code_for
from tests.integration.conftest import EU_KEY, GLOBAL_KEY

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "configs" / "prometheus").glob("*.rules.yml"))
DASHBOARD = ROOT / "configs" / "grafana-dashboard.json"
THRIFTY_KEY = "sk-inferplane-test-thrifty"

# Dashboard variables: every tenant and substrate ("All"), a rate window that spans the whole run
# (1 s scrapes, so it always holds enough samples), and the dashboard's default range.
VARIABLES = {"$__rate_interval": "5m", "$__range": "15m", "$tenant": ".*", "$substrate": ".*"}

# Series the emulated plane cannot produce: no substrate of emulated.yaml reports GPU memory, KV
# cache or a provider's rate-limit headers (emulations report in-flight and queued requests).
NOT_EMULATED = {"inferplane_substrate_gpu_memory_used_ratio", "inferplane_substrate_kv_cache_usage_ratio",
                "inferplane_substrate_rate_limit_remaining_requests",
                "inferplane_substrate_rate_limit_remaining_tokens"}
# Recording rules that are empty in a short healthy run whatever is exported: the coefficient of
# variation needs a non-zero mean load at the instant of evaluation (the emulations' queues are
# always 0, their in-flight counts mostly 0 between requests).
EMPTY_IN_A_SHORT_RUN = {"inferplane:substrate_load:cv15m"}

def _rule_errors(prom: str) -> dict:
    """Each rule Prometheus could not evaluate and each target it could not scrape, with the error
    (for failure messages)."""
    groups = httpx.get(f"{prom}/api/v1/rules", timeout=30).json()["data"]["groups"]
    out = {r["name"]: r.get("lastError") for g in groups for r in g["rules"] if r.get("health") != "ok"}
    targets = httpx.get(f"{prom}/api/v1/targets", timeout=30).json()["data"]["activeTargets"]
    out.update({f"target {t['scrapeUrl']}": t.get("lastError") for t in targets if t.get("health") != "up"})
    return out


def _wait(predicate, timeout_s: float, what: str, step_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s:.0f} s")
        time.sleep(step_s)


@pytest.fixture(scope="module")
def prometheus(emulated_plane, tmp_path_factory):
    """Prometheus's base URL; the server scrapes ``emulated_plane`` and loads the shipped rules."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus not found: install Debian's prometheus package, as .ci/run does")
    work = tmp_path_factory.mktemp("prometheus")
    metrics = urlparse(emulated_plane.metrics_url)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [{"job_name": "inferplane", "metrics_path": metrics.path,
                            "static_configs": [{"targets": [metrics.netloc]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_loopback_port()
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [exe, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited {proc.returncode}: {(work / 'prometheus.log').read_text()[-2000:]}")
            try:
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait(ready, 60, "prometheus did not become ready")
        # Traffic must start after the first scrape: a counter Prometheus first sees at its final
        # value has no increase to rate (every ratio rule would be empty, as on a busy host it was).
        _wait(lambda: _query(url, 'up{job="inferplane"} == 1'), 60, "prometheus never scraped the plane")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def _scalar(prom: str, expr: str) -> float:
    result = _query(prom, expr)
    return float(result[0]["value"][1]) if result else 0.0


def _post(plane, key: str, model: str, **extra) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, **extra}
    r = httpx.post(f"{plane.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                   timeout=60)
    if extra.get("stream"):
        r.read()
    return r.status_code


def _send_traffic(plane) -> Counter:
    """A few dozen requests: served, spilled past an outage, and refused for several reasons."""
    import ray

    from deployments.placement_actor import NAMESPACE, actor_name

    actor = ray.get_actor(actor_name(plane.app_name), namespace=NAMESPACE)
    ray.get(actor.push_signal.remote("power_headroom", 0.8, "zone", "eu-central-1a"), timeout=10)
    sent: Counter = Counter()
    for i in range(16):
        sent[_post(plane, GLOBAL_KEY, "smollm2", stream=i % 4 == 0)] += 1
    for _ in range(4):
        sent[_post(plane, EU_KEY, "smollm2")] += 1
    for _ in range(3):
        sent[_post(plane, GLOBAL_KEY, "gpt-17")] += 1                       # 404 unknown_model
    for _ in range(3):
        sent[_post(plane, EU_KEY, "llama-3.1-8b-instant")] += 1             # 403: US-only model
    sent[_post(plane, "sk-not-a-key", "smollm2")] += 1                     # 401
    # The primary goes down: requests spill (primary_failed) and its circuit opens.
    primary = plane.substrate("local-gpu-emulated")
    primary.inject.remote(outage=True).result(timeout_s=10)
    try:
        for _ in range(5):
            sent[_post(plane, GLOBAL_KEY, "smollm2")] += 1
    finally:
        primary.inject.remote(outage=False).result(timeout_s=10)
    # The thrifty tenant's tiny budget: its first request costs more than the budget, later ones
    # are refused (402) once the spend has reached the actor's snapshot.
    sent[_post(plane, THRIFTY_KEY, "llama-3.1-8b-instant")] += 1
    deadline = time.monotonic() + 10
    while _post(plane, THRIFTY_KEY, "llama-3.1-8b-instant") == 200:
        sent[200] += 1
        assert time.monotonic() < deadline, "the thrifty tenant was never refused"
        time.sleep(0.3)
    sent[402] += 1
    return sent


def _exprs_of_the_dashboard() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted variable in {expr}"
            out.append((panel["title"], expr))
    return out


def _recording_rules() -> dict[str, str]:
    out = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            out |= {r["record"]: r["expr"] for r in group["rules"] if "record" in r}
    return out


def test_dashboard_queries_and_rules_through_a_real_prometheus(emulated_plane, prometheus):
    from inferplane.telemetry.audit import read_audit

    plane, prom = emulated_plane, prometheus
    sent = _send_traffic(plane)
    total = sum(sent.values())
    assert total >= 30 and sent[200] >= 20 and {401, 402, 403, 404} <= set(sent), sent

    # Every request has its audit row, and Prometheus has scraped the plane's counters for all of them.
    rows = _wait(lambda: (lambda rs: rs if len(rs) == total else None)(read_audit(plane.audit_dir).to_pylist()),
                 30, f"audit rows for all {total} requests")
    served = [r for r in rows if r["status_code"] == 200]
    refused = Counter(r["rejection_code"] or rejection_code_for(r["error_code"])
                      for r in rows if r["status_code"] != 200)
    assert Counter(r["status_code"] for r in rows) == sent

    def scraped() -> bool:
        return (_scalar(prom, "sum(inferplane_requests_total)") == len(served)
                and _scalar(prom, "sum(inferplane_rejections_total)") == sum(refused.values()))

    _wait(scraped, 60, "prometheus did not scrape counters matching the audit log")
    # Two scrapes more, so that a series first seen in that scrape has the two samples rate() needs.
    matched_at_s = time.time()
    _wait(lambda: _scalar(prom, 'timestamp(up{job="inferplane"})') > matched_at_s + 2.5, 30,
          "prometheus stopped scraping the plane")

    # The numbers agree with the audit log.
    by_code = {s["metric"]["code"]: float(s["value"][1])
               for s in _query(prom, "sum by (code) (inferplane_rejections_total)")}
    assert by_code == {code: float(n) for code, n in refused.items()}
    by_substrate = {s["metric"]["substrate"]: float(s["value"][1])
                    for s in _query(prom, 'sum by (substrate) (inferplane_requests_total{outcome="ok"})')}
    assert by_substrate == {k: float(n) for k, n in Counter(r["substrate"] for r in served).items()}
    spilled = sum(1 for r in served if r["spillover"])
    assert spilled >= 1
    assert _scalar(prom, 'sum(inferplane_placements_total{spillover="true"})') == spilled
    assert _scalar(prom, "sum(inferplane_spillovers_total)") == spilled
    assert _scalar(prom, "sum(inferplane_input_tokens_total)") == sum(r["input_tokens"] or 0 for r in served)
    assert _scalar(prom, "sum(inferplane_output_tokens_total)") == sum(r["output_tokens"] or 0 for r in served)
    assert math.isclose(_scalar(prom, "sum(inferplane_cost_usd_total)"), sum(r["cost_usd"] or 0.0 for r in served),
                        rel_tol=1e-9, abs_tol=1e-12)

    # Residuals: one per successful request (observed / predicted), the audit's and the histogram's.
    residuals = [r["ttft_residual"] for r in served if r["status_code"] == 200 and r["ttft_residual"] is not None]
    assert residuals and _scalar(prom, "sum(inferplane_ttft_residual_ratio_count)") == len(residuals)
    exported = {s["metric"]["__name__"] for s in _query(prom, '{__name__=~"inferplane_.+"}')}
    assert {"inferplane_tenant_spend_usd", "inferplane_tenant_budget_usd", "inferplane_substrate_drift",
            "inferplane_sovereignty_violations_total"} <= exported, exported
    assert _scalar(prom, "sum(inferplane_sovereignty_violations_total)") == 0
    may_be_empty = NOT_EMULATED

    # Every dashboard query evaluates; those over series the plane produced return data.
    empty = []
    for title, expr in _exprs_of_the_dashboard():
        if not _query(prom, expr):
            empty.append((title, expr))
    unexplained = [(t, e) for t, e in empty if not any(name in e for name in may_be_empty)]
    print(f"dashboard: {len(_exprs_of_the_dashboard()) - len(empty)} of {len(_exprs_of_the_dashboard())} "
          f"queries return data; empty: {[t for t, _ in empty]}")
    assert unexplained == []

    # Every recording rule's expression evaluates, and so does what Prometheus recorded from it.
    for name, expr in _recording_rules().items():
        result = _query(prom, expr)
        if name in EMPTY_IN_A_SHORT_RUN:
            continue
        # A rule built on another rule's output sees it one evaluation (1 s) later.
        result or _wait(lambda: _query(prom, expr), 30, f"recording rule {name} returned no data "
                        f"({_rule_errors(prom)})")
        _wait(lambda: _query(prom, name), 30, f"{name} was never recorded")

    # The alert rules load, every one of them, and evaluate without error.
    shipped = {r.get("alert") or r["record"] for path in RULE_FILES
               for g in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"] for r in g["rules"]}

    def rules_evaluated() -> dict | None:
        groups = httpx.get(f"{prom}/api/v1/rules", timeout=30).json()["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(loaded) == shipped
        # A rule not yet evaluated reports the zero time (0001-01-01...).
        return loaded if all(not r["lastEvaluation"].startswith("0001") for r in loaded.values()) else None

    loaded = _wait(rules_evaluated, 30, "rules were never evaluated")
    assert {n: (r["health"], r.get("lastError")) for n, r in loaded.items() if r["health"] != "ok"} == {}
    # A healthy run raises none of the plane's promise alerts.
    firing = {a["labels"]["alertname"] for a in httpx.get(f"{prom}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
              if a["state"] == "firing"}
    assert not firing & {"InferplaneSovereigntyViolation", "InferplaneAuditRowsDropped"}, firing
