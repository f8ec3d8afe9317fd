"""Table-driven tests of every hard filter: code, groupable summary and per-substrate detail.

Each row builds a small fleet through the real config path, picks the substrate named ``x``, and
runs one filter on it. ``None`` means admitted.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest

from inferplane.placement import place
from inferplane.placement.estimate import Estimate, estimate
from inferplane.placement.filters import (
    DEFAULT_FILTERS,
    LADDER,
    Admission,
    ContextWindowFits,
    DeadlineReachable,
    Excluded,
    ExternalSignals,
    Healthy,
    JurisdictionAllowed,
    NodeJurisdiction,
    ParametersHonoured,
    RateLimitHeadroom,
    HeldBack,
    RejectionCode,
    SignalsFresh,
    SpilloverAllowed,
    WithinBudget,
)
from inferplane.placement.signals import Reading, SubstrateSignals
from tests.builders import (
    NOW,
    FleetBuilder,
    SubstrateBuilder,
    context,
    fleet,
    request,
    signals,
    snapshot,
    substrate,
)


class Expect(NamedTuple):
    summary: str
    detail: str


def case(case_id: str, flt, builder: FleetBuilder, expected: Expect | None, *,
         sig: SubstrateSignals | None = None, **req) -> pytest.param:
    """One row: run ``flt`` on substrate ``x`` of ``builder``'s fleet with ``sig`` (default: idle,
    fresh, KV cache reported) for ``request(**req)``."""
    return pytest.param(flt, builder, sig or signals(kv=0.0), req, expected, id=case_id)


def primary_and_x(x: SubstrateBuilder) -> FleetBuilder:
    """Primary ``p`` and the substrate ``x`` under test, which is therefore a spillover target."""
    return fleet(substrate("p"), x)


def only_x(x: SubstrateBuilder) -> FleetBuilder:
    return fleet(x)


def x() -> SubstrateBuilder:
    """The substrate under test: an emulated provider API in DE, 16 slots, serving ``m``."""
    return substrate("x")


def tenant_allowed(x: SubstrateBuilder, *allowed: str) -> FleetBuilder:
    return fleet(x).tenant("t", allowed=allowed).group("NORTH-AMERICA", ["US", "CA"])


CASES = [
    # -- Excluded ------------------------------------------------------------------------------
    case("excluded/not-excluded", Excluded(), only_x(x()), None),
    case("excluded/other-name-excluded", Excluded(), only_x(x()), None, exclude={"y", "xx"}),
    case("excluded/excluded", Excluded(), only_x(x()),
         Expect("already tried for this request", "failed on an earlier attempt"), exclude={"x"}),
    # -- SpilloverAllowed ----------------------------------------------------------------------
    case("spillover/primary-always-allowed", SpilloverAllowed(),
         fleet(x().cls("giant_context"), substrate("y")).model("m", primary="x", spillover=[])
         .spillover(classes=["provider_api"]), None),
    case("spillover/any-substrate-any-class", SpilloverAllowed(), primary_and_x(x()), None),
    case("spillover/listed", SpilloverAllowed(),
         primary_and_x(x()).model("m", primary="p", spillover=["x"]), None),
    case("spillover/not-listed", SpilloverAllowed(),
         fleet(substrate("p"), x(), substrate("y")).model("m", primary="p", spillover=["y"]),
         Expect("not a spillover target of the model", "`m` may not spill to it")),
    case("spillover/empty-list-forbids", SpilloverAllowed(),
         primary_and_x(x()).model("m", primary="p", spillover=[]),
         Expect("not a spillover target of the model", "`m` may not spill to it")),
    case("spillover/class-not-allowed", SpilloverAllowed(),
         primary_and_x(x().cls("giant_context")).spillover(classes=["provider_api", "gpu_cluster"]),
         Expect("class not in spillover classes {gpu_cluster, provider_api}",
                "class giant_context not allowed for spillover")),
    case("spillover/per-model-classes-override", SpilloverAllowed(),
         primary_and_x(x().cls("giant_context"))
         .spillover(classes=["giant_context", "provider_api"], per_model={"m": ["provider_api"]}),
         Expect("class not in spillover classes {provider_api}",
                "class giant_context not allowed for spillover")),
    case("spillover/per-model-classes-allow", SpilloverAllowed(),
         primary_and_x(x().cls("giant_context"))
         .spillover(classes=["provider_api"], per_model={"m": ["giant_context"]}), None),
    # -- JurisdictionAllowed -------------------------------------------------------------------
    case("jurisdiction/same-country", JurisdictionAllowed(), tenant_allowed(x().jurisdiction("DE"), "DE"), None),
    case("jurisdiction/country-in-group", JurisdictionAllowed(),
         tenant_allowed(x().jurisdiction("DE"), "EU"), None),
    case("jurisdiction/group-in-same-group", JurisdictionAllowed(),
         tenant_allowed(x().jurisdiction("EU"), "EU"), None),
    case("jurisdiction/group-vs-one-member", JurisdictionAllowed(),
         tenant_allowed(x().jurisdiction("EU"), "DE"), Expect("jurisdiction not in {DE}", "EU not in {DE}")),
    case("jurisdiction/outside", JurisdictionAllowed(), tenant_allowed(x().jurisdiction("US"), "EU"),
         Expect("jurisdiction not in {EU}", "US not in {EU}")),
    case("jurisdiction/outside-several-sorted", JurisdictionAllowed(),
         tenant_allowed(x().jurisdiction("US"), "FR", "DE"),
         Expect("jurisdiction not in {DE, FR}", "US not in {DE, FR}")),
    case("jurisdiction/group-partly-allowed", JurisdictionAllowed(),
         tenant_allowed(x().jurisdiction("NORTH-AMERICA"), "US"),
         Expect("jurisdiction not in {US}", "NORTH-AMERICA not in {US}")),
    case("jurisdiction/group-covered-by-countries", JurisdictionAllowed(),
         tenant_allowed(x().jurisdiction("NORTH-AMERICA"), "US", "CA"), None),
    case("jurisdiction/wildcard", JurisdictionAllowed(), tenant_allowed(x().jurisdiction("JP"), "*"), None),
    case("jurisdiction/wildcard-group", JurisdictionAllowed(),
         tenant_allowed(x().jurisdiction("EU"), "*"), None),
    # -- ContextWindowFits ---------------------------------------------------------------------
    case("context/fits-exactly", ContextWindowFits(), only_x(x().serves("m", window=8192)), None,
         input_tokens=8000, max_output_tokens=192),
    case("context/one-over", ContextWindowFits(), only_x(x().serves("m", window=8192)),
         Expect("context window < 8193", "window 8192 < 8193 tokens needed"),
         input_tokens=8001, max_output_tokens=192),
    case("context/output-counts", ContextWindowFits(), only_x(x().serves("m", window=4096)),
         Expect("context window < 5096", "window 4096 < 5096 tokens needed"),
         input_tokens=96, max_output_tokens=5000),
    case("context/window-of-the-requested-model", ContextWindowFits(),
         fleet(x().serves("m", window=4096).serves("big", window=131072)).model("m", primary="x")
         .model("big", primary="x"),
         Expect("context window < 40000", "window 4096 < 40000 tokens needed"),
         input_tokens=39000, max_output_tokens=1000),
    case("context/alias-resolves-to-window", ContextWindowFits(),
         fleet(x().serves("m", window=4096)).model("m", primary="x", aliases=["m-alias"]), None,
         model="m-alias", input_tokens=4000, max_output_tokens=96),
    # -- ParametersHonoured --------------------------------------------------------------------
    case("parameters/none-required", ParametersHonoured(), only_x(x()), None),
    case("parameters/emulation-applies-stop", ParametersHonoured(), only_x(x()), None,
         required_features=frozenset({"stop", "seed"})),
    case("parameters/emulation-invents-no-logprobs", ParametersHonoured(), only_x(x()),
         Expect("cannot honour `logprobs`", "emulated substrate does not honour `logprobs`"),
         required_features=frozenset({"logprobs", "stop"})),
    case("parameters/every-missing-one-named", ParametersHonoured(), only_x(x()),
         Expect("cannot honour `logprobs`, `response_format`",
                "emulated substrate does not honour `logprobs`, `response_format`"),
         required_features=frozenset({"response_format", "logprobs"})),
    case("parameters/vllm-logprobs", ParametersHonoured(), only_x(x().kind("vllm")), None,
         required_features=frozenset({"logprobs", "top_logprobs", "response_format", "logit_bias"})),
    case("parameters/vllm-no-tools-without-a-parser", ParametersHonoured(), only_x(x().kind("vllm")),
         Expect("cannot honour `tools`", "vllm substrate does not honour `tools`"),
         required_features=frozenset({"tools"})),
    case("parameters/vllm-no-suffix", ParametersHonoured(), only_x(x().kind("vllm")),
         Expect("cannot honour `suffix`", "vllm substrate does not honour `suffix`"),
         required_features=frozenset({"suffix"})),
    case("parameters/provider-passes-through", ParametersHonoured(), only_x(x().kind("openai_compatible")), None,
         required_features=frozenset({"tools", "suffix", "logprobs", "response_format"})),
    # -- Healthy -------------------------------------------------------------------------------
    case("healthy/closed", Healthy(), only_x(x()), None, sig=signals(circuit="closed")),
    case("healthy/half-open-no-probe-yet", Healthy(), only_x(x()), None, sig=signals(circuit="half_open")),
    case("healthy/half-open-probe-in-flight", Healthy(), only_x(x()),
         Expect("circuit half-open", "half-open: probe already in flight"),
         sig=signals(circuit="half_open", in_flight=1)),
    case("healthy/half-open-probe-limit-2", Healthy(), only_x(x()).policy("health", half_open_probe_limit=2),
         None, sig=signals(circuit="half_open", in_flight=1)),
    case("healthy/open", Healthy(), only_x(x()), Expect("circuit open", "circuit open"),
         sig=signals(circuit="open")),
    # -- NodeJurisdiction ----------------------------------------------------------------------
    case("node/no-labels-not-required", NodeJurisdiction(), tenant_allowed(x(), "EU"), None, tenant="t"),
    case("node/no-labels-required", NodeJurisdiction(),
         tenant_allowed(x(), "EU").policy("topology", require_node_labels=True),
         Expect("replica on an unlabelled node", "a replica's node has no jurisdiction label"), tenant="t"),
    case("node/one-replica-unlabelled-required", NodeJurisdiction(),
         tenant_allowed(x(), "EU").policy("topology", require_node_labels=True),
         Expect("replica on an unlabelled node", "a replica's node has no jurisdiction label"), tenant="t",
         sig=dataclasses.replace(signals(), node_countries=frozenset({"DE"}), unlabelled_replicas=1)),
    case("node/labelled-inside", NodeJurisdiction(), tenant_allowed(x(), "EU"), None, tenant="t",
         sig=dataclasses.replace(signals(), node_countries=frozenset({"DE", "FR"}))),
    case("node/replica-outside", NodeJurisdiction(), tenant_allowed(x(), "EU"),
         Expect("replica node jurisdiction not in {EU}", "replicas on nodes labelled {DE, US}, not in {EU}"),
         tenant="t", sig=dataclasses.replace(signals(), node_countries=frozenset({"DE", "US"}))),
    case("node/any-tenant-admits-any-node", NodeJurisdiction(), tenant_allowed(x(), "*"), None, tenant="t",
         sig=dataclasses.replace(signals(), node_countries=frozenset({"US"}))),
    # -- ExternalSignals (pushed at NOW - 1 s unless stated; ttl 60 s) -----------------------------
    case("external/no-rules", ExternalSignals(), only_x(x()), None,
         sig=dataclasses.replace(signals(), external=(("power_headroom", Reading(0.0, 999_999.0)),))),
    case("external/missing-ignored", ExternalSignals(), only_x(x()).external_rule("power_headroom", reject_below=0.2),
         None),
    case("external/missing-rejects", ExternalSignals(),
         only_x(x()).external_rule("power_headroom", reject_below=0.2, missing="reject"),
         Expect("power_headroom unknown", "no fresh power_headroom signal")),
    case("external/below", ExternalSignals(), only_x(x()).external_rule("power_headroom", reject_below=0.2),
         Expect("power_headroom < 0.2", "power_headroom 0.1 < 0.2"),
         sig=dataclasses.replace(signals(), external=(("power_headroom", Reading(0.1, 999_999.0)),))),
    case("external/above", ExternalSignals(), only_x(x()).external_rule("zone_congestion", reject_above=0.8),
         Expect("zone_congestion > 0.8", "zone_congestion 0.9 > 0.8"),
         sig=dataclasses.replace(signals(), external=(("zone_congestion", Reading(0.9, 999_999.0)),))),
    case("external/inside", ExternalSignals(), only_x(x()).external_rule("power_headroom", reject_below=0.2),
         None, sig=dataclasses.replace(signals(), external=(("power_headroom", Reading(0.5, 999_999.0)),))),
    case("external/expired-counts-as-missing", ExternalSignals(),
         only_x(x()).external_rule("power_headroom", reject_below=0.2, missing="reject", ttl_ms=1000),
         Expect("power_headroom unknown", "no fresh power_headroom signal"),
         sig=dataclasses.replace(signals(), external=(("power_headroom", Reading(0.9, 999_990.0)),))),
    # -- WithinBudget (over-budget restriction is set per request by the engine: see test_budget)
    case("budget/not-over-budget", WithinBudget(), only_x(x()), None),
    # -- SignalsFresh (bound 2 s, the schema default) --------------------------------------------
    case("fresh/emulated-fresh", SignalsFresh(), only_x(x()), None, sig=signals(age_s=0.5)),
    case("fresh/at-the-bound-is-fresh", SignalsFresh(), only_x(x()), None, sig=signals(age_s=2.0)),
    case("fresh/emulated-missing-in-flight", SignalsFresh(), only_x(x()),
         Expect("signals unknown or stale", "no in_flight signal"), sig=signals(in_flight=None)),
    case("fresh/emulated-stale-in-flight", SignalsFresh(), only_x(x()),
         Expect("signals unknown or stale", "in_flight 3.0s old > bound 2.0s"), sig=signals(age_s=3.0)),
    case("fresh/custom-bound", SignalsFresh(), only_x(x()).staleness_ms(500),
         Expect("signals unknown or stale", "in_flight 0.8s old > bound 0.5s"), sig=signals(age_s=0.75)),
    case("fresh/queued-is-optional", SignalsFresh(), only_x(x()), None, sig=signals(queued=None)),
    case("fresh/openai-needs-no-kv", SignalsFresh(), only_x(x().kind("openai_compatible")), None,
         sig=signals(kv=None)),
    case("fresh/vllm-needs-kv", SignalsFresh(), only_x(x().kind("vllm")),
         Expect("signals unknown or stale", "no kv_cache_usage signal"), sig=signals(kv=None)),
    case("fresh/vllm-stale-kv", SignalsFresh(), only_x(x().kind("vllm")),
         Expect("signals unknown or stale", "kv_cache_usage 2.5s old > bound 2.0s"),
         sig=signals(kv=0.1, ages={"kv_cache_usage": 2.5})),
    case("fresh/vllm-in-flight-checked-first", SignalsFresh(), only_x(x().kind("vllm")),
         Expect("signals unknown or stale", "no in_flight signal"), sig=signals(in_flight=None, kv=None)),
    case("fresh/vllm-all-fresh", SignalsFresh(), only_x(x().kind("vllm")), None, sig=signals(kv=0.9)),
    # -- Admission (16 concurrent unless stated) -------------------------------------------------
    case("admission/room", Admission(), only_x(x().capacity(16)), None, sig=signals(in_flight=15)),
    case("admission/full", Admission(), only_x(x().capacity(16)),
         Expect("at capacity", "16 in flight >= 16"), sig=signals(in_flight=16)),
    # in_flight holds the waiting requests too: the substrate's own queued count is part of it.
    case("admission/queued-is-part-of-in-flight", Admission(), only_x(x().capacity(16)), None,
         sig=signals(in_flight=10, queued=6)),
    case("admission/max-queued-room", Admission(), only_x(x().capacity(16, queued=4)), None,
         sig=signals(in_flight=19, queued=3)),
    case("admission/max-queued-full", Admission(), only_x(x().capacity(16, queued=4)),
         Expect("at capacity", "20 in flight >= 20"), sig=signals(in_flight=20, queued=4)),
    case("admission/16+8-pool-16-running-4-waiting", Admission(), only_x(x().kind("vllm").capacity(16, queued=8)),
         None, sig=signals(in_flight=20, queued=4, kv=0.9)),
    case("admission/16+8-pool-24-dispatched", Admission(), only_x(x().kind("vllm").capacity(16, queued=8)),
         Expect("at capacity", "24 in flight >= 24"), sig=signals(in_flight=24, queued=8, kv=1.0)),
    case("admission/queued-not-reported", Admission(), only_x(x().capacity(16)), None,
         sig=signals(in_flight=15, queued=None)),
    case("admission/queued-stale-is-not-read", Admission(), only_x(x().capacity(16)), None,
         sig=signals(in_flight=15, queued=9, ages={"queued": 3.0})),
    case("admission/unknown-load", Admission(), only_x(x()),
         Expect("load unknown", "no fresh in_flight signal"), sig=signals(in_flight=None)),
    case("admission/stale-load", Admission(), only_x(x()),
         Expect("load unknown", "no fresh in_flight signal"), sig=signals(in_flight=0, age_s=2.5)),
    # -- RateLimitHeadroom (request: 1000 + 200 tokens) -----------------------------------------
    case("ratelimit/nothing-reported", RateLimitHeadroom(), only_x(x()), None),
    case("ratelimit/one-request-left", RateLimitHeadroom(), only_x(x()), None, sig=signals(rl_requests=1)),
    case("ratelimit/no-requests-left", RateLimitHeadroom(), only_x(x()),
         Expect("rate limit reached", "0 requests remaining"), sig=signals(rl_requests=0)),
    case("ratelimit/tokens-just-enough", RateLimitHeadroom(), only_x(x()), None,
         sig=signals(rl_requests=5, rl_tokens=1200)),
    case("ratelimit/tokens-one-short", RateLimitHeadroom(), only_x(x()),
         Expect("rate limit reached", "1199 tokens remaining < 1200"), sig=signals(rl_tokens=1199)),
    case("quota/open", HeldBack(), only_x(x()), None, closed=(("y", "tenant at its cap of 2 gpu_cluster slots"),)),
    case("quota/closed-by-cap", HeldBack(), only_x(x()),
         Expect("tenant at its cap of 2 gpu_cluster slots", "tenant at its cap of 2 gpu_cluster slots"),
         closed=(("x", "tenant at its cap of 2 gpu_cluster slots"),)),
    case("ratelimit/requests-checked-first", RateLimitHeadroom(), only_x(x()),
         Expect("rate limit reached", "0 requests remaining"), sig=signals(rl_requests=0, rl_tokens=0)),
    case("ratelimit/stale-headers-ignored", RateLimitHeadroom(), only_x(x()), None,
         sig=signals(rl_requests=0, rl_tokens=0, ages={"rate_limit_requests_remaining": 60.0,
                                                        "rate_limit_tokens_remaining": 60.0})),
]


@pytest.mark.parametrize(("flt", "builder", "sig", "req", "expected"), CASES)
def test_filter(flt, builder: FleetBuilder, sig: SubstrateSignals, req: dict, expected: Expect | None) -> None:
    built = builder.build()
    spec = built.fleet.substrate("x")
    req = dict(req)
    features = req.pop("required_features", frozenset())
    rejection = flt.check(context(built, dataclasses.replace(request(**req), required_features=features)), spec, sig)
    if expected is None:
        assert rejection is None
    else:
        assert rejection is not None, "expected a rejection"
        assert (rejection.code, rejection.summary, rejection.detail) == (flt.code, *expected)


def test_every_filter_has_a_row() -> None:
    tested = {type(p.values[0]) for p in CASES}
    assert tested == {type(f) for f in DEFAULT_FILTERS}


def test_ladder_follows_filter_order() -> None:
    """The ladder is the filter order; policy rejections sit below context, health, staleness and
    capacity, which is what makes a request's status say how close it came (403 < 400 < 503 < 429)."""
    assert [LADDER[f.code] for f in DEFAULT_FILTERS] == list(range(len(DEFAULT_FILTERS)))
    order = [RejectionCode.SPILLOVER_FORBIDDEN, RejectionCode.JURISDICTION, RejectionCode.CONTEXT_WINDOW,
             RejectionCode.UNHEALTHY, RejectionCode.STALE_SIGNALS, RejectionCode.CAPACITY,
             RejectionCode.RATE_LIMITED]
    assert sorted(order, key=LADDER.__getitem__) == order


# -- Staleness counts against a substrate, never for it ------------------------------------------


def test_admission_counts_waiting_requests_once() -> None:
    """A 16 + 8 vLLM pool with 16 running and 4 waiting holds 20 of its 24: in_flight (the plane's
    count of what it dispatched) already includes the 4 the engine reports waiting, so they are
    not added again and the pool admits; with 24 dispatched it refuses. The estimate's occupancy
    and queue pressure read the same number."""
    built = only_x(x().kind("vllm").capacity(16, queued=8)).build()
    spec = built.fleet.substrate("x")
    ctx = context(built)
    waiting = signals(in_flight=16 + 4, queued=4, kv=0.9)
    assert Admission().check(ctx, spec, waiting) is None
    est = estimate(spec, waiting, 1000, 200, None, NOW, built.policy.signal_staleness_bound_s)
    assert est.occupancy == 20.0
    full = signals(in_flight=24, queued=8, kv=1.0)
    rejection = Admission().check(ctx, spec, full)
    assert rejection is not None and rejection.code is RejectionCode.CAPACITY
    assert rejection.detail == "24 in flight >= 24"
    decision = place(request(), snapshot(built, {"x": waiting}), built.policy)
    assert decision.substrate == "x"
    assert place(request(), snapshot(built, {"x": full}), built.policy).rejection_code is RejectionCode.CAPACITY


@pytest.mark.parametrize(("factor", "ttft_s", "e2e_s", "rejected"), [
    (3.0, 4.5, 10.0, False),     # exactly 3x the 1.5 s TTFT deadline: still eligible
    (3.0, 4.51, 10.0, True),     # past it
    (3.0, 0.5, 60.01, True),     # past 3x the 20 s end-to-end deadline
    (None, 100.0, 1000.0, False),  # the cut disabled: a slow substrate stays a fallback
])
def test_deadline_reachable(factor, ttft_s, e2e_s, rejected) -> None:
    built = only_x(x()).policy("health", drop_when_predicted_over_deadline=factor).build()
    spec = built.fleet.substrate("x")
    rejection = DeadlineReachable().check_estimate(context(built, request()), spec,
                                                   Estimate(ttft_s, e2e_s, 0.0, 0.0), signals(), 100)
    assert (rejection is not None) == rejected
    if rejected:
        assert rejection.code is RejectionCode.PREDICTED_TOO_SLOW


@pytest.mark.parametrize(("in_flight", "ttft_age_s", "rejected"), [
    (0, 60.0, False),  # last seen too slow, long ago: one probe may go
    (1, 60.0, True),   # ... but only one at a time (half_open_probe_limit 1)
    (1, 0.0, False),   # a fresh reading is the estimate's business, not a probe limit's
])
def test_a_substrate_last_seen_too_slow_is_only_probed(in_flight, ttft_age_s, rejected) -> None:
    """After a cut, the slow outcomes age out and the estimate falls back to the (fast) profile; the
    last observation (9 s to first token against a 1.5 s deadline, 3x cut) still holds it to probes."""
    built = only_x(x()).policy("health", drop_when_predicted_over_deadline=3.0).build()
    assert built.policy.half_open_probe_limit == 1
    spec = built.fleet.substrate("x")
    sig = signals(in_flight=in_flight, ttft_s=9.0, tpot_s=0.01, ages={"recent_ttft_s": ttft_age_s,
                                                                     "recent_tpot_s": ttft_age_s})
    rejection = DeadlineReachable().check_estimate(context(built, request()), spec,
                                                   Estimate(0.5, 2.0, 0.0, 0.0), sig, 100)
    assert (rejection is not None) == rejected
    if rejected:
        assert rejection.code is RejectionCode.PREDICTED_TOO_SLOW and "probing" in rejection.summary


def test_a_substrate_last_seen_fast_enough_is_not_held_to_probes() -> None:
    built = only_x(x()).policy("health", drop_when_predicted_over_deadline=3.0).build()
    spec = built.fleet.substrate("x")
    sig = signals(in_flight=8, ttft_s=1.0, tpot_s=0.01, ages={"recent_ttft_s": 60.0, "recent_tpot_s": 60.0})
    assert DeadlineReachable().check_estimate(context(built, request()), spec,
                                              Estimate(0.5, 2.0, 0.0, 0.0), sig, 100) is None
