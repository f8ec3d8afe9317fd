"""Planted secrets (a provider API key, a tenant key, prompt and completion text) reach no byte of
the audit files and no log line, wherever a client or an upstream could slip them in."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from inferplane.auth import TenantKeys
from inferplane.placement import place
from inferplane.plane.record import RequestRecord
from inferplane.telemetry.audit import AuditLog, audit_row, read_audit
from inferplane.telemetry.cost import request_cost
from inferplane.telemetry.journal import Journal
from tests.builders import build_doc, fleet, request, snapshot, substrate

PROVIDER_KEY = "sk-provider-PLANTED-3f9a1c77e0b24d18"
TENANT_KEY = "sk-tenant-PLANTED-b81d4e2a95c6f037"
PROMPT = "PLANTED-PROMPT: the merger closes on friday, tell no one"
COMPLETION = "PLANTED-COMPLETION: understood, the merger closes on friday"
SECRETS = (PROVIDER_KEY, TENANT_KEY, PROMPT, COMPLETION)
T0 = 1_750_000_000.0


def secret_fleet(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PLANTED_PROVIDER_KEY", PROVIDER_KEY)
    provider = substrate("prov").kind("openai_compatible").jurisdiction("US").zone("us-east", "us-east-1a").obj()
    provider["openai_compatible"]["api_key_env"] = "PLANTED_PROVIDER_KEY"
    doc = fleet(substrate("gpu").kind("vllm").cls("gpu_cluster"), provider).tenant("acme-bank").doc()
    doc["tenants"][0]["api_keys_sha256"] = [hashlib.sha256(TENANT_KEY.encode()).hexdigest()]
    doc["ingress"] = {"topology": {"region": "eu-central", "zone": "eu-central-1a"}}
    return build_doc(doc)


def record(built, request_id: str, received: float, *, tenant, model, sla_class, decision, status: int,
           error: str | None, ttft: float | None = 0.1, e2e: float | None = 0.5, tokens_in: int | None = 10,
           tokens_out: int | None = 5, streamed: bool = True) -> RequestRecord:
    """A request's record as the ingress makes it (the key, prompt and completion are never passed)."""
    cost = None
    if decision is not None and decision.placed:
        cost = request_cost(built.fleet.substrate(decision.substrate), tokens_in or 0, tokens_out or 0, e2e or 0.0,
                            "eu-central")
    return RequestRecord(
        request_id=request_id, ingress_id="ingress-a", ingress_region="eu-central", received_at_s=received,
        finished_at_s=received + 0.5, tenant=tenant, model=model, sla_class=sla_class, streamed=streamed,
        decision=decision, snapshot_age_s=None if decision is None else 0.01, status_code=status,
        error_code=error, ttft_s=ttft, e2e_s=e2e, input_tokens=tokens_in, output_tokens=tokens_out, cost=cost,
        config_hash=built.policy.policy_hash)


def records_with_planted_secrets(built) -> list[RequestRecord]:
    """Every way a secret could reach a record: the client's key in the model field, prompt text in
    the SLA-class header, a key or completion text in an upstream error code, a bad key."""
    keys = TenantKeys((t.name, t.api_keys_sha256) for t in built.config.tenants)
    tenant = keys.tenant_for(f"Bearer {TENANT_KEY}")
    assert tenant == "acme-bank"
    snap = snapshot(built)
    cases = [
        # (model field, SLA-class header, error code, status)
        ("m", "interactive", None, 200),
        (TENANT_KEY, "interactive", "unknown_model", 404),
        ("m", PROMPT, "unknown_sla_class", 400),
        (COMPLETION, PROMPT, None, 404),
        ("m", "interactive", f"upstream rejected key {PROVIDER_KEY}", 502),
        ("m", "interactive", COMPLETION, 502),
    ]
    records = []
    for i, (model, sla_class, error, status) in enumerate(cases):
        decision = place(request(request_id=f"req-{i}", tenant=tenant, model=model, sla_class=sla_class,
                                 ingress_region="eu-central"), snap, built.policy)
        records.append(record(built, f"req-{i}", T0 + i, tenant=tenant, model=model, sla_class=sla_class,
                              decision=decision, status=status, error=error))
    # Refused before placement: a wrong key (the key itself is never passed), a body that did not parse.
    keys.tenant_for(f"Bearer {TENANT_KEY}x")
    records.append(record(built, "req-bad-key", T0 + 10, tenant=None, model=TENANT_KEY, sla_class=PROMPT,
                          decision=None, status=401, error="invalid_api_key", ttft=None, e2e=0.001, tokens_in=None,
                          tokens_out=None, streamed=False))
    return records


def rows_with_planted_secrets(built) -> list[dict]:
    return [audit_row(r, built.fleet, built.policy) for r in records_with_planted_secrets(built)]


def all_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in all_strings(k) + all_strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in all_strings(v)]
    return []


@pytest.mark.parametrize("compression", [None, "zstd"], ids=["uncompressed", "zstd"])
def test_no_secret_in_any_audit_byte_or_log_line(tmp_path: Path, monkeypatch, caplog, compression) -> None:
    caplog.set_level(logging.DEBUG)
    built = secret_fleet(monkeypatch)
    rows = rows_with_planted_secrets(built)
    assert rows[0]["substrate"] == "gpu" and rows[0]["decision_json"]  # a full row is among them
    for row in rows:
        for text in all_strings(row):
            for secret in SECRETS:
                assert secret not in text, f"{secret!r} in a row value"
    with AuditLog(tmp_path, "ingress-a", background=False, compression=compression) as log:
        for row in rows:
            log.append(row)
        log.flush()
        for row in rows:  # a second file, then a compaction on close
            log.append(dict(row, request_id=row["request_id"] + "-again"))
        log.flush()

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    raw = b"".join(p.read_bytes() for p in files)
    if compression is None:
        assert b"acme-bank" in raw and b"interactive" in raw  # the scan does see plain strings
    for secret in SECRETS:
        assert secret.encode() not in raw
        for path in files:
            assert secret not in str(path)
    table = read_audit(tmp_path)
    assert table.num_rows == 2 * len(rows)
    for text in all_strings(table.to_pylist()):
        for secret in SECRETS:
            assert secret not in text
    for secret in SECRETS:
        assert secret not in caplog.text


def test_no_secret_in_any_journal_byte(tmp_path: Path, monkeypatch, caplog) -> None:
    """The journal holds the records, redacted as the rows are: no byte a row would not carry."""
    caplog.set_level(logging.DEBUG)
    built = secret_fleet(monkeypatch)
    journal = Journal(tmp_path, "ingress-a", fleet=built.fleet, policy=built.policy)
    for r in records_with_planted_secrets(built):
        journal.write(r)
    assert journal.failed_writes == 0
    (segment,) = (tmp_path / "_journal").iterdir()
    raw = segment.read_bytes()
    assert raw.count(b"\n") == 7 and b"acme-bank" in raw  # the scan does see plain strings
    for secret in SECRETS:
        assert secret.encode() not in raw
        assert secret not in segment.name
        assert secret not in caplog.text


def test_what_a_client_typed_is_recorded_as_a_digest() -> None:
    built = fleet(substrate("gpu")).build()
    decision = place(request(model=TENANT_KEY), snapshot(built), built.policy)
    row = audit_row(record(built, "r", T0, tenant="t", model=TENANT_KEY, sla_class="interactive",
                           decision=decision, status=404, error="unknown_model", ttft=None, e2e=0.001,
                           tokens_in=None, tokens_out=None, streamed=False), built.fleet, built.policy)
    digest = "unknown:" + hashlib.sha256(TENANT_KEY.encode()).hexdigest()[:12]
    assert row["model"] == digest
    assert row["rejection_message"] == f"model `{digest}` does not exist"
