"""Prefix-cache locality in placement: block hashes, the LRU belief, the scorer, the estimate, and
that a predicted hit never crosses a hard rule (``inferplane/placement/prefix.py``, ``scorers.py``,
``estimate.py``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferplane.placement import place
from inferplane.placement.estimate import estimate
from inferplane.placement.filters import RejectionCode
from inferplane.placement.prefix import BlockCache, PrefixIndex, block_hashes
from inferplane.placement.scorers import PrefixLocality
from inferplane.telemetry.audit import audit_row, decision_from_record, recorded_decision
from inferplane.telemetry.metrics import MetricsDelta, PlaneMetrics
from tests.builders import context, fleet, request, signals, snapshot, substrate
from tests.strategies import Scenario, scenarios
from tests.test_audit import plane, record_for
from tests.test_cli import run
from tests.test_metrics import finished, scrape, value

ROOT = Path(__file__).resolve().parents[1]

# -- block hashes --------------------------------------------------------------------------------


def test_equal_prefixes_hash_alike_and_each_hash_covers_the_whole_prefix() -> None:
    a = list(range(40))
    b = list(range(32)) + [99] * 8           # differs from the 33rd token on
    c = [7] + list(range(1, 40))            # differs in the first token only
    ha, hb, hc = block_hashes(a, 8), block_hashes(b, 8), block_hashes(c, 8)
    assert len(ha) == 5
    assert ha[:4] == hb[:4] and ha[4] != hb[4]
    # A change in the first block changes every later hash, although those blocks' tokens are equal.
    assert all(x != y for x, y in zip(ha, hc))
    assert block_hashes(a, 8) == ha  # deterministic


def test_a_partial_last_block_is_not_hashed() -> None:
    assert len(block_hashes(list(range(23)), 8)) == 2
    assert block_hashes(list(range(7)), 8) == ()
    assert block_hashes(list(range(23)), 8) == block_hashes(list(range(16)), 8)


def test_block_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        block_hashes([1, 2, 3], 0)


# -- the LRU ---------------------------------------------------------------------------------------


@given(st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=12, unique=True), max_size=40),
       st.integers(1, 20))
def test_a_block_cache_never_holds_more_than_its_capacity(prompts: list[list[int]], capacity: int) -> None:
    cache = BlockCache(capacity)
    for blocks in prompts:
        cache.touch(blocks)
        assert len(cache) <= capacity
        # The prompt's first blocks are its most recent: its head survives its own insertion.
        assert cache.leading_run(blocks) == min(capacity, len(blocks))


def test_the_least_recently_used_block_goes_first_and_a_prompt_keeps_its_head_longest() -> None:
    cache = BlockCache(4)
    cache.touch([1, 2, 3])
    cache.touch([9])        # recency, oldest first: 3, 2, 1, 9
    cache.touch([10])       # evicts 3, the tail of the first prompt, not its head
    assert 3 not in cache and all(b in cache for b in (1, 2, 9, 10))
    assert cache.leading_run([1, 2, 3]) == 2


def test_only_a_leading_run_counts() -> None:
    cache = BlockCache(10)
    cache.touch([1, 3, 4])
    assert cache.leading_run([1, 2, 3, 4]) == 1       # 3 and 4 are held, but 2 is not: no reuse past it
    assert cache.leading_run([2, 3, 4]) == 0
    assert cache.leading_run([]) == 0


def test_a_query_changes_no_recency() -> None:
    cache = BlockCache(2)
    cache.touch([1])
    cache.touch([2])
    cache.leading_run([1])  # a query, not a use
    cache.touch([3])
    assert 1 not in cache and 2 in cache


def test_the_index_believes_only_what_it_was_told_per_substrate() -> None:
    index = PrefixIndex({"a": 8, "b": 8})
    index.record("a", (1, 2, 3))
    assert index.hit_fraction("a", (1, 2, 3, 4)) == 0.75
    assert index.hit_fraction("b", (1, 2, 3, 4)) == 0.0
    assert index.hit_fraction("no-cache", (1, 2, 3)) == 0.0
    index.record("no-cache", (1, 2, 3))  # a substrate without a prefix cache learns nothing
    assert index.hit_fraction("no-cache", (1, 2, 3)) == 0.0
    assert index.hits((1, 2, 3, 4)) == (("a", 0.75),)
    assert index.hits(()) == ()
    assert index.hits((1, 2), substrates=("b",)) == ()


# -- the scorer and the estimate -----------------------------------------------------------------


@given(st.lists(st.tuples(st.sampled_from(["x", "y", "z"]), st.floats(1e-9, 1.0)), max_size=3,
                unique_by=lambda t: t[0]))
def test_prefix_locality_is_the_predicted_hit_and_in_the_unit_interval(hits: list[tuple[str, float]]) -> None:
    built = fleet(substrate("x")).build()
    req = request(prefix_hits=tuple(hits))
    value = PrefixLocality().score(context(built, req), built.fleet.substrate("x"), signals(), None)
    assert 0.0 <= value <= 1.0
    assert value == dict(hits).get("x", 0.0)


def test_a_hit_lowers_only_the_prefill_it_saves() -> None:
    """estimate.py: only the uncached part of the prompt is prefilled; decode and cost unchanged
    (idle substrate, 8,000-token prompt at the builder's prefill rate)."""
    built = fleet(substrate("x")).build()
    spec = built.fleet.substrate("x")
    sig = signals(in_flight=0)
    cold = estimate(spec, sig, 8000, 100, None, 1000.0, 2.0)
    warm = estimate(spec, sig, 8000, 100, None, 1000.0, 2.0, 0.75)
    prefill = 8000 / spec.latency.prefill_tokens_per_s
    assert cold.ttft_s - warm.ttft_s == pytest.approx(0.75 * prefill)
    assert (cold.e2e_s - cold.ttft_s) == pytest.approx(warm.e2e_s - warm.ttft_s)
    assert warm.cost_usd <= cold.cost_usd


def test_a_warm_cache_draws_a_request_between_equals_but_not_onto_a_full_substrate() -> None:
    b = fleet(substrate("a"), substrate("b")).spillover(mode="scored")
    built = b.build()
    idle = {"a": signals(in_flight=0), "b": signals(in_flight=0)}
    assert place(request(prefix_hits=(("b", 0.9),)), snapshot(built, idle), built.policy).substrate == "b"
    assert place(request(prefix_hits=(("a", 0.9),)), snapshot(built, idle), built.policy).substrate == "a"
    full_b = {"a": signals(in_flight=0), "b": signals(in_flight=10_000)}
    d = place(request(prefix_hits=(("b", 1.0),)), snapshot(built, full_b), built.policy)
    assert d.substrate == "a"
    assert next(c for c in d.candidates if c.name == "b").code is RejectionCode.CAPACITY


# -- a hit never crosses a hard rule ----------------------------------------------------------------

_SOFT = {RejectionCode.PREDICTED_TOO_SLOW}  # the only verdict a faster prediction may change


@given(scenarios(), st.data())
def test_a_predicted_hit_never_admits_what_a_hard_rule_rejects(sc: Scenario, data: st.DataObject) -> None:
    """Every substrate predicted to hold the whole prompt: each one a hard rule rejects without the
    hit is rejected with it, for the same reason; and a forbidden jurisdiction is never chosen."""
    names = [s.name for s in sc.built.fleet.substrates]
    hits = tuple((n, data.draw(st.floats(0.01, 1.0))) for n in names)
    cold = dataclasses.replace(sc.request, prefix_hits=())
    warm = dataclasses.replace(sc.request, prefix_hits=hits)
    d_cold = place(cold, sc.snapshot, sc.built.policy)
    d_warm = place(warm, sc.snapshot, sc.built.policy)
    by_name = {c.name: c for c in d_warm.candidates}
    for c in d_cold.candidates:
        if c.code is not None and c.code not in _SOFT:
            assert by_name[c.name].code == c.code, (c.name, c.code, by_name[c.name].code)
    allowed = sc.built.policy.tenants[sc.request.tenant].allowed_countries
    for name in ((d_warm.substrate,) if d_warm.placed else ()) + d_warm.fallbacks:
        assert sc.built.fleet.substrate(name).countries <= allowed
    if d_warm.placed:
        for c in d_warm.candidates:
            if c.scores is not None:
                assert all(0.0 <= s <= 1.0 for s in c.scores)
                assert 0.0 <= c.total <= 1.0


# -- the prediction on the record: decision, audit row, metric ----------------------------------------


def test_the_decision_audit_row_and_metric_carry_the_predicted_hit() -> None:
    built = plane()
    snap = snapshot(built)
    warm = place(request(prefix_hits=(("gpu", 0.5), ("us-api", 1.0))), snap, built.policy)
    assert warm.substrate == "gpu" and warm.predicted_prefix_hit == 0.5
    cold = place(request(), snap, built.policy)
    assert cold.predicted_prefix_hit == 0.0
    refused = place(request(tenant="nobody"), snap, built.policy)
    assert refused.predicted_prefix_hit is None
    assert warm.to_dict()["predicted_prefix_hit"] == 0.5
    assert decision_from_record(recorded_decision(warm, built.fleet)).predicted_prefix_hit == 0.5
    row = audit_row(record_for(built, warm), built.fleet, built.policy)
    assert row["predicted_prefix_hit"] == 0.5
    assert audit_row(record_for(built, None), built.fleet, built.policy)["predicted_prefix_hit"] is None

    delta = MetricsDelta()
    delta.record_request(finished(built, warm, tokens_in=1000))
    delta.record_request(finished(built, cold, tokens_in=1000))
    metrics = PlaneMetrics()
    metrics.apply(delta.take())
    samples = scrape(metrics)
    assert value(samples, "inferplane_prefix_predicted_tokens_total", tenant="t", substrate="gpu") == 500.0
    assert value(samples, "inferplane_input_tokens_total", tenant="t", substrate="gpu") == 2000.0


def test_explain_takes_a_believed_prefix_hit_and_shows_it(capsys: pytest.CaptureFixture[str]) -> None:
    """A 12k-token prompt misses the interactive deadline on the cold primary and goes where 90 % of
    it is believed cached; the table and the JSON say so; a bad --prefix-hit is refused by name."""
    args = ["explain", str(ROOT / "configs" / "scenarios" / "enterprise-burst.fleet.yaml"), "--tenant", "global-app",
            "--model", "llama-70b", "--input-tokens", "12000", "--max-tokens", "256"]
    code, out, _ = run(capsys, *args, "--prefix-hit", "gpu-iad=0.9", "--json")
    assert code == 0
    decision = json.loads(out)
    assert decision["substrate"] == "gpu-iad" and decision["predicted_prefix_hit"] == 0.9
    by_name = {c["name"]: c for c in decision["candidates"]}
    assert by_name["gpu-iad"]["scores"]["prefix_locality"] == 0.9
    assert by_name["gpu-fra"]["scores"]["prefix_locality"] == 0.0
    code, out, _ = run(capsys, *args)
    assert code == 0 and "prefix hit" in out and "placed on gpu-iad" not in out
    code, _, err = run(capsys, *args, "--prefix-hit", "gpu-iad=1.5")
    assert code != 0 and "--prefix-hit `gpu-iad=1.5`" in err


def test_a_replica_believes_a_prompt_held_where_it_was_sent_and_cached_once_prefilled() -> None:
    """The belief lives in the replica's state (the Serve ingress and the replay run the same):
    the attempt loop places with the hits it predicts; a dispatch's blocks count where it went
    while it is in flight (a prompt sharing them, behind it, finds them); once its first byte has
    come they stay there as cached, and a dispatch that failed or was abandoned before its first
    byte leaves nothing behind."""
    from inferplane.fleet_state import PublishedSnapshot
    from inferplane.plane.attempts import AttemptLoop, Dispatch, FirstByteFailure
    from inferplane.plane.state import ReplicaState
    from tests.builders import NOW, signals

    doc = substrate("pool").kind("vllm").capacity(4).obj()
    doc["latency"]["kv_cache_tokens_per_replica"] = 100 * 16
    built = fleet(doc).build()
    state = ReplicaState(built.fleet, built.policy, prefix_block_tokens=16)
    assert state.prefix is not None and ReplicaState(built.fleet, built.policy).prefix is None
    report = state.take_report(NOW)
    assert state.publish(PublishedSnapshot(1, NOW, built.policy.policy_hash,
                                           (signals(in_flight=0.0, kv=0.0, now=NOW),)), report)

    def attempt(rid: str, blocks: tuple[int, ...]) -> AttemptLoop:
        loop = AttemptLoop(state, request(request_id=rid, now=NOW, input_tokens=16 * len(blocks)), blocks)
        assert isinstance(loop.start(), Dispatch)
        return loop

    failed = attempt("a", (1, 2, 3))
    assert state.prefix_hits((1, 2, 3, 4)) == (("pool", 0.75),)  # in flight: held as far as placement can tell
    failed.failed(FirstByteFailure("unavailable", "down", True, None), NOW)
    assert state.prefix_hits((1, 2, 3, 4)) == ()  # it failed before its first byte: nothing was cached
    abandoned = attempt("b", (1, 2))
    abandoned.abandoned()
    assert state.prefix_hits((1, 2, 3, 4)) == ()

    first = attempt("c", (1, 2, 3))
    assert first.request.prefix_hits == ()
    second = attempt("d", (1, 2, 3, 4))  # sent while the first is in flight: predicted to share its blocks
    assert second.request.prefix_hits == (("pool", 0.75),)
    second.finished(False, NOW + 0.1, 1, NOW + 0.2)  # it failed mid-stream, after its first byte: prefilled
    first.finished(True, NOW + 0.1, 5, NOW + 0.2)
    assert state.prefix_hits((1, 2, 3, 4, 5)) == (("pool", 0.8),)
    assert attempt("e", (1, 2, 3, 4)).request.prefix_hits == (("pool", 1.0),)


def test_blocks_in_flight_are_counted_per_prompt_and_forgotten_when_the_last_settles() -> None:
    index = PrefixIndex({"a": 8, "b": 8})
    index.sent("a", (1, 2))
    index.sent("a", (1, 3))
    assert index.hit_fraction("a", (1, 2)) == 1.0 and index.hit_fraction("b", (1, 2)) == 0.0
    index.settled("a", (1, 2), prefilled=False)
    assert index.hit_fraction("a", (1, 2)) == 0.5  # block 1 is still carried by the other prompt
    assert index.hits((1, 3)) == (("a", 1.0),)
    index.settled("a", (1, 3), prefilled=True)
    assert index.hit_fraction("a", (1, 3)) == 1.0 and index.hit_fraction("a", (1, 2)) == 0.5
    index.sent("no-cache", (1,))  # a substrate without a prefix cache believes nothing
    assert index.hit_fraction("no-cache", (1,)) == 0.0
