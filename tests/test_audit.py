"""The audit row (derived from the decision) and the Parquet audit log (no row lost or doubled)."""

from __future__ import annotations

import dataclasses

import json
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from inferplane.placement import PlacementDecision, place
from inferplane.placement.decision import SpilloverReason
from inferplane.placement.filters import RejectionCode
from inferplane.plane.record import RequestRecord
from inferplane.telemetry import audit as audit_module
from inferplane.telemetry.audit import (
    AUDIT_SCHEMA,
    AUDIT_SCHEMA_VERSION,
    COLUMNS,
    AuditLog,
    audit_files,
    audit_row,
    boundary_crossed,
    decision_from_record,
    read_audit,
    redacted,
    request_ids,
)
from inferplane.telemetry.cost import request_cost
from tests.builders import NOW, fleet, request, signals, snapshot, substrate

INGRESS_REGION, INGRESS_ZONE = "eu-central", "eu-central-1a"
T0 = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
T0_DATE = "2025-06-15"
CONFIG_MISMATCH = "0" * 16


# -------------------------------------------------------------------------------------------------
# Builders shared with the report and metrics tests


def plane(tenant: str = "t", budget: dict | None = None):
    """gpu (primary, DE, eu-central-1a), sov (DE, eu-central-1b), de-west (DE, eu-west),
    eu-api (EU, eu-west), us-api (US, us-east). 4 slots each; distinct prices. ``budget``: the
    tenant's, if any."""
    return (fleet(
        substrate("gpu").kind("vllm").cls("gpu_cluster").jurisdiction("DE").zone("eu-central", "eu-central-1a")
        .capacity(4).cost(gpu_hour=3.6, gpus=1),
        substrate("sov").cls("sovereign_onprem").jurisdiction("DE").zone("eu-central", "eu-central-1b")
        .capacity(4).cost(gpu_hour=7.2, gpus=1),
        substrate("de-west").cls("gpu_cluster").jurisdiction("DE").zone("eu-west", "eu-west-1a")
        .capacity(4).cost(gpu_hour=3.6, gpus=1, egress_per_gb=0.05),
        substrate("eu-api").cls("provider_api").jurisdiction("EU").zone("eu-west", "eu-west-1b")
        .capacity(4).tier("burst").cost(input_per_1m=1.0, output_per_1m=2.0, egress_per_gb=0.09),
        substrate("us-api").cls("provider_api").jurisdiction("US").zone("us-east", "us-east-1a")
        .capacity(4).tier("burst").cost(input_per_1m=0.15, output_per_1m=0.6, egress_per_gb=0.09),
    ).tenant(tenant, budget=budget).sla("interactive", ttft_ms=1500, e2e_ms=20_000).sla("batch", ttft_ms=60_000, e2e_ms=600_000)
        .tenant("other", allowed=["DE"], allowed_sla=["batch"]).ingress(INGRESS_REGION, INGRESS_ZONE).build())


def decide(built, *, busy=(), request_id: str = "req-1", tenant: str = "t", model: str = "m",
           sla: str = "interactive", exclude=(), input_tokens: int = 1000, max_tokens: int = 200,
           attempt: int = 1) -> PlacementDecision:
    """A real decision: substrates in ``busy`` are at capacity, the rest idle."""
    snap = snapshot(built, {name: signals(in_flight=4, kv=0.0) for name in busy}, version=7)
    req = request(request_id=request_id, tenant=tenant, model=model, sla_class=sla, exclude=exclude,
                  input_tokens=input_tokens, max_output_tokens=max_tokens, ingress_region=INGRESS_REGION,
                  ingress_zone=INGRESS_ZONE, attempt=attempt)
    return place(req, snap, built.policy)


def outcome(*, status: int = 200, error: str | None = None, ttft: float | None = 0.25, e2e: float | None = 2.0,
            tokens_in: int | None = 1000, tokens_out: int | None = 201, streamed: bool = False,
            at: float = T0 + 2.0) -> dict:
    """How a request ended: the ``RequestRecord`` fields the ingress fills in when it ends."""
    return {"status_code": status, "error_code": error, "ttft_s": ttft, "e2e_s": e2e, "input_tokens": tokens_in,
            "output_tokens": tokens_out, "streamed": streamed, "finished_at_s": at}


def record_for(built, decision: PlacementDecision | None, *, received: float = T0, out: dict | None = None,
               request_id: str | None = None, tenant: str | None = "t", model: str | None = "m",
               sla_class: str | None = "interactive", ingress_id: str = "ingress-a",
               config_hash: str | None = None) -> RequestRecord:
    """The record the ingress makes of a request: cost as it attributes it (``request_cost`` of the
    chosen substrate with the outcome's tokens and time, 0 where unknown), written under
    ``built``'s config unless ``config_hash`` says otherwise."""
    out = out or outcome(at=received + 2.0)
    cost = None
    if decision is not None and decision.placed:
        cost = request_cost(built.fleet.substrate(decision.substrate), out["input_tokens"] or 0,
                            out["output_tokens"] or 0, out["e2e_s"] or 0.0, INGRESS_REGION)
    return RequestRecord(
        request_id=request_id or (decision.request_id if decision else "req-x"), ingress_id=ingress_id,
        ingress_region=INGRESS_REGION, received_at_s=received, tenant=tenant, model=model, sla_class=sla_class,
        decision=decision, snapshot_age_s=None if decision is None else 0.125, cost=cost,
        config_hash=config_hash or built.policy.policy_hash, **out)


def row_for(built, decision: PlacementDecision | None, *, with_sla: bool = True, **kw) -> dict:
    """``audit_row`` of ``record_for(built, decision, **kw)``. ``with_sla=False``: the row as a replica
    running another config rebuilds it from the journal (no deadlines, no substrate facts)."""
    record = record_for(built, decision, **kw, **({} if with_sla else {"config_hash": CONFIG_MISMATCH}))
    return audit_row(record, built.fleet, built.policy)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def template_row(built) -> dict:
    return row_for(built, decide(built))


def rows_numbered(template: dict, n: int, *, start: int = 0, prefix: str = "r", received: float = T0) -> list[dict]:
    """``n`` copies of ``template`` with distinct request ids, one second apart."""
    return [dict(template, request_id=f"{prefix}-{i:06d}",
                 time=datetime.fromtimestamp(received + i, tz=UTC)) for i in range(start, start + n)]


# -------------------------------------------------------------------------------------------------
# The row


def test_a_placed_row_is_derived_from_the_decision() -> None:
    built = plane()
    d = decide(built)
    row = row_for(built, d)
    assert list(row) == list(COLUMNS)
    assert (row["placement_id"], row["request_id"], row["tenant"], row["model"], row["sla_class"]) == (
        d.placement_id, d.request_id, "t", "m", "interactive")
    assert (row["substrate"], row["substrate_class"], row["substrate_kind"], row["jurisdiction"], row["region"],
            row["zone"]) == ("gpu", "gpu_cluster", "vllm", "DE", "eu-central", "eu-central-1a")
    assert (row["spillover"], row["spillover_reason"], row["boundary"]) == (False, None, "none")
    assert row["primary_substrate"] == "gpu"
    assert (row["candidate_count"], row["eligible_count"]) == (5, 5)
    assert (row["rejections"], row["rejection_counts"], row["rejection_code"]) == (None, {}, None)
    assert (row["predicted_ttft_s"], row["predicted_e2e_s"], row["estimated_cost_usd"]) == (
        d.predicted_ttft_s, d.predicted_e2e_s, d.estimated_cost_usd)
    assert (row["snapshot_version"], row["snapshot_age_s"], row["policy_hash"]) == (7, 0.125, d.policy_hash)
    assert row["time"] == datetime(2025, 6, 15, 15, 6, 40, tzinfo=UTC)
    assert row["held_s"] == 0.0
    held = audit_row(dataclasses.replace(record_for(built, d), held_s=0.75), built.fleet, built.policy)
    assert held["held_s"] == 0.75
    assert row["schema_version"] == AUDIT_SCHEMA_VERSION
    # gpu: $3.60 / h / 4 slots = $0.00025 per slot-second, 2 s end to end.
    assert row["cost_usd"] == pytest.approx(0.0005, rel=1e-12)
    assert (row["cost_tokens_usd"], row["cost_egress_usd"]) == (0.0, 0.0)
    # 200 tokens after the first in 1.75 s.
    assert row["tpot_s"] == pytest.approx(1.75 / 200, rel=1e-12)


def test_the_recorded_decision_is_the_decision() -> None:
    built = plane()
    for d in (decide(built), decide(built, busy=("gpu",)), decide(built, busy=("gpu", "sov", "de-west", "eu-api",
                                                                                "us-api"))):
        record = json.loads(row_for(built, d)["decision_json"])
        assert decision_from_record(record) == d
        assert {c["name"]: (c["substrate_class"], c["zone"]) for c in record["candidates"]}["us-api"] == (
            "provider_api", "us-east-1a")


def test_a_spillover_records_reason_boundary_and_extra_cost() -> None:
    built = plane()
    # Only us-api is free: the primary is saturated, the request leaves DE.
    d = decide(built, busy=("gpu", "sov", "de-west", "eu-api"))
    assert (d.substrate, d.spillover_reason) == ("us-api", SpilloverReason.PRIMARY_SATURATED)
    row = row_for(built, d, out=outcome(tokens_in=1000, tokens_out=200, e2e=2.0))
    assert (row["spillover"], row["spillover_reason"], row["boundary"]) == (True, "primary_saturated", "jurisdiction")
    assert (row["rejections"], row["rejection_counts"]) == ("4 at capacity", {"capacity": 4})
    # us-api: 1000 x 0.15e-6 + 200 x 0.6e-6 = $0.00027 of tokens; egress (1200 x 4 bytes) x 9e-11.
    egress = 4800 * 0.09e-9
    assert row["cost_usd"] == pytest.approx(0.00027 + egress, rel=1e-12)
    assert row["cost_egress_usd"] == pytest.approx(egress, rel=1e-12)
    # On the primary the same work costs 2 s of a slot: $0.0005.
    assert row["spillover_extra_cost_actual_usd"] == pytest.approx(0.00027 + egress - 0.0005, rel=1e-12)
    # The primary was rejected before it was estimated: no estimated difference.
    assert row["spillover_extra_cost_usd"] is None


def test_extra_cost_against_the_primarys_estimate_when_it_was_estimated() -> None:
    # In `scored` mode a cheaper substrate outscores an eligible primary, which was estimated.
    scored = (fleet(
        substrate("gpu").kind("vllm").cls("gpu_cluster").jurisdiction("DE").zone("eu-central", "eu-central-1a")
        .capacity(4).cost(gpu_hour=36.0, gpus=1).latency(base_ttft_ms=900),
        substrate("cheap").cls("provider_api").jurisdiction("DE").zone("eu-central", "eu-central-1b")
        .capacity(4).cost(input_per_1m=0.01, output_per_1m=0.01),
    ).spillover(mode="scored").weights(cost=1.0).ingress(INGRESS_REGION, INGRESS_ZONE).build())
    d = decide(scored)
    assert (d.substrate, d.spillover_reason) == ("cheap", SpilloverReason.PRIMARY_OUTSCORED)
    primary = next(c for c in d.candidates if c.name == "gpu")
    row = row_for(scored, d)
    assert row["spillover_extra_cost_usd"] == pytest.approx(d.estimated_cost_usd - primary.cost_usd, rel=1e-12)
    assert row["spillover_extra_cost_usd"] < 0  # spilling saved money here
    assert row["boundary"] == "zone"


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [("gpu", "none"), ("sov", "zone"), ("de-west", "region"), ("eu-api", "jurisdiction"), ("us-api", "jurisdiction")],
)
def test_boundary_is_the_widest_one_crossed(chosen: str, expected: str) -> None:
    built = plane()
    assert boundary_crossed(built.fleet.substrate("gpu"), built.fleet.substrate(chosen)) == expected


def test_an_unknown_primary_counts_as_the_widest_boundary() -> None:
    built = plane()
    assert boundary_crossed(None, built.fleet.substrate("sov")) == "jurisdiction"
    assert boundary_crossed(None, None) == "none"


def test_a_request_nothing_could_take() -> None:
    built = plane()
    d = decide(built, busy=("gpu", "sov", "de-west", "eu-api", "us-api"))
    row = row_for(built, d, out=outcome(status=429, error="capacity", ttft=None, e2e=0.002, tokens_out=None))
    assert row["substrate"] is None and row["placement_id"] == d.placement_id
    assert (row["rejection_code"], row["status_code"], row["error_code"]) == ("capacity", 429, "capacity")
    assert row["rejection_message"] == d.rejection_message
    assert row["rejections"] == "5 at capacity"
    assert (row["cost_usd"], row["spillover"], row["boundary"]) == (None, False, "none")
    assert row["met_sla"] is False


def test_a_request_refused_before_placement() -> None:
    built = plane()
    row = row_for(built, None, tenant=None, model="m", sla_class=None, request_id="req-bad-key",
                  out=outcome(status=401, error="invalid_api_key", ttft=None, e2e=0.001, tokens_in=None,
                              tokens_out=None))
    assert (row["tenant"], row["placement_id"], row["substrate"], row["decision_json"]) == (None, None, None, None)
    assert (row["status_code"], row["error_code"], row["candidate_count"], row["snapshot_age_s"]) == (
        401, "invalid_api_key", 0, None)
    assert row["met_sla"] is None


def test_sla_attainment_is_recorded_with_the_deadlines() -> None:
    built = plane()
    d = decide(built)
    met = row_for(built, d, out=outcome(ttft=1.5, e2e=20.0))
    late = row_for(built, d, out=outcome(ttft=1.5001, e2e=3.0))
    failed = row_for(built, d, out=outcome(status=502, error="substrate_error", ttft=0.1, e2e=1.0))
    unknown = row_for(built, d, with_sla=False)
    assert (met["ttft_deadline_s"], met["e2e_deadline_s"]) == (1.5, 20.0)
    assert (met["met_sla"], late["met_sla"], failed["met_sla"], unknown["met_sla"]) == (True, False, False, None)


def test_aliases_are_recorded_by_their_canonical_name() -> None:
    built = fleet(substrate("a")).model("m", aliases=["m-latest"]).build()
    assert row_for(built, None, model="m-latest", sla_class=None)["model"] == "m"


def test_the_schema_is_documented_column_by_column() -> None:
    documented = re.findall(r"^(\w+)\s{2,}(?:int|string|timestamp|bool|float|map)",
                            audit_module.__doc__, flags=re.MULTILINE)
    assert tuple(documented) == COLUMNS
    assert AUDIT_SCHEMA.metadata[b"inferplane.audit.schema_version"] == str(AUDIT_SCHEMA_VERSION).encode()


# -------------------------------------------------------------------------------------------------
# The log


def test_rows_round_trip(tmp_path: Path) -> None:
    built = plane()
    rows = [row_for(built, decide(built, request_id=f"req-{i}", busy=("gpu",) if i % 2 else ()),
                    received=T0 + i) for i in range(10)]
    rows.append(row_for(built, None, tenant=None, sla_class=None, received=T0 + 11,
                        out=outcome(status=401, error="invalid_api_key", ttft=None, e2e=0.001, tokens_in=None,
                                    tokens_out=None)))
    with AuditLog(tmp_path, "ingress-a", background=False) as log:
        for row in rows:
            log.append(row)
        assert log.flush() == len(rows)
        assert read_audit(tmp_path).to_pylist() == [
            dict(r, rejection_counts=list(r["rejection_counts"].items())) for r in rows]


def test_a_flush_writes_one_complete_file_per_date_under_hive_partitions(tmp_path: Path) -> None:
    built = plane()
    template = template_row(built)
    midnight = datetime(2025, 6, 16, tzinfo=UTC).timestamp()
    log = AuditLog(tmp_path, "ingress-a", background=False)
    for row in rows_numbered(template, 4, received=midnight - 2):  # 2 rows on each side of midnight
        log.append(row)
    log.flush()
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["date=2025-06-15/audit-ingress-a-0000000001.parquet",
                     "date=2025-06-16/audit-ingress-a-0000000002.parquet"]
    # Any pyarrow.dataset reader sees the partitions as a column.
    raw = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    by_date = sorted(zip((str(d) for d in raw.column("date").to_pylist()), raw.column("request_id").to_pylist()))
    assert by_date == [("2025-06-15", "r-000000"), ("2025-06-15", "r-000001"),
                       ("2025-06-16", "r-000002"), ("2025-06-16", "r-000003")]
    assert read_audit(tmp_path, since=datetime(2025, 6, 16, tzinfo=UTC)).column(
        "request_id").to_pylist() == ["r-000002", "r-000003"]
    log.close()


def test_small_files_are_merged_when_their_interval_is_over(tmp_path: Path) -> None:
    built = plane()
    template = template_row(built)
    clock = Clock()
    log = AuditLog(tmp_path, "ingress-a", background=False, clock=clock, rotate_interval_s=3600.0,
                   compact_on_close=False)
    for batch in range(5):
        for row in rows_numbered(template, 3, start=3 * batch):
            log.append(row)
        log.flush()
        clock.t += 60
    assert len(audit_files(tmp_path)) == 5
    clock.t = T0 + 3600
    for row in rows_numbered(template, 3, start=15):
        log.append(row)
    log.flush()
    files = audit_files(tmp_path)
    assert [p.name for p in files] == ["audit-ingress-a-0000000001to0000000006.parquet"]
    assert read_audit(tmp_path).column("request_id").to_pylist() == [f"r-{i:06d}" for i in range(18)]
    log.close()


def test_small_files_are_merged_when_they_reach_the_size_bound(tmp_path: Path) -> None:
    built = plane()
    template = template_row(built)
    with AuditLog(tmp_path / "probe", "probe", background=False) as probe:
        for row in rows_numbered(template, 5):
            probe.append(row)
        probe.flush()
        one_file = audit_files(tmp_path / "probe")[0].stat().st_size
    data = tmp_path / "audit"
    log = AuditLog(data, "w", background=False, rotate_bytes=3 * one_file - 1, compact_on_close=False)
    for batch in range(7):
        for row in rows_numbered(template, 5, start=5 * batch):
            log.append(row)
        log.flush()
    # Files 1-3 merged, 4-6 merged, 7 still open.
    assert [p.name for p in audit_files(data)] == [
        "audit-w-0000000001to0000000003.parquet", "audit-w-0000000004to0000000006.parquet",
        "audit-w-0000000007.parquet"]
    assert read_audit(data).column("request_id").to_pylist() == [f"r-{i:06d}" for i in range(35)]
    log.close()


def test_no_row_is_lost_or_doubled_across_flushes_compactions_and_a_graceful_restart(tmp_path: Path) -> None:
    built = plane()
    template = template_row(built)
    clock = Clock()
    sent: list[str] = []

    def feed(log: AuditLog, n: int, start: int) -> None:
        for row in rows_numbered(template, n, start=start):
            log.append(row)
            sent.append(row["request_id"])

    first = AuditLog(tmp_path, "ingress-a", background=False, clock=clock, rotate_interval_s=600)
    for i in range(20):
        feed(first, 7, 7 * i)
        first.flush()
        clock.t += 60  # a compaction every 10 flushes
    feed(first, 5, 140)  # queued, not flushed: close must write them
    first.close()
    first.close()  # idempotent
    with pytest.raises(RuntimeError):
        first.append(template)

    second = AuditLog(tmp_path, "ingress-a", background=False, clock=clock, rotate_interval_s=600)
    feed(second, 30, 1000)
    second.flush()
    second.close()

    got = read_audit(tmp_path).column("request_id").to_pylist()
    assert sorted(got) == sorted(sent) and len(got) == len(set(got)) == 175
    # The restarted writer continued the sequence: nothing was overwritten.
    seqs = [re.search(r"-(\d{10})(?:to(\d{10}))?\.parquet$", p.name).groups() for p in audit_files(tmp_path)]
    flat = sorted(int(s) for pair in seqs for s in pair if s)
    assert len(flat) == len(set(flat))
    assert len(audit_files(tmp_path)) <= 4


def test_a_compaction_interrupted_before_removing_its_sources_counts_nothing_twice(tmp_path: Path) -> None:
    built = plane()
    template = template_row(built)
    log = AuditLog(tmp_path, "ingress-a", background=False, compact_on_close=True)
    for start in (0, 10, 20):
        for row in rows_numbered(template, 10, start=start):
            log.append(row)
        log.flush()
    sources = {p: p.read_bytes() for p in audit_files(tmp_path)}
    log.close()  # merges the three files into one
    # Put the sources back, as if the process died between the merged file's rename and the removals.
    for path, data in sources.items():
        path.write_bytes(data)
    assert ds.dataset(tmp_path, format="parquet").count_rows() == 60  # a raw reader sees both
    assert read_audit(tmp_path).num_rows == 30  # read_audit never does
    # A half-written temporary file of ours and another writer's are left over too.
    part = tmp_path / f"date={T0_DATE}"
    (part / ".audit-ingress-a-0000000009.parquet.tmp").write_bytes(b"PAR1 half a file")
    (part / ".audit-ingress-a-2-0000000001.parquet.tmp").write_bytes(b"someone else's")
    AuditLog(tmp_path, "ingress-a", background=False).close()  # the restart cleans up
    assert ds.dataset(tmp_path, format="parquet").count_rows() == 30
    assert sorted(p.name for p in part.iterdir()) == [
        ".audit-ingress-a-2-0000000001.parquet.tmp", "audit-ingress-a-0000000001to0000000003.parquet"]


def test_a_failed_write_keeps_the_rows_for_the_next_flush(tmp_path: Path, monkeypatch) -> None:
    built = plane()
    template = template_row(built)
    log = AuditLog(tmp_path, "w", background=False)
    for row in rows_numbered(template, 10):
        log.append(row)
    real = audit_module._write_atomically

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_module, "_write_atomically", disk_full)
    with pytest.raises(OSError):
        log.flush()
    assert log.pending_rows == 10 and not list(tmp_path.rglob("*.parquet"))
    monkeypatch.setattr(audit_module, "_write_atomically", real)
    assert log.flush() == 10
    log.close()
    assert read_audit(tmp_path).num_rows == 10


def test_rows_beyond_the_memory_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    built = plane()
    log = AuditLog(tmp_path, "w", background=False, max_pending_rows=5)
    for row in rows_numbered(template_row(built), 8):
        log.append(row)
    assert (log.pending_rows, log.dropped_rows) == (5, 3)
    log.close()


def test_a_row_of_another_shape_is_refused_at_once(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "w", background=False)
    with pytest.raises(ValueError, match="prompt"):
        log.append({"request_id": "r", "prompt": "..."})
    log.close()


def test_concurrent_appends_and_reads_while_flushing_and_compacting(tmp_path: Path) -> None:
    built = plane()
    template = template_row(built)
    log = AuditLog(tmp_path, "w", background=False, rotate_bytes=40_000)
    writers, per_writer = 6, 300
    done = threading.Event()
    problems: list[str] = []

    def produce(w: int) -> None:
        for row in rows_numbered(template, per_writer, prefix=f"w{w}"):
            log.append(row)

    def flush_until_done() -> None:
        while not done.is_set():
            log.flush()

    def read_until_done() -> None:
        seen = 0
        while not done.is_set():
            ids = read_audit(tmp_path).column("request_id").to_pylist()
            if len(ids) != len(set(ids)):
                problems.append(f"duplicates in a read of {len(ids)} rows")
            if len(ids) < seen:
                problems.append(f"a read went back from {seen} to {len(ids)} rows")
            seen = len(ids)

    producers = [threading.Thread(target=produce, args=(w,)) for w in range(writers)]
    side = [threading.Thread(target=flush_until_done), threading.Thread(target=read_until_done)]
    for t in side + producers:
        t.start()
    for t in producers:
        t.join()
    done.set()
    for t in side:
        t.join()
    log.close()
    ids = read_audit(tmp_path).column("request_id").to_pylist()
    assert problems == []
    assert len(ids) == len(set(ids)) == writers * per_writer


def test_the_background_thread_writes_and_close_flushes(tmp_path: Path) -> None:
    built = plane()
    log = AuditLog(tmp_path, "w", flush_interval_s=3600.0)  # the thread will not get a turn
    for row in rows_numbered(template_row(built), 3):
        log.append(row)
    log.close()
    assert read_audit(tmp_path).num_rows == 3


def test_writer_ids_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AuditLog(tmp_path, "../escape", background=False)


def test_an_empty_or_missing_directory_reads_as_no_rows(tmp_path: Path) -> None:
    assert read_audit(tmp_path / "nothing").schema == AUDIT_SCHEMA
    assert read_audit(tmp_path).num_rows == 0


def test_cost_in_the_row_is_request_cost_of_the_chosen_substrate() -> None:
    built = plane()
    d = decide(built, busy=("gpu", "sov", "de-west", "us-api"))
    row = row_for(built, d, out=outcome(tokens_in=1234, tokens_out=56, e2e=3.5))
    expected = request_cost(built.fleet.substrate("eu-api"), 1234, 56, 3.5, INGRESS_REGION)
    assert (row["cost_tokens_usd"], row["cost_gpu_usd"], row["cost_egress_usd"], row["cost_usd"]) == expected
    assert row["boundary"] == "jurisdiction"  # DE -> EU: may now run anywhere in the EU


def test_unplaced_at_request_level_records_the_code() -> None:
    built = plane()
    d = decide(built, tenant="nobody")
    row = row_for(built, d)
    assert (row["rejection_code"], row["candidate_count"]) == (RejectionCode.UNKNOWN_TENANT.value, 0)
    assert row["sla_class"] == "interactive"  # a class the config has
    typed = decide(built, tenant="nobody", sla="what the client typed")
    unchecked = row_for(built, typed, sla_class="what the client typed")
    assert unchecked["sla_class"].startswith("unknown:")  # the engine stopped before checking it
    assert "what the client typed" not in unchecked["decision_json"]


def test_redaction_is_idempotent_and_the_row_is_the_same_either_way() -> None:
    built = plane()
    typed = "sk-client-typed-this"
    for d, kw in ((decide(built, model=typed), {"model": typed}),
                  (decide(built, tenant="nobody", sla=typed), {"sla_class": typed}),
                  (None, {"model": typed, "sla_class": typed + "-sla"}),
                  (decide(built), {"out": outcome(status=502, error="upstream said " + typed)})):
        record = record_for(built, d, **kw)
        once = redacted(record, built.fleet, built.policy)
        assert once != record and redacted(once, built.fleet, built.policy) == once
        assert typed not in repr(once)
        assert audit_row(once, built.fleet, built.policy) == audit_row(record, built.fleet, built.policy)
    known = record_for(built, decide(built))
    assert redacted(known, built.fleet, built.policy) is known  # nothing to redact: nothing copied


def test_row_uses_the_final_attempt_after_a_retry() -> None:
    built = plane()
    retry = decide(built, exclude=("gpu",), attempt=2)
    row = row_for(built, retry)
    assert (row["attempts"], row["spillover_reason"], row["placement_id"]) == (2, "primary_failed",
                                                                                retry.placement_id)
    assert row["rejection_counts"] == {"excluded": 1}


def test_snapshot_time_and_now_are_independent() -> None:
    """Decisions are made on the builders' clock (NOW); the row's time is the ingress's."""
    built = plane()
    row = row_for(built, decide(built), received=T0)
    assert NOW != T0 and row["time"].timestamp() == T0


def test_a_failed_merge_leaves_the_small_files_and_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    built = plane()
    log = AuditLog(tmp_path, "w", background=False, compact_on_close=True)
    for start in (0, 5):
        for row in rows_numbered(template_row(built), 5, start=start):
            log.append(row)
        log.flush()

    def unreadable(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(audit_module.pq, "read_table", unreadable)
    log.close()  # the merge fails; close does not
    monkeypatch.undo()
    assert len(audit_files(tmp_path)) == 2
    assert read_audit(tmp_path).column("request_id").to_pylist() == [f"r-{i:06d}" for i in range(10)]


def test_on_written_is_told_each_files_request_ids_once_it_is_in_place(tmp_path: Path, monkeypatch) -> None:
    built = plane()
    told: list[tuple[list[str], int]] = []

    def on_written(ids: list[str]) -> None:
        told.append((ids, len(audit_files(tmp_path))))  # the file is visible when the hook runs

    log = AuditLog(tmp_path, "w", background=False, on_written=on_written)
    midnight = datetime(2025, 6, 16, tzinfo=UTC).timestamp()
    for row in rows_numbered(template_row(built), 4, received=midnight - 2):
        log.append(row)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_module, "_write_atomically", disk_full)
    with pytest.raises(OSError):
        log.flush()
    assert told == []  # nothing is in place, nothing is told
    monkeypatch.undo()
    log.flush()
    assert told == [(["r-000000", "r-000001"], 1), (["r-000002", "r-000003"], 2)]
    log.close()


def test_a_failing_on_written_hook_never_writes_a_row_twice(tmp_path: Path) -> None:
    built = plane()

    def broken(ids: list[str]) -> None:
        raise RuntimeError("bookkeeping bug")

    log = AuditLog(tmp_path, "w", background=False, on_written=broken)
    for row in rows_numbered(template_row(built), 3):
        log.append(row)
    assert log.flush() == 3
    assert log.flush() == 0
    log.close()
    assert read_audit(tmp_path).num_rows == 3


def test_request_ids_reads_only_the_given_writers_files_of_the_given_days(tmp_path: Path) -> None:
    built = plane()
    template = template_row(built)
    midnight = datetime(2025, 6, 16, tzinfo=UTC).timestamp()
    for writer in ("ingress-a", "ingress-a-2", "ingress-b"):
        with AuditLog(tmp_path, writer, background=False) as log:
            for row in rows_numbered(template, 2, prefix=writer, received=midnight - 1):
                log.append(row)
    day1, day2 = datetime(2025, 6, 15).date(), datetime(2025, 6, 16).date()
    assert request_ids(tmp_path, {"ingress-a"}, {day1, day2}) == {"ingress-a-000000", "ingress-a-000001"}
    assert request_ids(tmp_path, {"ingress-a", "ingress-b"}, {day2}) == {"ingress-a-000001", "ingress-b-000001"}
    assert request_ids(tmp_path, {"ingress-c"}, {day1, day2}) == set()


# -- Issue #18: residuals and the ingress's token count ----------------------------------------------


def test_a_row_keeps_both_token_counts_and_the_residuals() -> None:
    built = plane()
    d = decide(built)
    record = dataclasses.replace(record_for(built, d), estimated_input_tokens=990)
    row = audit_row(record, built.fleet, built.policy)
    assert (row["input_tokens"], row["estimated_input_tokens"]) == (1000, 990)
    assert row["ttft_residual"] == pytest.approx(record.ttft_s / d.predicted_ttft_s)
    assert d.predicted_tpot_s == pytest.approx((d.predicted_e2e_s - d.predicted_ttft_s) / d.predicted_output_tokens)
    assert row["tpot_residual"] == pytest.approx(record.tpot_s / d.predicted_tpot_s)
    failed = audit_row(record_for(built, d, out=outcome(status=502, error="substrate_error")), built.fleet,
                       built.policy)
    assert failed["ttft_residual"] is None and failed["tpot_residual"] is None


def test_a_file_written_before_the_new_columns_reads_with_nulls(tmp_path) -> None:
    built = plane()
    row = audit_row(record_for(built, decide(built)), built.fleet, built.policy)
    old = AUDIT_SCHEMA
    for name in ("estimated_input_tokens", "ttft_residual", "tpot_residual"):
        old = old.remove(old.get_field_index(name))
    part = tmp_path / "date=2026-01-01"
    part.mkdir()
    pq.write_table(pa.Table.from_pylist([{k: row[k] for k in old.names}], schema=old),
                   part / "audit-old-0000000001.parquet")
    table = read_audit(tmp_path)
    assert table.num_rows == 1
    assert table.column("ttft_residual").to_pylist() == [None]
    assert table.column("estimated_input_tokens").to_pylist() == [None]
