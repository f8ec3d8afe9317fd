"""Telemetry on a real plane with two ingress replicas: the one scrape endpoint and the audit log
agree exactly with what was sent, a spillover is the same in header, metric and row, rows survive
a graceful shutdown, and planted secrets appear nowhere."""

from __future__ import annotations

import glob
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import EMULATED_CONFIG, EU_KEY, GLOBAL_KEY, _deploy

pytestmark = pytest.mark.integration

PROVIDER_KEY = "sk-planted-provider-secret-0123456789"
PROMPT_SECRET = "planted-prompt-text-do-not-log"

# A second model whose only substrate is a provider API that refuses connections (port 9 on
# loopback), reached with an API key from the environment.
BROKEN = """
  - name: provider-broken
    class: provider_api
    kind: openai_compatible
    models: [{name: broken-model, context_window_tokens: 8192}]
    topology: {region: us-east, zone: us-east-1c}
    jurisdiction: US
    capacity: {tier: burst, max_concurrent_requests: 8}
    latency: {base_ttft_ms: 50, prefill_tokens_per_s: 8000, decode_tokens_per_s: 100}
    openai_compatible:
      base_url: http://127.0.0.1:9/v1
      api_key_env: INFERPLANE_TEST_PROVIDER_KEY
      connect_timeout_s: 1
"""


@pytest.fixture(scope="module")
def plane():
    import ray

    os.environ["INFERPLANE_TEST_PROVIDER_KEY"] = PROVIDER_KEY  # inherited by the local raylet's workers
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    text = EMULATED_CONFIG.read_text()
    text = text.replace("models:\n  - {name: smollm2-135m-instruct", BROKEN.rstrip("\n") + "\nmodels:\n"
                        "  - {name: broken-model, primary_substrate: provider-broken}\n"
                        "  - {name: smollm2-135m-instruct", 1)
    text = text.replace("  port: 18400", "  port: 18400\n  replicas: {num_replicas: 2}")
    try:
        p, teardown = _deploy(text, "inferplane-telemetry", 120)
        yield p, teardown
    finally:
        ray.shutdown()


def _post(p, key, body, headers=None):
    h = {"Authorization": f"Bearer {key}", **(headers or {})}
    return httpx.post(f"{p.url}/v1/chat/completions", json=body, headers=h, timeout=30)


def _chat(model="smollm2", **extra):
    return {"model": model, "messages": [{"role": "user", "content": PROMPT_SECRET}], "max_tokens": 4, **extra}


def _scrape(p) -> dict[str, float]:
    """Every sample of the one scrape endpoint, keyed by name and sorted labels."""
    text = httpx.get(p.metrics_url, timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


def _sum(samples: dict[str, float], name: str, **labels) -> float:
    total = 0.0
    for key, value in samples.items():
        if not key.startswith(name + "["):
            continue
        if all(f"('{k}', '{v}')" in key for k, v in labels.items()):
            total += value
    return total


def _rows(p):
    from inferplane.telemetry.audit import read_audit

    return read_audit(p.audit_dir).to_pylist()


def _eventually(fn, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def test_counters_and_rows_match_what_was_sent_across_two_ingress_replicas(plane):
    p, _ = plane
    sent = Counter()
    for _ in range(12):
        sent[_post(p, GLOBAL_KEY, _chat()).status_code] += 1
    for _ in range(3):
        sent[_post(p, GLOBAL_KEY, _chat(stream=True)).status_code] += 1
    sent[_post(p, "sk-not-a-key", _chat()).status_code] += 1                       # 401
    sent[_post(p, GLOBAL_KEY, {"model": "smollm2"}).status_code] += 1             # 400
    sent[_post(p, EU_KEY, _chat("llama-3.1-8b-instant")).status_code] += 1        # 403
    sent[_post(p, GLOBAL_KEY, _chat("gpt-17")).status_code] += 1                  # 404
    assert sent == Counter({200: 15, 401: 1, 400: 1, 403: 1, 404: 1})

    def rows_complete():
        rows = _rows(p)
        assert Counter(r["status_code"] for r in rows) == sent
        return rows

    rows = _eventually(rows_complete)
    assert len({r["ingress_id"] for r in rows}) == 2, "both ingress replicas served and wrote rows"
    assert len({r["request_id"] for r in rows}) == len(rows)

    def metrics_complete():
        m = _scrape(p)
        assert _sum(m, "inferplane_placements_total") == 15
        assert _sum(m, "inferplane_rejections_total", code="auth") == 1
        assert _sum(m, "inferplane_rejections_total", code="invalid") == 1
        assert _sum(m, "inferplane_rejections_total", code="jurisdiction") == 1
        return m

    _eventually(metrics_complete)


def test_spillover_is_the_same_in_header_metric_and_row(plane):
    p, _ = plane
    before = _sum(_scrape(p), "inferplane_spillovers_total", reason="primary_failed")
    p.substrate("local-gpu-emulated").inject.remote(outage=True).result(timeout_s=10)
    try:
        r = _post(p, GLOBAL_KEY, _chat())
    finally:
        p.substrate("local-gpu-emulated").inject.remote(outage=False).result(timeout_s=10)
    assert r.headers["x-inferplane-spillover"] == "true"
    reason = r.headers["x-inferplane-spillover-reason"]
    assert reason == "primary_failed"
    pid = r.headers["x-inferplane-placement-id"]

    def row_and_metric():
        row = next((x for x in _rows(p) if x["placement_id"] == pid), None)
        assert row is not None, "row not flushed yet"
        assert row["spillover"] is True and row["spillover_reason"] == reason
        assert row["substrate"] == r.headers["x-inferplane-substrate"] and row["attempts"] == 2
        assert _sum(_scrape(p), "inferplane_spillovers_total", reason=reason) == before + 1
        return row

    row = _eventually(row_and_metric)
    assert row["boundary"] in {"jurisdiction", "region", "zone"}


def test_failed_provider_requests_are_refused_clearly_and_leak_no_secret(plane):
    p, _ = plane
    r = _post(p, GLOBAL_KEY, _chat("broken-model"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "excluded"
    assert PROVIDER_KEY not in r.text

    def row_written():
        assert any(x["status_code"] == 503 and x["model"] == "broken-model" for x in _rows(p))

    _eventually(row_written)
    metrics_text = httpx.get(p.metrics_url, timeout=10).text
    for secret in (PROVIDER_KEY, GLOBAL_KEY, EU_KEY, PROMPT_SECRET):
        assert secret not in metrics_text
        for path in glob.glob(f"{p.audit_dir}/**/*", recursive=True):  # Parquet and journal segments
            if Path(path).is_file():
                assert secret.encode() not in Path(path).read_bytes(), path
    import ray

    log_dir = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in log_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            for secret in (PROVIDER_KEY, GLOBAL_KEY, EU_KEY):
                assert secret.encode() not in data, f"{secret[:12]}... found in {path}"


def test_graceful_shutdown_loses_no_row(plane):
    p, teardown = plane
    ids = set()
    for _ in range(6):
        r = _post(p, GLOBAL_KEY, _chat())
        assert r.status_code == 200
        ids.add(r.headers["x-inferplane-placement-id"])
    teardown()  # serve.delete: replicas shut down gracefully and flush on the way out
    rows = _rows(p)
    assert ids <= {r["placement_id"] for r in rows}
    assert len({r["request_id"] for r in rows}) == len(rows)
