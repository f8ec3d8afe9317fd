"""Decisions of ``place(request, snapshot, policy)`` on hand-built fleets.

Only the public behaviour is tested (the decision and its fields), so the engine's internals may
change freely underneath.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from inferplane.placement import PlacementDecision, RejectionCode, SpilloverReason, place
from inferplane.placement.policy import ScorerWeight, TenantPolicy
from tests.builders import FleetBuilder, fleet, request, signals, snapshot, substrate


def primary_and_spill(*, mode: str = "on_need") -> FleetBuilder:
    """``p``: the primary, a reserved pool in DE next to the ingress, a little slower and dearer
    than ``s``, a burst provider API in the US that is faster and cheaper per request."""
    return fleet(
        substrate("p").cls("gpu_cluster").jurisdiction("DE").zone("eu-central", "eu-central-1a").tier("reserved")
        .capacity(16).latency(base_ttft_ms=300, prefill=5000, decode=40).cost(gpu_hour=8.0, gpus=1),
        substrate("s").cls("provider_api").jurisdiction("US").zone("us-east", "us-east-1a").tier("burst")
        .capacity(64).latency(base_ttft_ms=50, prefill=50_000, decode=400).cost(input_per_1m=0.1,
                                                                                output_per_1m=0.2),
    ).model("m", primary="p").spillover(mode=mode)


def decide(builder: FleetBuilder, by_name=None, **req) -> PlacementDecision:
    built = builder.build()
    return place(request(**req), snapshot(built, by_name), built.policy)


def candidate(d: PlacementDecision, name: str):
    return next(c for c in d.candidates if c.name == name)


# -- Primary and spillover ----------------------------------------------------------------------


def test_on_need_keeps_the_primary_when_it_meets_the_sla_even_if_outscored() -> None:
    d = decide(primary_and_spill())
    assert d.placed and d.http_status == 200
    assert (d.substrate, d.primary, d.spillover, d.spillover_reason) == ("p", "p", False, None)
    assert d.fallbacks == ("s",)
    p, s = candidate(d, "p"), candidate(d, "s")
    assert p.eligible and p.meets_sla
    assert s.total > p.total, "the fleet is built so that only on_need explains picking p"


def test_scored_mode_spills_when_the_primary_is_outscored() -> None:
    d = decide(primary_and_spill(mode="scored"))
    assert (d.substrate, d.spillover, d.spillover_reason) == ("s", True, SpilloverReason.PRIMARY_OUTSCORED)
    assert d.fallbacks == ("p",)


@pytest.mark.parametrize(
    ("primary_signals", "code", "reason"),
    [
        pytest.param(signals(in_flight=16), RejectionCode.CAPACITY, SpilloverReason.PRIMARY_SATURATED,
                     id="saturated"),
        pytest.param(signals(in_flight=16, queued=6), RejectionCode.CAPACITY,
                     SpilloverReason.PRIMARY_SATURATED, id="saturated-with-a-queue"),
        pytest.param(signals(circuit="open"), RejectionCode.UNHEALTHY, SpilloverReason.PRIMARY_UNHEALTHY,
                     id="circuit-open"),
        pytest.param(signals(age_s=5.0), RejectionCode.STALE_SIGNALS, SpilloverReason.PRIMARY_UNHEALTHY,
                     id="stale"),
        pytest.param(signals(in_flight=None), RejectionCode.STALE_SIGNALS, SpilloverReason.PRIMARY_UNHEALTHY,
                     id="never-reported"),
        pytest.param(signals(rl_requests=0), RejectionCode.RATE_LIMITED,
                     SpilloverReason.PRIMARY_RATE_LIMITED, id="rate-limited"),
    ],
)
def test_spillover_reason_follows_the_primary_rejection(primary_signals, code, reason) -> None:
    d = decide(primary_and_spill(), {"p": primary_signals})
    assert (d.substrate, d.spillover, d.spillover_reason) == ("s", True, reason)
    assert candidate(d, "p").code is code
    assert d.fallbacks == ()


@pytest.mark.parametrize("by_specification", [False, True])
def test_on_need_does_not_queue_at_the_primary_when_its_running_slots_are_full(by_specification) -> None:
    """p has a queue of its own (8 places): with its 16 running slots full, a request would wait
    there. Predicted in time or not, a wait's length is what the plane predicts worst, so on_need
    takes the best total instead (here s), saying the primary was saturated."""
    builder = fleet(
        substrate("p").cls("gpu_cluster").jurisdiction("DE").zone("eu-central", "eu-central-1a").tier("reserved")
        .capacity(16, queued=8).latency(base_ttft_ms=300, prefill=5000, decode=40).cost(gpu_hour=8.0, gpus=1),
        substrate("s").cls("provider_api").jurisdiction("US").zone("us-east", "us-east-1a").tier("burst")
        .capacity(64).latency(base_ttft_ms=50, prefill=50_000, decode=400).cost(input_per_1m=0.1, output_per_1m=0.2),
    ).model("m", primary="p").spillover(mode="on_need")
    if by_specification:  # a rule the arithmetic leaves to the specification
        builder = builder.external_rule("power_headroom", reject_below=0.1)
    d = decide(builder, {"p": signals(in_flight=17, queued=1)})
    p = candidate(d, "p")
    assert p.eligible and p.meets_sla, "predicted in time even after its wait"
    assert (d.substrate, d.spillover, d.spillover_reason) == ("s", True, SpilloverReason.PRIMARY_SATURATED)
    # With a running slot free it keeps the primary.
    assert decide(builder, {"p": signals(in_flight=15, queued=0)}).substrate == "p"


@pytest.mark.parametrize("by_specification", [False, True])
def test_on_need_keeps_the_primary_only_if_it_would_meet_the_deadlines_with_every_max_token(by_specification):
    """The tenant's requests produce 20 tokens on average (learned), this one may produce 2000: at
    40 tok/s on p that is 50 s, over the 20 s deadline. Predicted with the mean it meets; on_need
    keeps the primary only when it would meet them in full, so the request goes to the best total."""
    from inferplane.placement import FleetSnapshot

    builder = primary_and_spill()
    if by_specification:
        builder = builder.external_rule("power_headroom", reject_below=0.1)
    built = builder.build()
    base = snapshot(built)
    learned = FleetSnapshot(base.version, base.taken_at_s, base.fleet, base.signals,
                            expected_output_tokens={("t", "m"): 20.0})
    d = place(request(max_output_tokens=2000), learned, built.policy)
    p = candidate(d, "p")
    assert p.eligible and p.meets_sla, "with the learned length it is predicted in time"
    assert (d.substrate, d.spillover_reason) == ("s", SpilloverReason.PRIMARY_CANNOT_MEET_SLA)
    # A request that may produce only 200 tokens (5 s on p) keeps the primary.
    assert place(request(max_output_tokens=200), learned, built.policy).substrate == "p"


def test_spillover_when_the_primary_cannot_meet_the_sla() -> None:
    slow = fleet(
        substrate("p").latency(base_ttft_ms=2000),  # 2 s before the first token > 1.5 s deadline
        substrate("s").latency(base_ttft_ms=100),
    )
    d = decide(slow)
    p = candidate(d, "p")
    assert p.eligible and not p.meets_sla and p.ttft_s > 1.5
    assert (d.substrate, d.spillover_reason) == ("s", SpilloverReason.PRIMARY_CANNOT_MEET_SLA)
    assert d.fallbacks == ("p",)


def test_primary_that_misses_the_sla_stays_when_nothing_beats_it() -> None:
    """on_need does not force a spill: the best total still wins, and that may be the primary."""
    d = decide(fleet(substrate("p").latency(base_ttft_ms=2000),
                     substrate("s").latency(base_ttft_ms=5000).tier("burst")))
    assert not candidate(d, "p").meets_sla and candidate(d, "p").total > candidate(d, "s").total
    assert (d.substrate, d.spillover, d.spillover_reason) == ("p", False, None)


def test_retry_excluding_the_primary_spills_with_primary_failed() -> None:
    built = primary_and_spill().build()
    first = request()
    retry = first.retry_excluding("p")
    assert (retry.attempt, retry.exclude, retry.request_id) == (2, frozenset({"p"}), first.request_id)
    d = place(retry, snapshot(built), built.policy)
    assert (d.substrate, d.spillover_reason, d.attempt) == ("s", SpilloverReason.PRIMARY_FAILED, 2)
    assert candidate(d, "p").code is RejectionCode.EXCLUDED


def test_retry_never_lands_on_a_substrate_that_was_not_allowed() -> None:
    """Fallback re-places under the same filters: excluding the tenant's only allowed substrate
    leaves nothing, not the forbidden one."""
    built = primary_and_spill().tenant("t", allowed=["DE"]).build()
    first = place(request(), snapshot(built), built.policy)
    assert first.substrate == "p" and first.fallbacks == ()
    d = place(request().retry_excluding("p"), snapshot(built), built.policy)
    assert not d.placed and d.substrate is None and d.fallbacks == ()
    assert candidate(d, "s").code is RejectionCode.JURISDICTION


def test_primary_not_allowed_and_context_too_small() -> None:
    us_only = primary_and_spill().tenant("t", allowed=["US"])
    d = decide(us_only)
    assert (d.substrate, d.spillover_reason) == ("s", SpilloverReason.PRIMARY_NOT_ALLOWED)
    small = fleet(substrate("p").serves("m", window=4096), substrate("s").serves("m", window=32768))
    d = decide(small, input_tokens=6000, max_output_tokens=200)
    assert (d.substrate, d.spillover_reason) == ("s", SpilloverReason.PRIMARY_CONTEXT_TOO_SMALL)


def test_spillover_is_restricted_to_the_models_targets() -> None:
    b = fleet(substrate("p"), substrate("s1"), substrate("s2")).model("m", primary="p", spillover=["s2"])
    d = decide(b, {"p": signals(in_flight=16)})
    assert d.substrate == "s2"
    assert candidate(d, "s1").code is RejectionCode.SPILLOVER_FORBIDDEN


# -- Rejections ---------------------------------------------------------------------------------


def test_rolled_up_rejection_message() -> None:
    b = fleet(
        substrate("a").jurisdiction("US"),
        substrate("b").jurisdiction("FR"),
        substrate("c").jurisdiction("DE").serves("m", window=32768),
    ).tenant("t", allowed=["DE"])
    d = decide(b, input_tokens=39_000, max_output_tokens=1000)
    assert not d.placed
    assert d.rejection_message == (
        "0/3 substrates serving `m` eligible: 2 jurisdiction not in {DE}, 1 context window < 40000"
    )
    assert d.rejection_code is RejectionCode.CONTEXT_WINDOW and d.http_status == 400
    assert [c.eligible for c in d.candidates] == [False, False, False]
    assert (d.substrate, d.fallbacks, d.spillover, d.estimated_cost_usd) == (None, (), False, None)


def test_rolled_up_groups_of_equal_size_are_sorted_by_summary() -> None:
    b = fleet(substrate("a").jurisdiction("US"), substrate("b")).tenant("t", allowed=["DE"])
    d = decide(b, {"b": signals(circuit="open")})
    assert d.rejection_message == "0/2 substrates serving `m` eligible: 1 circuit open, 1 jurisdiction not in {DE}"


def three_substrates_tenant_de() -> FleetBuilder:
    return fleet(substrate("de"), substrate("us1").jurisdiction("US"),
                 substrate("us2").jurisdiction("US")).tenant("t", allowed=["DE"])


@pytest.mark.parametrize(
    ("de_signals", "req", "code", "status"),
    [
        pytest.param(None, {"input_tokens": 100_000}, RejectionCode.CONTEXT_WINDOW, 400, id="context-400"),
        pytest.param(signals(circuit="open"), {}, RejectionCode.UNHEALTHY, 503, id="unhealthy-503"),
        pytest.param(signals(age_s=10), {}, RejectionCode.STALE_SIGNALS, 503, id="stale-503"),
        pytest.param(signals(in_flight=16), {}, RejectionCode.CAPACITY, 429, id="capacity-429"),
        pytest.param(signals(rl_tokens=10), {}, RejectionCode.RATE_LIMITED, 429, id="rate-limited-429"),
    ],
)
def test_status_follows_the_furthest_rejection(de_signals, req, code, status) -> None:
    d = decide(three_substrates_tenant_de(), {"de": de_signals} if de_signals else None, **req)
    assert not d.placed
    assert (d.rejection_code, d.http_status) == (code, status)
    assert candidate(d, "us1").code is RejectionCode.JURISDICTION


def test_jurisdiction_only_is_403() -> None:
    b = fleet(substrate("us1").jurisdiction("US"), substrate("eu").jurisdiction("EU")).tenant("t", allowed=["DE"])
    d = decide(b)
    assert (d.rejection_code, d.http_status) == (RejectionCode.JURISDICTION, 403)
    assert d.rejection_message == "0/2 substrates serving `m` eligible: 2 jurisdiction not in {DE}"


def test_spillover_forbidden_only_is_403() -> None:
    b = fleet(substrate("p").jurisdiction("US"), substrate("s")).model("m", primary="p", spillover=[]) \
        .tenant("t", allowed=["DE"])
    d = decide(b)
    assert d.http_status == 403
    assert {c.code for c in d.candidates} == {RejectionCode.JURISDICTION, RejectionCode.SPILLOVER_FORBIDDEN}


def test_retry_that_used_up_the_allowed_substrates_is_503_not_403() -> None:
    """The tenant may use ``p`` only; ``p`` failed. What is left is forbidden, but the request is
    refused because its allowed capacity failed, so the status says "retry later" (503), not
    "forbidden" (403): on the ladder an exclusion sits above the policy rejections."""
    built = primary_and_spill().tenant("t", allowed=["DE"]).build()
    d = place(request().retry_excluding("p"), snapshot(built), built.policy)
    assert (d.rejection_code, d.http_status) == (RejectionCode.EXCLUDED, 503)
    assert d.rejection_message == (
        "0/2 substrates serving `m` eligible: 1 already tried for this request, 1 jurisdiction not in {DE}"
    )


def test_everything_tried_is_503() -> None:
    built = fleet(substrate("a"), substrate("b")).build()
    d = place(request().retry_excluding("a").retry_excluding("b"), snapshot(built), built.policy)
    assert (d.rejection_code, d.http_status, d.attempt) == (RejectionCode.EXCLUDED, 503, 3)


@pytest.mark.parametrize(
    ("builder", "req", "code", "status", "message"),
    [
        pytest.param(fleet(substrate("a")), {"model": "nope"}, RejectionCode.UNKNOWN_MODEL, 404,
                     "model `nope` does not exist", id="unknown-model"),
        pytest.param(fleet(substrate("a")), {"tenant": "mallory"}, RejectionCode.UNKNOWN_TENANT, 401,
                     "unknown tenant `mallory`", id="unknown-tenant"),
        pytest.param(fleet(substrate("a").serves("m").serves("other")).model("m").model("other")
                     .tenant("t", models=["other"]), {}, RejectionCode.MODEL_NOT_ALLOWED, 403,
                     "tenant `t` may not use model `m`", id="model-not-allowed"),
        pytest.param(fleet(substrate("a")), {"sla_class": "gold"}, RejectionCode.UNKNOWN_SLA_CLASS, 400,
                     "unknown SLA class `gold`", id="unknown-sla-class"),
        pytest.param(fleet(substrate("a")).sla().sla("batch", ttft_ms=60_000, e2e_ms=600_000).tenant("t"),
                     {"sla_class": "batch"}, RejectionCode.SLA_CLASS_NOT_ALLOWED, 403,
                     "tenant `t` may not use SLA class `batch`", id="sla-class-not-allowed"),
    ],
)
def test_request_level_rejections(builder, req, code, status, message) -> None:
    d = decide(builder, **req)
    assert not d.placed and d.candidates == ()
    assert (d.rejection_code, d.http_status, d.rejection_message) == (code, status, message)


def test_sla_class_the_tenant_may_use_is_placed() -> None:
    b = fleet(substrate("a")).sla().sla("batch", ttft_ms=60_000, e2e_ms=600_000).tenant("t", allowed_sla=["batch"])
    d = decide(b, sla_class="batch")
    assert d.placed and d.sla_class == "batch"


def test_alias_resolves_to_the_model() -> None:
    d = decide(fleet(substrate("a")).model("m", aliases=["m-latest", "em"]), model="em")
    assert d.placed and d.model == "m" and d.substrate == "a"


def test_model_allowed_by_alias_in_the_tenant_list() -> None:
    b = fleet(substrate("a")).model("m", aliases=["em"]).tenant("t", models=["em"])
    assert decide(b, model="m").placed


# -- Determinism --------------------------------------------------------------------------------


def twins() -> FleetBuilder:
    """Two identical substrates; the primary ``p`` is full, so the twins tie on every score."""
    return fleet(substrate("p"), substrate("a"), substrate("b"))


def test_ties_are_broken_by_request_id() -> None:
    built = twins().build()
    snap = snapshot(built, {"p": signals(in_flight=16)})
    picks = Counter()
    for i in range(200):
        req = request(request_id=f"req-{i}")
        first = place(req, snap, built.policy)
        assert candidate(first, "a").total == candidate(first, "b").total
        again = [place(req, snap, built.policy).substrate for _ in range(3)]
        assert again == [first.substrate] * 3
        assert set(first.fallbacks) == {"a", "b"} - {first.substrate}
        picks[first.substrate] += 1
    assert set(picks) == {"a", "b"}
    assert min(picks.values()) >= 40, picks


def test_ties_below_the_best_order_the_fallbacks_by_request_id() -> None:
    built = twins().build()
    snap = snapshot(built)  # the primary is idle and best; its twins tie behind it
    orders = Counter()
    for i in range(100):
        req = request(request_id=f"req-{i}")
        d = place(req, snap, built.policy)
        assert d.substrate == "p"
        assert d.fallbacks == place(req, snap, built.policy).fallbacks  # stable per request
        orders[d.fallbacks] += 1
    assert set(orders) == {("a", "b"), ("b", "a")}


def test_same_inputs_same_decision() -> None:
    built = primary_and_spill(mode="scored").build()
    snap = snapshot(built, {"p": signals(in_flight=3, kv=0.4)}, version=7)
    a = place(request(request_id="r-42"), snap, built.policy)
    b = place(request(request_id="r-42"), snap, built.policy)
    assert a == b and a.to_dict() == b.to_dict()


def test_placement_id_is_stable_per_request_and_attempt() -> None:
    built = primary_and_spill().build()
    snap = snapshot(built)
    a = place(request(request_id="r-1"), snap, built.policy)
    again = place(request(request_id="r-1"), snapshot(built, {"p": signals(in_flight=16)}, version=9),
                  built.policy)
    other = place(request(request_id="r-2"), snap, built.policy)
    retry = place(request(request_id="r-1").retry_excluding("p"), snap, built.policy)
    assert a.placement_id == again.placement_id
    assert a.placement_id.startswith("pl-") and len(a.placement_id) == 3 + 16
    assert len({a.placement_id, other.placement_id, retry.placement_id}) == 3


def test_decision_records_snapshot_version_and_policy_hash() -> None:
    built = primary_and_spill().build()
    d = place(request(), snapshot(built, version=42), built.policy)
    assert d.snapshot_version == 42
    assert d.policy_hash == built.policy.policy_hash and len(d.policy_hash) == 16


def test_to_dict_has_the_audit_keys_and_is_json() -> None:
    d = decide(primary_and_spill(), {"p": signals(in_flight=16)})
    out = d.to_dict()
    assert {"substrate", "spillover", "spillover_reason", "fallbacks", "candidates",
            "estimated_cost_usd"} <= set(out)
    assert (out["substrate"], out["spillover"], out["spillover_reason"]) == ("s", True, "primary_saturated")
    assert out["fallbacks"] == [] and out["estimated_cost_usd"] == d.estimated_cost_usd > 0
    by_name = {c["name"]: c for c in out["candidates"]}
    for c in by_name.values():
        assert {"name", "eligible", "reason", "scores", "total"} <= set(c)
    assert by_name["p"]["eligible"] is False and by_name["p"]["reason"] == "16 in flight >= 16"
    assert by_name["p"]["scores"] is None and by_name["p"]["total"] == 0.0
    assert by_name["s"]["eligible"] is True and by_name["s"]["reason"] is None
    assert set(by_name["s"]["scores"]) == set(d.scorer_names)
    assert by_name["s"]["total"] == candidate(d, "s").total
    assert json.loads(json.dumps(out)) == out


def test_to_dict_of_a_rejection() -> None:
    out = decide(fleet(substrate("a").jurisdiction("US")).tenant("t", allowed=["DE"])).to_dict()
    assert (out["substrate"], out["http_status"], out["rejection_code"]) == (None, 403, "jurisdiction")
    assert out["candidates"][0]["reason"] == "US not in {DE}"


# -- Totals and policies ------------------------------------------------------------------------


def test_total_is_the_weighted_sum_and_weights_are_normalised() -> None:
    built = fleet(substrate("a").tier("burst")).weights(reserved_tier=3.0, queue_pressure=1.0).build()
    assert [(w.scorer, w.weight) for w in built.policy.weights] == [("queue_pressure", 0.25),
                                                                     ("reserved_tier", 0.75)]
    d = place(request(), snapshot(built, {"a": signals(in_flight=8)}), built.policy)
    assert d.scorer_names == ("queue_pressure", "reserved_tier")
    # queue 1 - 8/16 = 0.5, burst tier 0 -> 0.25 * 0.5 + 0.75 * 0 = 0.125
    assert d.candidates[0].scores == (0.5, 0.0)
    assert d.candidates[0].total == pytest.approx(0.125)


def test_total_never_exceeds_one_when_every_score_is_one() -> None:
    """Weights 0.05 / 0.2 / 0.05 normalise to 1/6, 2/3, 1/6, which add up to 1.0000000000000002
    in floating point; a substrate that scores 1 everywhere then totals more than 1. Scores and
    totals are in [0, 1] by contract (scorers.py; engine docstring: "weights sum to 1, so totals
    are in [0, 1]")."""
    built = fleet(substrate("a")).weights(queue_pressure=0.05, memory_pressure=0.2, cost=0.05).build()
    d = place(request(), snapshot(built), built.policy)
    assert d.candidates[0].scores == (1.0, 1.0, 1.0)
    assert d.candidates[0].total <= 1.0


def test_a_policy_derived_with_replace_keeps_its_own_jurisdictions() -> None:
    """``place`` is a pure function of its arguments: a what-if policy made with
    ``dataclasses.replace`` (the way to vary a frozen policy, e.g. in a replay) must decide by its
    own tenant rules, not by verdicts worked out for the policy it was copied from. Here the copy
    allows only DE, yet a decision placed earlier with the original (allowed anywhere) makes the
    copy admit the US substrate: a sovereignty boundary crossed."""
    built = primary_and_spill(mode="scored").build()
    snap = snapshot(built)
    assert place(request(), snap, built.policy).substrate == "s"

    de_only = dict(built.policy.tenants)
    de_only["t"] = dataclasses.replace(de_only["t"], allowed_jurisdictions=("DE",),
                                       allowed_countries=frozenset({"DE"}))
    strict = dataclasses.replace(built.policy, tenants=de_only)
    d = place(request(), snap, strict)
    assert candidate(d, "s").code is RejectionCode.JURISDICTION
    assert d.substrate == "p"


def test_a_policy_derived_with_replace_uses_its_own_weights() -> None:
    built = primary_and_spill(mode="scored").build()
    snap = snapshot(built)
    assert len(place(request(), snap, built.policy).scorer_names) == 7  # every default scorer, prefix_locality included
    cost_only = dataclasses.replace(built.policy, weights=(ScorerWeight("cost", 1.0),))
    d = place(request(), snap, cost_only)
    assert d.scorer_names == ("cost",)
    assert all(len(c.scores) == 1 for c in d.candidates if c.eligible)


def test_a_policy_derived_with_replace_used_first_is_right() -> None:
    """Control for the two tests above: the same what-if policy, used before the original, decides
    by its own rules; only the order of use differs."""
    built = primary_and_spill(mode="scored").build()
    snap = snapshot(built)
    de_only = dict(built.policy.tenants)
    de_only["t"] = dataclasses.replace(de_only["t"], allowed_jurisdictions=("DE",),
                                       allowed_countries=frozenset({"DE"}))
    alone = place(request(), snap, dataclasses.replace(built.policy, tenants=de_only))
    assert alone.substrate == "p"
    assert candidate(alone, "s").code is RejectionCode.JURISDICTION


def test_a_fresh_policy_from_the_same_config_agrees() -> None:
    """Two builds of one config decide identically (no state leaks between policies)."""
    b = primary_and_spill(mode="scored")
    one, two = b.build(), b.build()
    req = request(request_id="x-1")
    assert place(req, snapshot(one), one.policy).to_dict() == place(req, snapshot(two), two.policy).to_dict()


def test_tenant_policy_is_what_the_config_says() -> None:
    built = fleet(substrate("a")).tenant("t", allowed=["EU", "US"]).build()
    t: TenantPolicy = built.policy.tenants["t"]
    assert t.allowed_jurisdictions == ("EU", "US")
    assert "US" in t.allowed_countries and "DE" in t.allowed_countries and "JP" not in t.allowed_countries
