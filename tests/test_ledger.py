"""The ledger: every request ends as exactly one record, journaled, then one audit row, whatever the
path; and what a request held is released when it ends, also when its client vanished."""

from __future__ import annotations

import gc

import pytest

from inferplane.fleet_state import PublishedSnapshot
from inferplane.plane.attempts import AttemptLoop, Dispatch
from inferplane.plane.ledger import CLIENT_DISCONNECTED, RequestLedger
from inferplane.plane.state import ReplicaState
from inferplane.telemetry.audit import AuditLog, read_audit
from inferplane.telemetry.journal import Journal, read_segment
from inferplane.telemetry.metrics import MetricsOutbox
from tests.builders import NOW, fleet, request, signals, substrate


@pytest.fixture()
def plane(tmp_path):
    built = fleet(substrate("p").cls("gpu_cluster").jurisdiction("DE").capacity(4)
                  .cost(gpu_hour=3.6, gpus=1)).model("m", primary="p").build()
    state = ReplicaState(built.fleet, built.policy)
    sigs = tuple(signals(now=NOW) for _ in built.fleet.substrates)
    assert state.publish(PublishedSnapshot(1, NOW, built.policy.policy_hash, sigs), state.take_report(NOW))
    journal = Journal(tmp_path, "ingress-test", fleet=built.fleet, policy=built.policy)
    audit = AuditLog(tmp_path, "ingress-test", flush_interval_s=3600, on_written=journal.written)
    ledger = RequestLedger("ingress-test", None, built.fleet, built.policy, state, journal, audit, MetricsOutbox())
    yield ledger, state, journal, audit, tmp_path
    audit.close()
    journal.close()


def _open_placed(ledger, state, request_id="req-1"):
    req = ledger.open(request_id, NOW)
    req.tenant, req.model, req.sla_class, req.input_tokens = "t", "m", "interactive", 100
    req.attempts = AttemptLoop(state, request(request_id=request_id, model="m", now=NOW))
    assert isinstance(req.attempts.start(), Dispatch)
    return req


def _journal_lines(journal) -> list:
    return [e for seg in journal.segments() for e in read_segment(seg).records]


def test_a_request_closes_once_and_releases_its_lease(plane):
    ledger, state, journal, audit, path = plane
    req = _open_placed(ledger, state)
    assert state.in_flight() == {"p": 1}
    record = req.close(200, None, NOW + 2.0, first_token_s=NOW + 0.5, output_tokens=11, prompt_tokens=90)
    assert record is not None and req.close(502, "substrate_error", NOW + 3.0) is None
    assert state.in_flight() == {"p": 0}
    assert (record.status_code, record.input_tokens, record.ttft_s, record.e2e_s) == (200, 90, 0.5, 2.0)
    assert record.cost.gpu_usd == pytest.approx(3.6 / 3600 / 4 * 2.0)
    report = state.take_report(NOW + 3)
    assert report.spend_usd == {"t": pytest.approx(record.cost.total_usd)}
    (outcome,) = report.outcomes
    assert outcome.ok and outcome.ttft_s == pytest.approx(0.5)
    assert len(_journal_lines(journal)) == 1  # journaled at close, before any row
    assert ledger.drain() == 1 and ledger.drain() == 0
    audit.flush()
    rows = read_audit(path).to_pylist()
    assert [(r["request_id"], r["status_code"]) for r in rows] == [("req-1", 200)]


def test_a_request_dispatched_late_keeps_when_and_its_residuals_start_there(plane):
    """Time before the final dispatch (the hold queue, a failed attempt) is the client's, not the
    substrate's: the record keeps it, and both residuals measure TTFT from the dispatch."""
    from inferplane.telemetry.drift import declared_residuals, residuals

    ledger, state, journal, audit, path = plane
    req = ledger.open("req-late", NOW - 3.0)  # received 3 s before it was placed and dispatched
    req.tenant, req.model, req.sla_class, req.input_tokens = "t", "m", "interactive", 100
    req.attempts = AttemptLoop(state, request(request_id="req-late", model="m", now=NOW))
    assert isinstance(req.attempts.start(), Dispatch)  # dispatched at NOW (the request's arrival in it)
    first_token = NOW + req.attempts.decision.predicted_ttft_s
    record = req.close(200, None, first_token + 1.0, first_token_s=first_token, output_tokens=11)
    assert record.dispatched_after_s == pytest.approx(3.0)
    assert record.ttft_s == pytest.approx(3.0 + record.decision.predicted_ttft_s)
    assert record.substrate_ttft_s == pytest.approx(record.decision.predicted_ttft_s)
    assert residuals(record)[0] == pytest.approx(1.0)
    assert declared_residuals(record)[0] == pytest.approx(
        record.decision.predicted_ttft_s / record.decision.declared_ttft_s)
    (line,) = _journal_lines(journal)
    assert line.dispatched_after_s == pytest.approx(3.0)  # journaled, so a replayed record keeps it


def test_the_engines_cached_tokens_reach_the_record_the_journal_and_the_audit_row(plane):
    ledger, state, journal, audit, path = plane
    req = _open_placed(ledger, state)
    record = req.close(200, None, NOW + 1.0, first_token_s=NOW + 0.2, output_tokens=5, prompt_tokens=900,
                       cached_tokens=768)
    assert record.cached_input_tokens == 768
    assert [line.cached_input_tokens for line in _journal_lines(journal)] == [768]
    other = _open_placed(ledger, state, "req-2")
    assert other.close(200, None, NOW + 1.0, first_token_s=NOW + 0.2, output_tokens=5).cached_input_tokens is None
    ledger.drain()
    audit.flush()
    rows = {r["request_id"]: r for r in read_audit(path).to_pylist()}
    assert (rows["req-1"]["cached_input_tokens"], rows["req-2"]["cached_input_tokens"]) == (768, None)


def test_a_client_that_leaves_is_499_and_not_held_against_the_substrate(plane):
    ledger, state, journal, audit, path = plane
    req = _open_placed(ledger, state)
    record = req.close(499, CLIENT_DISCONNECTED, NOW + 1.0, first_token_s=NOW + 0.2, output_tokens=3)
    assert record.output_tokens == 3 and record.e2e_s is None
    assert state.in_flight() == {"p": 0}
    assert state.take_report(NOW + 2).outcomes == []


def test_a_refusal_before_placement_has_a_record_without_decision(plane):
    ledger, state, journal, audit, path = plane
    req = ledger.open("req-2", NOW)
    record = req.close(401, "invalid_api_key", NOW + 0.01)
    assert record.decision is None and record.cost is None and record.attempts == 0
    ledger.drain()
    audit.flush()
    (row,) = read_audit(path).to_pylist()
    assert (row["status_code"], row["error_code"], row["tenant"]) == (401, "invalid_api_key", None)


def test_a_response_body_dropped_unstarted_still_closes_its_request(plane):
    ledger, state, journal, audit, path = plane
    req = _open_placed(ledger, state)
    cancelled = []

    async def body():  # never iterated, as when the client leaves before the stream starts
        yield b""

    events = body()
    ledger.watch(events, req, lambda: NOW + 5.0, on_abandoned=lambda: cancelled.append(True))
    del events
    gc.collect()
    assert req.record is not None and req.record.status_code == 499
    assert cancelled == [True] and state.in_flight() == {"p": 0}
    assert len(_journal_lines(journal)) == 1
