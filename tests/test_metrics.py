"""Prometheus metrics: deltas from several ingress replicas merge into exact totals in one scrape."""

from __future__ import annotations

import dataclasses
import pickle
import threading
import urllib.request
from collections import defaultdict

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inferplane.placement import PlacementDecision
from inferplane.placement.signals import CircuitState, Reading, SubstrateSignals
from inferplane.plane.record import RequestRecord
from inferplane.telemetry.audit import DECISION_FIELDS
from inferplane.telemetry.cost import CostBreakdown
from inferplane.telemetry.metrics import (
    ACTOR_COUNTERS,
    COUNTERS,
    HISTOGRAMS,
    LabelVocabulary,
    MetricsDelta,
    MetricsOutbox,
    PlaneMetrics,
    rejection_code_for,
    serve_metrics,
)
from tests.builders import NOW, snapshot
from tests.test_audit import decide, outcome, plane, record_for

# Dyadic values: their sums are exact in binary floating point, whatever the order.
TTFT, E2E, TPOT, COST = 0.125, 0.5, 0.0078125, 0.0009765625
TOKENS_OUT = 49  # (E2E - TTFT) / (49 - 1) = TPOT


def finished(built, decision, *, ok: bool = True, ttft: float | None = TTFT, e2e: float | None = E2E,
             tokens_in: int | None = 1000, tokens_out: int | None = TOKENS_OUT, cost: float = COST,
             **kw) -> RequestRecord:
    """The record of a request that ran on ``decision``'s substrate, attributed ``cost``."""
    record = record_for(built, decision, out=outcome(status=200 if ok else 502, error=None if ok else "substrate_error",
                                                     ttft=ttft, e2e=e2e, tokens_in=tokens_in, tokens_out=tokens_out),
                        **kw)
    return dataclasses.replace(record, cost=CostBreakdown(cost, 0.0, 0.0, cost))


def scrape(metrics: PlaneMetrics) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def sent_by_ingress(built, outbox: MetricsOutbox, *, placed: int, spilled: int, refused: int, auth: int,
                    tag: str) -> None:
    """What one ingress replica records: ``placed`` requests on gpu and ``spilled`` on us-api, each
    with its outcome; ``refused`` with nothing free; ``auth`` with a bad key."""
    delta = outbox.delta
    for i in range(placed):
        d = decide(built, request_id=f"{tag}-p{i}")
        delta.record_decision(d, 0.0001)
        assert finished(built, d).tpot_s == TPOT
        delta.record_request(finished(built, d))
    for i in range(spilled):
        d = decide(built, request_id=f"{tag}-s{i}", busy=("gpu", "sov", "de-west", "eu-api"))
        assert d.substrate == "us-api"
        delta.record_decision(d, 0.0001)
        delta.record_request(finished(built, d, ok=i % 2 == 0, e2e=2 * E2E, tokens_in=100, tokens_out=0))
    for i in range(refused):
        d = decide(built, request_id=f"{tag}-r{i}", busy=("gpu", "sov", "de-west", "eu-api", "us-api"))
        delta.record_decision(d, 0.0001)
        delta.record_request(record_for(built, d, out=outcome(status=429, error="capacity", ttft=None, e2e=0.001,
                                                              tokens_out=None)))  # the rejection, once
    for _ in range(auth):
        delta.record_request(record_for(built, None, tenant=None, out=outcome(status=401, error="invalid_api_key",
                                                                              ttft=None, e2e=0.001)))


def test_two_ingress_replicas_merge_into_exact_totals() -> None:
    built = plane()
    vocab = LabelVocabulary.of(built.fleet, built.policy)
    a, b = MetricsOutbox(vocab), MetricsOutbox(vocab)
    sent_by_ingress(built, a, placed=5, spilled=3, refused=2, auth=1, tag="a")
    sent_by_ingress(built, b, placed=4, spilled=2, refused=0, auth=2, tag="b")
    metrics = PlaneMetrics(vocab)
    for source, outbox in (("ingress-a", a), ("ingress-b", b)):
        batch = pickle.loads(pickle.dumps(outbox.pending()))  # as Ray carries it to the actor
        assert metrics.apply_batch(source, batch) == 1
        outbox.acknowledge(batch)
    s = scrape(metrics)

    common = {"tenant": "t", "model": "m", "sla_class": "interactive"}
    assert value(s, "inferplane_placements_total", **common, substrate="gpu", spillover="false") == 9
    assert value(s, "inferplane_placements_total", **common, substrate="us-api", spillover="true") == 5
    assert value(s, "inferplane_spillovers_total", from_substrate="gpu", to_substrate="us-api",
                 reason="primary_saturated") == 5
    assert value(s, "inferplane_rejections_total", code="capacity", tenant="t", model="m") == 2
    assert value(s, "inferplane_rejections_total", code="auth", tenant="", model="m") == 3
    assert value(s, "inferplane_requests_total", **common, substrate="gpu", outcome="ok") == 9
    # us-api: a sent 3 (ok, error, ok), b sent 2 (ok, error).
    assert value(s, "inferplane_requests_total", **common, substrate="us-api", outcome="ok") == 3
    assert value(s, "inferplane_requests_total", **common, substrate="us-api", outcome="error") == 2
    assert value(s, "inferplane_input_tokens_total", tenant="t", substrate="gpu") == 9000
    assert value(s, "inferplane_output_tokens_total", tenant="t", substrate="gpu") == 9 * TOKENS_OUT
    assert value(s, "inferplane_input_tokens_total", tenant="t", substrate="us-api") == 500
    assert value(s, "inferplane_cost_usd_total", tenant="t", substrate="gpu") == 9 * COST
    assert value(s, "inferplane_cost_usd_total", tenant="t", substrate="us-api") == 5 * COST

    # Histograms: counts and sums exact, buckets cumulative.
    e2e = {"substrate": "gpu", "sla_class": "interactive"}
    assert value(s, "inferplane_request_duration_seconds_count", **e2e) == 9
    assert value(s, "inferplane_request_duration_seconds_sum", **e2e) == 9 * E2E
    assert value(s, "inferplane_request_duration_seconds_bucket", **e2e, le="0.25") == 0
    assert value(s, "inferplane_request_duration_seconds_bucket", **e2e, le="0.5") == 9
    assert value(s, "inferplane_request_duration_seconds_bucket", **e2e, le="+Inf") == 9
    # Only the successful us-api requests count for end-to-end time; all of them for TTFT.
    spill = {"substrate": "us-api", "sla_class": "interactive"}
    assert value(s, "inferplane_request_duration_seconds_count", **spill) == 3
    assert value(s, "inferplane_request_duration_seconds_sum", **spill) == 3 * 2 * E2E
    assert value(s, "inferplane_time_to_first_token_seconds_count", **spill) == 5
    assert value(s, "inferplane_time_to_first_token_seconds_sum", **spill) == 5 * TTFT
    assert value(s, "inferplane_time_per_output_token_seconds_count", substrate="gpu") == 9
    assert value(s, "inferplane_time_per_output_token_seconds_sum", substrate="gpu") == 9 * TPOT
    assert value(s, "inferplane_time_per_output_token_seconds_count", substrate="us-api") is None
    assert value(s, "inferplane_placement_duration_seconds_count", result="placed") == 14
    assert value(s, "inferplane_placement_duration_seconds_count", result="rejected") == 2


def test_a_batch_resent_after_a_lost_reply_is_counted_once() -> None:
    metrics = PlaneMetrics()
    outbox = MetricsOutbox()
    outbox.delta.record_rejection("auth", None, None)
    first = outbox.pending()
    assert metrics.apply_batch("ingress-a", first) == 1  # the actor applied it; the reply was lost
    outbox.delta.record_rejection("auth", None, None)
    second = outbox.pending()  # carries the first batch again, and a new one
    assert [seq for seq, _ in second] == [1, 2]
    assert metrics.apply_batch("ingress-a", second) == 1
    outbox.acknowledge(second)
    assert outbox.pending() == []
    assert value(scrape(metrics), "inferplane_rejections_total", code="auth", tenant="", model="") == 2
    # Another replica's sequence numbers are its own.
    other = MetricsOutbox()
    other.delta.record_rejection("auth", None, None)
    assert metrics.apply_batch("ingress-b", other.pending()) == 1


def test_a_long_outage_merges_the_backlog() -> None:
    outbox = MetricsOutbox(max_batches=3)
    for _ in range(5):
        outbox.delta.record_rejection("invalid", None, None)
        batch = outbox.pending()  # never acknowledged
    assert len(batch) <= 3
    metrics = PlaneMetrics()
    metrics.apply_batch("ingress-a", batch)
    assert value(scrape(metrics), "inferplane_rejections_total", code="invalid", tenant="", model="") == 5


def test_take_hands_over_everything_and_starts_again() -> None:
    delta = MetricsDelta()
    delta.record_rejection("auth", None, None)
    taken = delta.take()
    assert not delta and taken
    assert taken.counters == {"rejections": {("auth", "", ""): 1.0}}
    assert pickle.loads(pickle.dumps(taken)).counters == taken.counters


def test_bucket_bounds_are_inclusive() -> None:
    built = plane()
    delta = MetricsDelta()
    delta.record_request(finished(built, decide(built), ttft=0.1, e2e=1.0, tokens_out=1, cost=0.0))
    metrics = PlaneMetrics()
    metrics.apply(delta)
    s = scrape(metrics)
    labels = {"substrate": "gpu", "sla_class": "interactive"}
    assert value(s, "inferplane_request_duration_seconds_bucket", **labels, le="0.5") == 0
    assert value(s, "inferplane_request_duration_seconds_bucket", **labels, le="1.0") == 1
    assert value(s, "inferplane_time_to_first_token_seconds_bucket", **labels, le="0.1") == 1


def test_concurrent_recording_and_hand_over_lose_nothing() -> None:
    outbox = MetricsOutbox()
    metrics = PlaneMetrics()
    threads, per_thread = 4, 2000
    done = threading.Event()
    built = plane()
    one = finished(built, decide(built), tokens_in=1, tokens_out=1)

    def record() -> None:
        for _ in range(per_thread):
            outbox.delta.record_request(one)

    def sync() -> None:
        while not done.is_set():
            batch = outbox.pending()
            metrics.apply_batch("ingress-a", batch)
            outbox.acknowledge(batch)

    workers = [threading.Thread(target=record) for _ in range(threads)]
    syncer = threading.Thread(target=sync)
    syncer.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    syncer.join()
    metrics.apply_batch("ingress-a", outbox.pending())
    s = scrape(metrics)
    n = threads * per_thread
    assert value(s, "inferplane_requests_total", tenant="t", model="m", sla_class="interactive", substrate="gpu",
                 outcome="ok") == n
    assert value(s, "inferplane_request_duration_seconds_sum", substrate="gpu", sla_class="interactive") == n * E2E


def test_signals_become_per_substrate_gauges() -> None:
    built = plane()
    at = NOW - 0.5
    snap = snapshot(built, {
        "gpu": SubstrateSignals(in_flight=Reading(3, at), queued=Reading(1, at), kv_cache_usage=Reading(0.75, at),
                                gpu_memory_used_ratio=Reading(0.5, NOW - 1.5), error_rate=Reading(0.25, at),
                                ttft_ratio=Reading(1.4, at)),
        "us-api": SubstrateSignals(in_flight=Reading(0, NOW), rate_limit_requests_remaining=Reading(42, NOW),
                                   rate_limit_tokens_remaining=Reading(9000, NOW), circuit=CircuitState.OPEN),
        "eu-api": SubstrateSignals(in_flight=Reading(0, NOW), circuit=CircuitState.HALF_OPEN),
    }, version=12)
    metrics = PlaneMetrics()
    metrics.set_signals(snap, NOW)
    s = scrape(metrics)
    assert value(s, "inferplane_substrate_in_flight_requests", substrate="gpu") == 3
    assert value(s, "inferplane_substrate_queued_requests", substrate="gpu") == 1
    assert value(s, "inferplane_substrate_kv_cache_usage_ratio", substrate="gpu") == 0.75
    assert value(s, "inferplane_substrate_gpu_memory_used_ratio", substrate="gpu") == 0.5
    assert value(s, "inferplane_substrate_error_ratio", substrate="gpu") == 0.25
    assert value(s, "inferplane_substrate_ttft_observed_over_declared_ratio", substrate="gpu") == 1.4
    assert value(s, "inferplane_substrate_ttft_observed_over_declared_ratio", substrate="us-api") is None
    assert value(s, "inferplane_substrate_rate_limit_remaining_requests", substrate="us-api") == 42
    assert value(s, "inferplane_substrate_rate_limit_remaining_tokens", substrate="us-api") == 9000
    assert [value(s, "inferplane_substrate_circuit_state", substrate=n) for n in ("gpu", "eu-api", "us-api")] == [
        0, 1, 2]
    assert value(s, "inferplane_substrate_signal_age_seconds", substrate="gpu", signal="in_flight") == 0.5
    assert value(s, "inferplane_substrate_signal_age_seconds", substrate="gpu", signal="gpu_memory_used_ratio") == 1.5
    # A signal nobody reported has no sample: absent, never a made-up zero.
    assert value(s, "inferplane_substrate_kv_cache_usage_ratio", substrate="us-api") is None
    assert value(s, "inferplane_substrate_signal_age_seconds", substrate="us-api", signal="queued") is None
    assert value(s, "inferplane_snapshot_version") == 12
    assert value(s, "inferplane_signals_updated_timestamp_seconds") == NOW
    assert value(s, "inferplane_substrate_info", substrate="us-api", substrate_class="provider_api",
                 kind="emulated", jurisdiction="US", region="us-east", zone="us-east-1a", emulated="true") == 1


def test_each_ingress_reports_its_snapshot_until_it_goes_quiet() -> None:
    metrics = PlaneMetrics()
    metrics.set_ingress("ingress-a", 7, 0.125, now_s=100.0)
    metrics.set_ingress("ingress-b", 6, 0.25, now_s=104.0)
    s = scrape(metrics)
    assert value(s, "inferplane_ingress_snapshot_version", ingress="ingress-a") == 7
    assert value(s, "inferplane_ingress_snapshot_age_seconds", ingress="ingress-b") == 0.25
    metrics.expire_ingress(now_s=106.0, max_silence_s=5.0)
    s = scrape(metrics)
    assert value(s, "inferplane_ingress_snapshot_version", ingress="ingress-a") is None
    assert value(s, "inferplane_ingress_snapshot_version", ingress="ingress-b") == 6


SECRETS = ("sk-tenant-PLANTED-b81d4e2a95c6f037", "PLANTED-PROMPT the merger closes friday", "sk-provider-PLANTED-3f9a")


def record_secrets(delta: MetricsDelta, built) -> None:
    key, prompt, provider = SECRETS
    delta.record_rejection("auth", None, key)
    delta.record_rejection(prompt, prompt, prompt)
    for refused in (decide(built, model=key), decide(built, sla=prompt)):  # the decision echoes the names
        delta.record_decision(refused, 0.0001)
        delta.record_request(record_for(built, refused, model=key, sla_class=prompt, out=outcome(
            status=refused.http_status, error=refused.rejection_code.value, ttft=None, e2e=0.001)))
    # A request placed on a substrate whose record carries client text and a key in every name.
    placed = decide(built)
    d = PlacementDecision(**{name: getattr(placed, name) for name in DECISION_FIELDS}
                          | {"substrate": provider, "tenant": key, "model": prompt, "sla_class": prompt})
    delta.record_request(dataclasses.replace(finished(built, placed, ok=False, tenant=key, model=prompt,
                                                      sla_class=prompt), decision=d))
    # Refused before placement, the key typed as the model.
    delta.record_request(record_for(built, None, tenant=None, model=key, sla_class=prompt,
                                    out=outcome(status=401, error="invalid_api_key")))


def test_label_values_never_carry_keys_or_prompt_text() -> None:
    built = plane()
    vocab = LabelVocabulary.of(built.fleet, built.policy)
    # Cleaned at the source: nothing secret even travels to the actor.
    at_source = MetricsDelta(vocab)
    record_secrets(at_source, built)
    wire = pickle.dumps(at_source.take())
    for secret in SECRETS:
        assert secret.encode() not in wire
    # And cleaned again by the actor, whatever an ingress sends.
    unchecked = MetricsDelta()
    record_secrets(unchecked, built)
    metrics = PlaneMetrics(vocab)
    metrics.apply(pickle.loads(wire))
    metrics.apply(unchecked)
    metrics.set_ingress(SECRETS[1], 1, 0.0)
    text = generate_latest(metrics.registry).decode()
    for secret in SECRETS:
        assert secret not in text
    s = scrape(metrics)
    assert value(s, "inferplane_rejections_total", code="auth", tenant="", model="other") == 4
    assert value(s, "inferplane_rejections_total", code="unknown_model", tenant="t", model="other") == 2


def test_names_follow_prometheus_conventions() -> None:
    built = plane()
    metrics = PlaneMetrics()
    delta = MetricsDelta()
    sent = MetricsOutbox()
    sent_by_ingress(built, sent, placed=1, spilled=1, refused=1, auth=1, tag="x")
    metrics.apply(sent.delta)
    delta.record_audit_dropped(2)
    metrics.apply(delta)
    metrics.set_signals(snapshot(built), NOW)
    metrics.set_ingress("ingress-a", 1, 0.0)
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    kinds = defaultdict(set)
    for fam in families:
        assert fam.name.startswith("inferplane_"), fam.name
        kinds[fam.type].add(fam.name)
        if fam.type == "counter":
            assert all(s.name == fam.name + "_total" for s in fam.samples)
        if fam.type == "histogram":
            assert fam.name.endswith(("_seconds", "_ratio"))
    assert {f"inferplane_{c}" for c in (*COUNTERS, *ACTOR_COUNTERS)} == kinds["counter"]
    assert {f"inferplane_{h}" for h in HISTOGRAMS} == kinds["histogram"]
    # ``substrate_drift`` is a 0/1 flag, named as the alert rules expect it.
    assert all(n.endswith(("_requests", "_ratio", "_seconds", "_tokens", "_state", "_info", "_version", "_signal",
                           "_usd", "_drift", "_replicas"))
               for n in kinds["gauge"])


def test_rejection_codes_of_the_ingress() -> None:
    assert [rejection_code_for(c) for c in ("invalid_api_key", "invalid_json", "request_too_large",
                                            "placement_unavailable", "capacity")] == [
        "auth", "invalid", "invalid", "snapshot_stale", "capacity"]


def test_the_registry_is_served_over_http() -> None:
    metrics = PlaneMetrics()
    delta = MetricsDelta()
    delta.record_rejection("auth", None, None)
    metrics.apply(delta)
    server, thread = serve_metrics(metrics.registry, port=0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert 'inferplane_rejections_total{code="auth",model="",tenant=""} 1.0' in body


@pytest.mark.parametrize("bad", [[0.0, [1, 2]], [1.0, [1] * 99]])
def test_histograms_recorded_with_other_buckets_are_not_merged(bad) -> None:
    delta = MetricsDelta()
    delta.histograms = {"time_per_output_token_seconds": {("gpu",): bad}}
    metrics = PlaneMetrics()
    metrics.apply(delta)
    assert value(scrape(metrics), "inferplane_time_per_output_token_seconds_count", substrate="gpu") is None


def test_a_held_request_counts_its_wait_and_at_most_one_rejection() -> None:
    """Every pump that finds a held request still blocked is a ``place()`` that placed nothing: none of
    them is a rejection. The request's record says how it ended: dispatched after its wait (no
    rejection), or refused (one, with the code it was answered with)."""
    built = plane()
    vocab = LabelVocabulary.of(built.fleet, built.policy)
    delta = MetricsDelta(vocab)
    busy = ("gpu", "sov", "de-west", "eu-api", "us-api")
    for k in range(5):  # the held request's placements while it waits
        delta.record_decision(decide(built, request_id="held", busy=busy), 0.0001)
    served = decide(built, request_id="held")
    delta.record_decision(served, 0.0001)
    delta.record_request(dataclasses.replace(finished(built, served), held_s=0.4))
    refused = decide(built, request_id="late", busy=busy)
    delta.record_request(dataclasses.replace(record_for(built, refused, out=outcome(
        status=429, error="queue_full", ttft=None, e2e=0.9)), held_s=0.0))
    gave_up = decide(built, request_id="gave-up", busy=busy)
    delta.record_request(dataclasses.replace(record_for(built, gave_up, out=outcome(
        status=429, error="capacity", ttft=None, e2e=1.3)), held_s=1.3))
    metrics = PlaneMetrics(vocab)
    metrics.apply(delta.take())
    s = scrape(metrics)
    assert value(s, "inferplane_rejections_total", code="capacity", tenant="t", model="m") == 1
    assert value(s, "inferplane_rejections_total", code="queue_full", tenant="t", model="m") == 1
    assert value(s, "inferplane_hold_queue_wait_seconds_count", tenant="t", sla_class="interactive",
                 result="dispatched") == 1
    assert value(s, "inferplane_hold_queue_wait_seconds_sum", tenant="t", sla_class="interactive",
                 result="refused") == 1.3
    assert value(s, "inferplane_placements_total", tenant="t", model="m", sla_class="interactive", substrate="gpu",
                 spillover="false") == 1


# -- Issue #18: residuals, sovereignty, budgets, drift ----------------------------------------------


def test_residuals_are_histograms_per_substrate_and_feed_the_drift_detector() -> None:
    built = plane()
    outbox = MetricsOutbox(LabelVocabulary.of(built.fleet, built.policy))
    d = decide(built)
    record = finished(built, d)
    outbox.delta.record_request(record)
    outbox.delta.record_request(finished(built, d, ok=False))  # a failure is no residual
    metrics = PlaneMetrics(LabelVocabulary.of(built.fleet, built.policy))
    metrics.apply_batch("ingress-a", outbox.pending())
    metrics.set_signals(snapshot(built), NOW)
    samples = scrape(metrics)
    ttft_res = TTFT / d.predicted_ttft_s
    tpot_res = TPOT / d.predicted_tpot_s
    assert value(samples, "inferplane_ttft_residual_ratio_count", substrate=d.substrate) == 1
    assert value(samples, "inferplane_ttft_residual_ratio_sum", substrate=d.substrate) == pytest.approx(ttft_res)
    assert value(samples, "inferplane_tpot_residual_ratio_sum", substrate=d.substrate) == pytest.approx(tpot_res)
    assert metrics.drift_status(record.finished_at_s)[d.substrate]["samples"] == 1
    # Every substrate of the config has a drift series per kind, 0 until flagged.
    assert value(samples, "inferplane_substrate_drift", substrate="us-api", kind="size") == 0.0
    assert value(samples, "inferplane_substrate_drift", substrate=d.substrate, kind="ttft") == 0.0


def test_the_drift_gauge_is_1_while_flagged() -> None:
    built = plane()
    metrics = PlaneMetrics(LabelVocabulary.of(built.fleet, built.policy))
    delta = MetricsDelta()
    for i in range(40):  # three times slower than predicted
        delta.samples.append(("gpu", NOW + i, 3.0, 3.0, 1000, 50, 0.75, 0.06))
    metrics.apply(delta)
    metrics.set_signals(snapshot(built), NOW + 40)
    samples = scrape(metrics)
    assert value(samples, "inferplane_substrate_drift", substrate="gpu", kind="ttft") == 1.0
    assert value(samples, "inferplane_substrate_drift", substrate="gpu", kind="tpot") == 1.0
    assert value(samples, "inferplane_substrate_drift", substrate="sov", kind="ttft") == 0.0
    assert "gpu" in metrics.drift_floors(NOW + 40)


def test_the_detector_is_fed_declared_residuals_not_the_prediction_error() -> None:
    """A substrate three times slower than declared, whose estimate has learned it (the prediction
    matches the outcome: residual 1), is still flagged: the samples carry observed / declared."""
    built = plane()
    d = decide(built)
    learned = PlacementDecision(**{name: getattr(d, name) for name in DECISION_FIELDS}
                                | {"candidates": d.candidates, "predicted_ttft_s": TTFT, "predicted_e2e_s": E2E,
                                   "predicted_output_tokens": TOKENS_OUT - 1.0,
                                   "declared_ttft_s": TTFT / 3.0, "declared_tpot_s": TPOT / 3.0})
    outbox = MetricsOutbox(LabelVocabulary.of(built.fleet, built.policy))
    for i in range(40):
        outbox.delta.record_request(dataclasses.replace(finished(built, learned), finished_at_s=NOW + i))
    metrics = PlaneMetrics(LabelVocabulary.of(built.fleet, built.policy))
    metrics.apply_batch("ingress-a", outbox.pending())
    metrics.set_signals(snapshot(built), NOW + 40)
    samples = scrape(metrics)
    assert value(samples, "inferplane_ttft_residual_ratio_sum", substrate=d.substrate) == pytest.approx(40.0)
    assert value(samples, "inferplane_substrate_drift", substrate=d.substrate, kind="ttft") == 1.0
    assert value(samples, "inferplane_substrate_drift", substrate=d.substrate, kind="tpot") == 1.0
    status = metrics.drift_status(NOW + 40)[d.substrate]
    assert status["ttft_vs_declared_median"] == pytest.approx(3.0)


def test_residual_samples_survive_pickling_and_a_merged_backlog() -> None:
    delta = MetricsDelta()
    delta.samples.append(("gpu", 1.0, 1.0, 1.0, 10, 10, 0.1, 0.01))
    assert pickle.loads(pickle.dumps(delta)).samples == delta.samples
    outbox = MetricsOutbox(max_batches=1)
    outbox.delta.samples.append(("gpu", 1.0, 1.0, 1.0, 10, 10, 0.1, 0.01))
    outbox.pending()
    outbox.delta.samples.append(("gpu", 2.0, 1.0, 1.0, 10, 10, 0.1, 0.01))
    [(_, merged)] = outbox.pending()
    assert [x[1] for x in merged.samples] == [1.0, 2.0]


def test_sovereignty_violations_exist_as_zero_and_count_a_violation() -> None:
    built = plane()  # tenant `other` may run only in DE
    vocab = LabelVocabulary.of(built.fleet, built.policy)
    assert vocab.could_violate() == [("other", "eu-api"), ("other", "us-api")]
    assert not any(t == "t" for t, _ in vocab.could_violate())
    metrics = PlaneMetrics(vocab)
    samples = scrape(metrics)
    assert value(samples, "inferplane_sovereignty_violations_total", tenant="other", substrate="us-api") == 0.0
    assert value(samples, "inferplane_sovereignty_violations_total", tenant="other", substrate="gpu") is None
    placed = decide(built, busy=("gpu", "sov", "de-west", "eu-api"))
    assert placed.substrate == "us-api"
    forged = PlacementDecision(**{name: getattr(placed, name) for name in DECISION_FIELDS} | {"tenant": "other"})
    delta = MetricsDelta(vocab)
    delta.record_request(finished(built, forged, tenant="other"))
    delta.record_request(finished(built, placed))  # tenant t may run in the US
    metrics.apply(delta)
    samples = scrape(metrics)
    assert value(samples, "inferplane_sovereignty_violations_total", tenant="other", substrate="us-api") == 1.0
    assert value(samples, "inferplane_sovereignty_violations_total", tenant="t", substrate="us-api") is None


def test_tenant_budget_and_spend_gauges() -> None:
    built = plane()
    vocab = dataclasses.replace(LabelVocabulary.of(built.fleet, built.policy), tenant_budgets_usd={"capped": 50.0},
                                tenants=frozenset({"t", "capped"}))
    metrics = PlaneMetrics(vocab)
    assert value(scrape(metrics), "inferplane_tenant_spend_usd", tenant="capped") is None  # no snapshot yet
    snap = dataclasses.replace(snapshot(built), tenant_spend_usd={"capped": 12.5})
    metrics.set_signals(snap, NOW)
    samples = scrape(metrics)
    assert value(samples, "inferplane_tenant_budget_usd", tenant="capped") == 50.0
    assert value(samples, "inferplane_tenant_budget_usd", tenant="t") is None
    assert value(samples, "inferplane_tenant_spend_usd", tenant="capped") == 12.5
    assert value(samples, "inferplane_tenant_spend_usd", tenant="t") == 0.0
