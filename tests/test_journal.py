"""The write-ahead audit journal: a line reads back to its record, which rebuilds its row, segments go once their rows are in
Parquet, and recovery after a kill writes every missing row exactly once, whoever recovers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.placement import place
from inferplane.plane.record import RequestRecord
from inferplane.telemetry import journal as journal_module
from inferplane.telemetry.audit import AuditLog, audit_files, audit_row, read_audit, redacted
from inferplane.telemetry.cost import request_cost
from inferplane.telemetry.journal import (
    JOURNAL_DIR,
    Journal,
    Recovery,
    read_segment,
    record_from_line,
    record_line,
    recover,
)
from tests.strategies import Scenario, scenarios
from tests.test_audit import CONFIG_MISMATCH, T0, decide, outcome, plane, record_for, row_for


@pytest.fixture
def dead_pid():
    """A factory of pids of processes that have ended (and were reaped) on this host."""

    def make() -> int:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        return proc.pid

    return make


def journal(directory: Path, writer: str, built=None, **kw) -> Journal:
    """A journal written under ``built``'s config (``plane()`` by default)."""
    built = built or plane()
    return Journal(directory, writer, fleet=built.fleet, policy=built.policy, **kw)


def records(built, n: int, *, prefix: str = "req", ingress_id: str = "ingress-dead") -> list[RequestRecord]:
    return [record_for(built, decide(built, request_id=f"{prefix}-{i:04d}"), received=T0 + i, ingress_id=ingress_id)
            for i in range(n)]


def through_the_file(record: RequestRecord) -> RequestRecord:
    return record_from_line(json.loads(record_line(record)))


def segment_files(directory: Path) -> list[Path]:
    return sorted((directory / JOURNAL_DIR).iterdir())


# -------------------------------------------------------------------------------------------------
# Entries and recovered rows


def _cases(built) -> dict[str, tuple]:
    """(decision, outcome, row_for keywords) of every kind of request the ingress records."""
    everything_busy = ("gpu", "sov", "de-west", "eu-api", "us-api")
    return {
        "placed": (decide(built), outcome(), {}),
        "spilled abroad": (decide(built, busy=("gpu", "sov", "de-west", "eu-api")), outcome(tokens_out=200), {}),
        "retried": (decide(built, exclude=("gpu",), attempt=2), outcome(), {}),
        "nothing could take it": (decide(built, busy=everything_busy),
                                  outcome(status=429, error="capacity", ttft=None, e2e=0.002, tokens_out=None), {}),
        "stream broken": (decide(built), outcome(status=502, error="substrate_error", streamed=True, tokens_out=3), {}),
        "refused before placement": (None, outcome(status=401, error="invalid_api_key", ttft=None, e2e=None,
                                                   tokens_in=None, tokens_out=None),
                                     {"tenant": None, "sla_class": None}),
        "unknown model": (None, outcome(status=404, error="model_not_found", ttft=None, e2e=None),
                          {"model": "sk-client-typed-this"}),
        "no snapshot": (None, outcome(status=503, error="placement_unavailable", ttft=None, e2e=None), {}),
        "unsafe error code": (decide(built), outcome(status=502, error="Weird Code!"), {}),
    }


@pytest.mark.parametrize("case", list(_cases(plane())))
def test_a_line_reads_back_to_the_record_it_was_written_from(case: str) -> None:
    built = plane()
    decision, out, kw = _cases(built)[case]
    record = record_for(built, decision, out=out, **kw)
    line = record_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert through_the_file(record) == record  # raw: exact, decision and cost included
    safe = redacted(record, built.fleet, built.policy)
    assert (safe == record) == (case not in ("unknown model", "unsafe error code"))
    assert through_the_file(safe) == safe


def test_the_journal_writes_the_redacted_record_and_reads_it_back_exactly(tmp_path: Path) -> None:
    built = plane()
    cases = _cases(built)
    sent = [record_for(built, d, out=out, request_id=f"req-{i}", **kw) for i, (d, out, kw) in enumerate(cases.values())]
    j = journal(tmp_path, "ingress-a", built)
    for r in sent:
        j.write(r)
    (segment,) = segment_files(tmp_path)
    got = read_segment(segment)
    assert got.bad_lines == 0 and got.writers == {"ingress-a"}
    assert got.records == [redacted(r, built.fleet, built.policy) for r in sent]
    by_case = dict(zip(cases, got.records))
    assert by_case["refused before placement"] == sent[list(cases).index("refused before placement")]
    spilled = by_case["spilled abroad"]
    assert spilled == sent[list(cases).index("spilled abroad")] and spilled.decision.spillover
    assert spilled.decision.candidates and spilled.cost is not None


@pytest.mark.parametrize("case", list(_cases(plane())))
def test_a_recovered_row_is_the_row(case: str) -> None:
    built = plane()
    decision, out, kw = _cases(built)[case]
    row = row_for(built, decision, out=out, **kw)
    # Through the file, as the journal writes it: JSON round-trips floats exactly.
    record = through_the_file(redacted(record_for(built, decision, out=out, **kw), built.fleet, built.policy))
    rebuilt = audit_row(record, built.fleet, built.policy, recovered_by="ingress-b")
    assert list(rebuilt) == list(row)
    assert rebuilt["recovered_by"] == "ingress-b" and row["recovered_by"] is None
    assert (rebuilt["decision_json"] is not None) == (decision is not None)
    assert {k for k in row if rebuilt[k] != row[k]} == {"recovered_by"}


def test_the_extra_cost_over_the_primarys_estimate_is_kept() -> None:
    built = plane()
    d = decide(built, busy=("gpu",))
    assert d.spillover
    rebuilt = audit_row(through_the_file(record_for(built, d)), built.fleet, built.policy, recovered_by="b")
    assert rebuilt["spillover_extra_cost_usd"] == row_for(built, d)["spillover_extra_cost_usd"]


def test_under_another_config_the_fleets_columns_are_null_and_a_spillover_counts_as_the_widest() -> None:
    built = plane()
    spilled = decide(built, busy=("gpu", "sov", "de-west"))
    assert spilled.spillover
    for decision, boundary in ((spilled, "jurisdiction"), (decide(built), "none")):
        record = through_the_file(record_for(built, decision, config_hash=CONFIG_MISMATCH))
        row = audit_row(record, built.fleet, built.policy, recovered_by="ingress-b")
        assert row["boundary"] == boundary
        assert row["substrate"] == decision.substrate  # what the request knew is still there
        assert (row["model"], row["sla_class"]) == ("m", "interactive")
        for column in ("substrate_class", "jurisdiction", "region", "spillover_extra_cost_actual_usd",
                       "ttft_deadline_s", "met_sla"):
            assert row[column] is None, column
        # The cost is the answering replica's attribution, carried by the record.
        assert row["cost_usd"] == record.cost.total_usd and row["cost_usd"] > 0
        # The decision is all there; no candidate carries another config's substrate facts.
        recorded = json.loads(row["decision_json"])
        assert [c["name"] for c in recorded["candidates"]] == [c.name for c in decision.candidates]
        assert not any("jurisdiction" in c or "substrate_class" in c for c in recorded["candidates"])


def test_the_journal_holds_no_client_text_the_row_would_not(tmp_path: Path) -> None:
    built = plane()
    typed = "sk-tenant-key-pasted-as-model-0123456789"
    j = journal(tmp_path, "ingress-a", built)
    j.write(record_for(built, None, model=typed, sla_class=typed + "-sla", request_id="req-0",
                       out=outcome(status=404, error="model_not_found: " + typed)))
    j.write(record_for(built, decide(built, model=typed, request_id="req-1"), model=typed,
                       out=outcome(status=404, error="model_not_found")))
    j.write(record_for(built, decide(built, sla=typed, request_id="req-2"), sla_class=typed,
                       out=outcome(status=400, error="unknown_sla_class")))
    (segment,) = segment_files(tmp_path)
    text = segment.read_text()
    assert typed not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["model"].startswith("unknown:") and lines[1]["decision"]["model"].startswith("unknown:")
    assert lines[2]["decision"]["rejection_message"] == f"unknown SLA class `{lines[2]['sla_class']}`"


# -------------------------------------------------------------------------------------------------
# Writing, rotating, deleting


def test_a_segment_goes_once_every_row_in_it_is_written(tmp_path: Path) -> None:
    built = plane()
    j = journal(tmp_path, "ingress-a")
    log = AuditLog(tmp_path, "ingress-a", background=False, on_written=j.written)
    first = [record_for(built, decide(built, request_id=f"req-{i}"), received=T0 + i) for i in range(5)]
    rows = {e.request_id: row_for(built, decide(built, request_id=e.request_id), received=e.received_at_s)
            for e in first}
    for e in first:
        j.write(e)
    (seg1,) = segment_files(tmp_path)
    assert len(seg1.read_text().splitlines()) == 5
    for rid in ("req-0", "req-1", "req-2"):
        log.append(rows[rid])
    log.flush()
    assert j.segments() == [seg1]  # rotated, 2 rows still unwritten
    later = record_for(built, decide(built, request_id="req-9"), received=T0 + 9)
    j.write(later)
    seg2 = next(p for p in segment_files(tmp_path) if p != seg1)
    assert json.loads(seg2.read_text())["request_id"] == "req-9"
    log.append(rows["req-3"])
    log.append(rows["req-4"])
    log.flush()
    assert segment_files(tmp_path) == [seg2]  # the first one is complete, the second not
    log.append(row_for(built, decide(built, request_id="req-9"), received=T0 + 9))
    log.flush()
    assert segment_files(tmp_path) == []
    log.close()
    j.close()


def test_a_graceful_close_leaves_no_segment_and_loses_no_row(tmp_path: Path) -> None:
    built = plane()
    j = journal(tmp_path, "ingress-a")
    log = AuditLog(tmp_path, "ingress-a", flush_interval_s=3600.0, on_written=j.written)
    for i in range(7):
        d = decide(built, request_id=f"req-{i}")
        j.write(record_for(built, d, received=T0 + i))
        log.append(row_for(built, d, received=T0 + i))
    assert len(segment_files(tmp_path)) == 1
    log.close()
    j.close()
    assert segment_files(tmp_path) == []
    assert read_audit(tmp_path).num_rows == 7


def test_a_segment_whose_row_was_never_written_survives_close_for_recovery(tmp_path: Path) -> None:
    built = plane()
    j = journal(tmp_path, "ingress-a")
    log = AuditLog(tmp_path, "ingress-a", background=False, on_written=j.written)
    j.write(record_for(built, decide(built, request_id="req-kept")))
    j.write(record_for(built, decide(built, request_id="req-written")))
    log.append(row_for(built, decide(built, request_id="req-written")))
    log.close()
    j.close()
    (left,) = segment_files(tmp_path)
    assert [r.request_id for r in read_segment(left).records] == ["req-kept", "req-written"]


def test_a_failed_write_is_counted_never_raised_and_starts_a_new_segment(tmp_path: Path, monkeypatch) -> None:
    built = plane()
    j = journal(tmp_path, "ingress-a")
    j.write(record_for(built, decide(built, request_id="req-0")))
    real = os.write
    monkeypatch.setattr(journal_module.os, "write", lambda fd, data: real(fd, data[:10]))  # disk full mid-line
    j.write(record_for(built, decide(built, request_id="req-1")))
    monkeypatch.setattr(journal_module.os, "write", real)
    j.write(dataclasses.replace(record_for(built, decide(built, request_id="req-2")), ttft_s=float("nan")))  # not JSON
    j.write(record_for(built, decide(built, request_id="req-3")))
    assert j.failed_writes == 2
    first, second = segment_files(tmp_path)
    cut = read_segment(first)
    assert ([r.request_id for r in cut.records], cut.bad_lines) == (["req-0"], 1)
    assert [r.request_id for r in read_segment(second).records] == ["req-3"]


def test_the_audit_readers_ignore_the_journal(tmp_path: Path) -> None:
    built = plane()
    j = journal(tmp_path, "ingress-a")
    log = AuditLog(tmp_path, "ingress-a", background=False)
    for i in range(3):
        d = decide(built, request_id=f"req-{i}")
        j.write(record_for(built, d))
        log.append(row_for(built, d))
    log.flush()
    assert len(segment_files(tmp_path)) == 1
    assert read_audit(tmp_path).num_rows == 3
    assert all(JOURNAL_DIR not in p.parts for p in audit_files(tmp_path))
    assert ds.dataset(tmp_path, format="parquet", partitioning="hive").count_rows() == 3
    log.close()


# -------------------------------------------------------------------------------------------------
# Recovery


def _recoverer(directory: Path, writer: str, **journal_kw) -> tuple[Journal, AuditLog]:
    j = journal(directory, writer, **journal_kw)
    return j, AuditLog(directory, writer, background=False, on_written=j.written)


def test_a_killed_writers_answers_get_their_rows_exactly_once(tmp_path: Path, dead_pid) -> None:
    built = plane()
    # The killed replica: 10 answers journaled, 4 of their rows flushed before the kill.
    dead = journal(tmp_path, "ingress-dead", pid=dead_pid())
    dead_log = AuditLog(tmp_path, "ingress-dead", background=False)
    sent = records(built, 10)
    for e in sent:
        dead.write(e)
    for e in sent[:4]:
        dead_log.append(row_for(built, decide(built, request_id=e.request_id), received=e.received_at_s,
                                ingress_id="ingress-dead"))
    dead_log.flush()

    j, log = _recoverer(tmp_path, "ingress-new")
    assert recover(j, log) == Recovery(segments=1, rows=6, already_written=4)
    assert len(segment_files(tmp_path)) == 1  # claimed, waiting for its rows
    log.flush()
    assert segment_files(tmp_path) == []
    assert recover(j, log) == Recovery()

    rows = read_audit(tmp_path).to_pylist()
    assert sorted(r["request_id"] for r in rows) == sorted(e.request_id for e in sent)
    recovered = [r for r in rows if r["recovered_by"] == "ingress-new"]
    assert sorted(r["request_id"] for r in recovered) == [e.request_id for e in sent[4:]]
    assert {r["ingress_id"] for r in rows} == {"ingress-dead"}  # the replica that answered
    assert all(r["substrate_class"] == "gpu_cluster" and r["cost_usd"] for r in recovered)
    log.close()
    j.close()


def test_a_claimant_killed_in_turn_leaves_a_segment_adopted_again_without_doubles(tmp_path: Path,
                                                                                   dead_pid) -> None:
    built = plane()
    first = journal(tmp_path, "ingress-a", pid=dead_pid())
    for e in records(built, 6, ingress_id="ingress-a"):
        first.write(e)
    (cut,) = segment_files(tmp_path)
    with cut.open("ab") as fh:  # killed mid-write: the claimant's marker must still be read
        fh.write(record_line(records(built, 1, prefix="cut")[0])[:-8])
    # ingress-b adopts and writes the 6 rows, then is killed before it deletes the segment.
    b = journal(tmp_path, "ingress-b", pid=dead_pid())
    b_log = AuditLog(tmp_path, "ingress-b", background=False)  # no hook: the deletion never happens
    assert recover(b, b_log) == Recovery(segments=1, rows=6, bad_lines=1)
    b_log.flush()
    (segment,) = segment_files(tmp_path)
    assert segment.name.startswith("ingress-b@")

    c, c_log = _recoverer(tmp_path, "ingress-c")
    assert recover(c, c_log) == Recovery(segments=1, already_written=6, bad_lines=1)
    assert segment_files(tmp_path) == []
    ids = read_audit(tmp_path).column("request_id").to_pylist()
    assert len(ids) == len(set(ids)) == 6


def test_two_recoverers_never_both_adopt_a_segment(tmp_path: Path, dead_pid) -> None:
    built = plane()
    sent = []
    for w in range(12):
        dead = journal(tmp_path, f"ingress-dead{w}", pid=dead_pid())
        for e in records(built, 3, prefix=f"w{w}", ingress_id=f"ingress-dead{w}"):
            dead.write(e)
            sent.append(e.request_id)
    (j1, log1), (j2, log2) = _recoverer(tmp_path, "ingress-x"), _recoverer(tmp_path, "ingress-y")
    start = threading.Barrier(2)
    results: dict[str, Recovery] = {}

    def run(name: str, j: Journal, log: AuditLog) -> None:
        start.wait()
        results[name] = recover(j, log)

    threads = [threading.Thread(target=run, args=("x", j1, log1)), threading.Thread(target=run, args=("y", j2, log2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log1.close()
    log2.close()
    ids = read_audit(tmp_path).column("request_id").to_pylist()
    assert sorted(ids) == sorted(sent) and len(ids) == len(set(ids))
    assert results["x"].segments + results["y"].segments == 12  # each claimed once, by one of them
    assert results["x"].rows + results["y"].rows == 36
    assert segment_files(tmp_path) == []


def test_a_claim_has_one_winner(tmp_path: Path, dead_pid) -> None:
    built = plane()
    dead = journal(tmp_path, "ingress-dead", pid=dead_pid())
    dead.write(records(built, 1)[0])
    x, y = journal(tmp_path, "ingress-x"), journal(tmp_path, "ingress-y")
    (orphan,) = x.orphans()
    assert y.orphans() == [orphan]
    won = x.claim(orphan)
    assert won is not None and won.name.startswith("ingress-x@")
    assert y.claim(orphan) is None
    assert x.orphans() == y.orphans() == []  # a live claimant's segment is nobody's orphan


def test_a_live_writers_and_another_hosts_segments_are_left_alone(tmp_path: Path, dead_pid) -> None:
    built = plane()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = journal(tmp_path, "ingress-live", pid=sleeper.pid)
        remote = journal(tmp_path, "ingress-remote", host="another-node", pid=dead_pid())
        live.write(records(built, 1, prefix="live")[0])
        remote.write(records(built, 1, prefix="remote")[0])
        before = {p.name: p.read_bytes() for p in segment_files(tmp_path)}
        j, log = _recoverer(tmp_path, "ingress-new")
        assert recover(j, log) == Recovery()
        assert {p.name: p.read_bytes() for p in segment_files(tmp_path)} == before
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once the live writer has ended, its segment is an orphan; the other host's never is.
    assert recover(j, log) == Recovery(segments=1, rows=1)
    log.close()
    assert read_audit(tmp_path).column("request_id").to_pylist() == ["live-0000"]
    assert [p.name.split("@")[1] for p in segment_files(tmp_path)] == ["another-node"]


def test_a_line_cut_by_a_kill_and_garbage_are_skipped_and_counted(tmp_path: Path, dead_pid) -> None:
    built = plane()
    dead = journal(tmp_path, "ingress-dead", pid=dead_pid())
    sent = records(built, 4)
    for e in sent[:2]:
        dead.write(e)
    (segment,) = segment_files(tmp_path)
    with segment.open("ab") as fh:
        fh.write(b"not json at all\n")
        fh.write(b'["a list", "not an entry"]\n')
        fh.write(json.dumps(dict(json.loads(record_line(sent[2])), v=1)).encode() + b"\n")  # another version
        fh.write(json.dumps({k: v for k, v in json.loads(record_line(sent[3])).items() if k != "status_code"}).encode()
                 + b"\n")
        fh.write(record_line(records(built, 1, prefix="cut")[0])[:-8])  # the kill, mid-write

    j, log = _recoverer(tmp_path, "ingress-new")
    assert recover(j, log) == Recovery(segments=1, rows=2, bad_lines=5)
    log.flush()
    assert read_audit(tmp_path).column("request_id").to_pylist() == [e.request_id for e in sent[:2]]
    assert segment_files(tmp_path) == []
    log.close()


def test_the_recovered_row_keeps_the_answer_time_partition(tmp_path: Path, dead_pid) -> None:
    """An entry received before midnight is looked up, and written, in the partition of its own day."""
    built = plane()
    dead = journal(tmp_path, "ingress-dead", pid=dead_pid())
    dead_log = AuditLog(tmp_path, "ingress-dead", background=False)
    midnight = 1_750_032_000.0  # 2025-06-16 00:00 UTC
    for i, t in enumerate((midnight - 1, midnight + 1)):
        d = decide(built, request_id=f"req-{i}")
        dead.write(record_for(built, d, received=t, ingress_id="ingress-dead"))
        dead_log.append(row_for(built, d, received=t, ingress_id="ingress-dead"))
    dead_log.flush()
    j, log = _recoverer(tmp_path, "ingress-new")
    assert recover(j, log) == Recovery(segments=1, already_written=2)


def test_journal_lines_are_compact() -> None:
    """A line carries the record and its decision, but no fact the config holds (a recovery takes
    those from its own config): shorter than the row's decision JSON alone."""
    built = plane()
    d = decide(built, busy=("gpu",))
    line = record_line(record_for(built, d))
    assert b"substrate_class" not in line and b"jurisdiction" not in line.replace(b'"code":"jurisdiction"', b"")
    assert len(line) < len(row_for(built, d)["decision_json"])


@settings(max_examples=60, deadline=None)
@given(scenarios(max_substrates=8), st.data())
def test_any_decision_round_trips_through_the_journal_and_rebuilds_its_row(sc: Scenario, data) -> None:
    """Whatever the engine decides (placed, spilled, refused at any rung), the record's line reads
    back to the record, and the row rebuilt from it is the row its writer built."""
    built = sc.built
    decision = place(sc.request, sc.snapshot, built.policy)
    ok = data.draw(st.booleans())
    tokens_out = data.draw(st.none() | st.integers(0, 4096))
    ttft = data.draw(st.none() | st.floats(0.0, 60.0))
    e2e = data.draw(st.floats(0.0, 600.0))
    cost = None
    if decision.placed:
        cost = request_cost(built.fleet.substrate(decision.substrate), sc.request.input_tokens, tokens_out or 0,
                            e2e, sc.request.ingress_region)
    record = RequestRecord(
        request_id=sc.request.request_id, ingress_id="ingress-a", ingress_region=sc.request.ingress_region,
        received_at_s=T0, finished_at_s=T0 + e2e, tenant=sc.request.tenant, model=sc.request.model,
        sla_class=sc.request.sla_class, streamed=data.draw(st.booleans()), decision=decision,
        snapshot_age_s=data.draw(st.floats(0.0, 5.0)), status_code=200 if ok else decision.http_status,
        error_code=None if ok else "substrate_error", ttft_s=ttft, e2e_s=e2e if ok else None,
        input_tokens=sc.request.input_tokens, output_tokens=tokens_out, cost=cost,
        config_hash=built.policy.policy_hash)
    safe = redacted(record, built.fleet, built.policy)
    assert through_the_file(safe) == safe
    rebuilt = audit_row(through_the_file(safe), built.fleet, built.policy, recovered_by="ingress-b")
    live = audit_row(record, built.fleet, built.policy)
    assert {k for k in live if rebuilt[k] != live[k]} == {"recovered_by"}
