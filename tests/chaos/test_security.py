"""Security: keys only as hashes (tenants) or from the environment (providers), compared in
constant time; planted secrets never in logs, metrics, audit files or error messages; no header,
body field or model alias takes a tenant to a substrate its policy forbids; nothing but loopback.

The plane exposes no HTTP status or explain endpoint at all (``inferplane status`` and
``explain`` read the placement actor through Ray, or a config and an audit dir on disk), so there
is no admin-key check to test: the test below proves those paths do not exist over HTTP.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import hmac
from pathlib import Path

import httpx
import pytest

from tests.chaos.conftest import PROVIDER_KEY, chaos_config_text, until
from tests.chaos.fake_provider import Phase
from tests.chaos.traffic import KEYS, Ask, burst

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

PROMPT_SECRET = "planted-prompt-secret-4b1d9e"
WRONG_KEY = "sk-planted-wrong-tenant-key-88c2"
PLAIN_TENANT_KEY = "sk-live-planted-plaintext-tenant-key-0001"
PLAIN_PROVIDER_KEY = "sk-live-planted-plaintext-provider-key-0002"
US = {"groq-class-emulated", "provider-api-emulated"}


def _post(plane, key: str, body: dict, headers: dict | None = None, path: str = "/v1/chat/completions"):
    return httpx.post(plane.url + path, json=body, headers={"Authorization": f"Bearer {key}", **(headers or {})},
                      timeout=60)


# -- keys in configs -------------------------------------------------------------------------------

def test_plain_text_tenant_key_in_a_config_is_a_config_error():
    from inferplane.config import parse_config
    from inferplane.config.errors import ConfigError

    text = chaos_config_text(9).replace(
        "5ed1199ba0d4ea80078a0989c5aaa60d9b5dbe8930d82591b416a88a94dea84b", PLAIN_TENANT_KEY)
    with pytest.raises(ConfigError) as exc:
        parse_config(text, source="tenants.yaml")
    message = str(exc.value)
    assert "api_keys_sha256" in message and "SHA-256" in message
    assert PLAIN_TENANT_KEY not in message, "the config error repeats the plain-text key"


def test_provider_key_in_a_config_is_refused_and_only_read_from_the_environment():
    from inferplane.config import parse_config
    from inferplane.config.errors import ConfigError
    from inferplane.config.schema import OpenAICompatibleSettings
    from substrate_adapters.openai_compatible import OpenAICompatibleAdapter

    text = chaos_config_text(9).replace("      api_key_env: INFERPLANE_CHAOS_PROVIDER_KEY",
                                        f"      api_key: {PLAIN_PROVIDER_KEY}")
    with pytest.raises(ConfigError) as exc:
        parse_config(text, source="providers.yaml")
    assert "api_key" in str(exc.value)
    assert PLAIN_PROVIDER_KEY not in str(exc.value), "the config error repeats the plain-text key"
    settings = OpenAICompatibleSettings(base_url="http://127.0.0.1:9/v1", api_key_env="INFERPLANE_CHAOS_UNSET")
    with pytest.raises(ValueError, match="INFERPLANE_CHAOS_UNSET"):
        OpenAICompatibleAdapter(settings, environ={})


def test_tenant_keys_are_compared_in_constant_time(monkeypatch):
    """Every stored digest is compared, whichever matches (no early exit), with hmac.compare_digest."""
    from inferplane import auth

    keys = [f"sk-tenant-{i}" for i in range(6)]
    tenants = auth.TenantKeys((f"t{i}", [hashlib.sha256(k.encode()).hexdigest()]) for i, k in enumerate(keys))
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for presented, tenant in ((keys[0], "t0"), (keys[-1], "t5"), ("sk-nobody", None)):
        calls.clear()
        assert tenants.tenant_for(f"Bearer {presented}") == tenant
        assert len(calls) == len(keys)


def test_provider_gets_the_environment_key_and_nothing_else(chaos_plane, fake_provider):
    fake_provider.set_phase(Phase.OK)
    before = sum(fake_provider.requests.values())
    r = _post(chaos_plane, KEYS["global-app"], {"model": "mistral-small", "max_tokens": 4,
                                                 "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["x-inferplane-substrate"] == "provider-fr-fake", r.text
    assert sum(fake_provider.requests.values()) > before
    assert fake_provider.bad_auth == 0


# -- planted secrets -------------------------------------------------------------------------------

def test_planted_secrets_appear_in_no_log_metric_audit_file_or_error(chaos_plane, fake_provider, report):
    import ray

    plane, provider = chaos_plane, fake_provider
    fig = report.scenario("8 security: planted secrets")
    chat = {"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": PROMPT_SECRET}]}
    bodies = []
    for key in (KEYS["global-app"], KEYS["eu-bank"]):
        for stream in (False, True):
            r = _post(plane, key, dict(chat, stream=stream))
            assert r.status_code == 200
            bodies.append(r.text)
    r = _post(plane, WRONG_KEY, chat)
    assert r.status_code == 401
    bodies.append(r.text)
    # A provider that echoes the caller's key in its error: a 400 is the request's fault and is
    # passed to the client (redacted); a 500 is re-placed on a fallback.
    provider_chat = dict(chat, model="mistral-small")
    try:
        until(lambda: plane.circuit("provider-fr-fake") == "closed", 20.0)
        provider.set_phase(Phase.ECHO_KEY_400)
        r = _post(plane, KEYS["global-app"], provider_chat)
        assert r.status_code == 400 and r.json()["error"]["code"] == "substrate_rejected_request", r.text
        assert "[redacted]" in r.json()["error"]["message"]
        bodies.append(r.text)
        provider.set_phase(Phase.ECHO_KEY_500)
        r = _post(plane, KEYS["global-app"], provider_chat)
        assert r.status_code == 200 and r.headers["x-inferplane-substrate"] != "provider-fr-fake"
        bodies.append(r.text)
    finally:
        provider.set_phase(Phase.OK)

    secrets = {"provider key": PROVIDER_KEY, "tenant key (global)": KEYS["global-app"],
               "tenant key (eu)": KEYS["eu-bank"], "wrong key": WRONG_KEY}
    for body in bodies:
        for name, secret in secrets.items():
            assert secret not in body, f"{name} in a response"
    # The audit rows of all of the above are on disk once flushed.
    until(lambda: len(plane.rows()) > 0 and any(r["status_code"] == 401 for r in plane.rows()), 10.0)
    found = []
    # Parquet files and whatever journal segments (``_journal/*.jsonl``) have not been released yet.
    audit_files = [p for p in glob.glob(f"{plane.audit_dir}/**/*", recursive=True) if Path(p).is_file()]
    assert any(p.endswith(".parquet") for p in audit_files)
    for path in audit_files:
        data = Path(path).read_bytes()
        found += [f"{name} in {path}" for name, s in {**secrets, "prompt": PROMPT_SECRET}.items() if s.encode() in data]
    metrics = httpx.get(plane.metrics_url, timeout=10).text
    found += [f"{name} in metrics" for name, s in {**secrets, "prompt": PROMPT_SECRET}.items() if s in metrics]
    log_dir = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    scanned = 0
    for path in log_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 100_000_000:
            data = path.read_bytes()
            scanned += 1
            found += [f"{name} in {path.name}" for name, s in {**secrets, "prompt": PROMPT_SECRET}.items()
                      if s.encode() in data]
    fig.sent, fig.answered = len(bodies), sum(1 for b in bodies if '"error"' not in b)
    fig.errors.update({"401/400 (planted)": len(bodies) - fig.answered})
    fig.note = (f"scanned {len(audit_files)} audit files, the metrics page, {scanned} Ray log files and "
                f"{len(bodies)} responses for 5 planted secrets: {len(found)} found")
    assert scanned > 10
    assert found == []


# -- policy cannot be widened ----------------------------------------------------------------------

SPOOF_HEADERS = [
    {"x-inferplane-substrate": "groq-class-emulated"}, {"x-inferplane-tenant": "global-app"},
    {"x-inferplane-jurisdiction": "US"}, {"x-inferplane-spillover": "true"},
    {"x-inferplane-sla-class": "batch"}, {"x-forwarded-for": "10.0.0.1"}, {"x-serve-route": "/"},
    {"Authorization": f"Bearer {KEYS['eu-bank']}, Bearer {KEYS['global-app']}"},
]
SPOOF_FIELDS = [
    {"substrate": "groq-class-emulated"}, {"user": "global-app"}, {"tenant": "global-app"},
    {"metadata": {"substrate": "groq-class-emulated", "jurisdiction": "US"}},
    {"extra_body": {"substrate": "provider-api-emulated"}}, {"route": "us-east-1a"},
]
MODEL_NAMES = ["smollm2", "SmolLM2", " smollm2", "smollm2 ", "smollm2-135m-instruct", "groq-class-emulated/smollm2",
               "smollm2@groq-class-emulated", "smollm2?substrate=groq-class-emulated", "../smollm2",
               "llama-3.1-8b-instant", "mistral-small"]


def test_no_header_body_field_or_alias_reaches_a_forbidden_substrate(chaos_plane, report):
    """The EU tenant, with every spoofing trick, is answered from the EU or refused; even with its
    EU capacity saturated it is refused (429), never answered from the US."""
    plane = chaos_plane
    fig = report.scenario("8 security: policy spoofing")
    base = {"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    statuses = []
    where = []

    def check(r):
        statuses.append(r.status_code)
        if r.status_code == 200:
            where.append(r.headers["x-inferplane-substrate"])
            assert plane.boundaries.allowed("eu-bank", r.headers["x-inferplane-substrate"]), r.headers
        else:
            assert r.status_code in (400, 401, 403, 404, 429, 503), r.text
            assert r.json()["error"]["message"]

    for headers in SPOOF_HEADERS:
        check(_post(plane, KEYS["eu-bank"], base, headers))
    for extra in SPOOF_FIELDS:
        check(_post(plane, KEYS["eu-bank"], {**base, **extra}))
    for model in MODEL_NAMES:
        r = _post(plane, KEYS["eu-bank"], dict(base, model=model))
        check(r)
        if model == "llama-3.1-8b-instant":
            assert r.status_code == 403 and r.json()["error"]["code"] == "jurisdiction"
    for path, body in (("/v1/completions", {"model": "llama-3.1-8b-instant", "prompt": "hi", "max_tokens": 4}),):
        check(_post(plane, KEYS["eu-bank"], body, path=path))
    models = httpx.get(plane.url + "/v1/models", headers={"Authorization": f"Bearer {KEYS['eu-bank']}"}, timeout=30)
    assert "llama-3.1-8b-instant" not in {m["id"] for m in models.json()["data"]}
    # Saturate the EU (primary 4 running + 8 queued, sovereign 4) with 6 s requests: what no EU slot
    # takes waits in the hold queue, and since no slot frees within the 5 s first-token deadline,
    # the overflow is refused (429) when its wait can no longer meet it, never sent to the US.
    asks = [Ask(tenant="eu-bank", max_tokens=600, stream=i % 2 == 0) for i in range(48)]
    replies = asyncio.run(burst(plane.url, asks))
    fig.add_replies(replies)
    fig.boundary_violations = len(plane.boundaries.violations(replies))
    fig.note = (f"{len(statuses)} spoofed requests: {sorted(set(statuses))}, answered from {sorted(set(where))}; "
                f"a burst of 48 6-second requests against an EU capacity of 16: {sum(r.answered for r in replies)} "
                "answered in the EU, "
                f"{sum(r.status == 429 for r in replies)} refused 429")
    assert plane.boundaries.violations(replies) == []
    assert all(r.answered or (r.status == 429 and r.error_code == "capacity") for r in replies), \
        [r.outcome for r in replies]
    assert any(r.status == 429 for r in replies), "the burst did not exceed EU capacity"
    assert not US & set(where)


def test_no_http_status_or_explain_endpoint_and_everything_on_loopback(chaos_plane):
    import psutil

    from inferplane.config.schema import Ingress, Telemetry

    plane = chaos_plane
    for path in ("/status", "/v1/status", "/explain", "/v1/explain", "/admin", "/v1/admin/status", "/metrics",
                 "/v1/placements", "/v1/fleet"):
        for key in (KEYS["global-app"], "admin"):
            r = httpx.get(plane.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert r.status_code == 404, (path, r.status_code, r.text[:200])
            assert r.json()["error"]["code"] == "not_found"
    # Defaults bind to loopback; `inferplane run` uses ingress.host unless --host says otherwise.
    assert Ingress().host == "127.0.0.1" and Telemetry().metrics_host == "127.0.0.1"
    ports = {int(plane.url.rsplit(":", 1)[1]), int(plane.metrics_url.split(":")[2].split("/")[0])}
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in ports]
    assert {c.laddr.port for c in listening} == ports
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
