"""The baseline gateways do what their docstrings say, and see only what a gateway sees."""

from __future__ import annotations

import pytest

from inferplane.replay.attempt import Failure
from inferplane.replay.baselines import CheapestFirst, LeastOutstanding, OrderedFallback, baseline
from inferplane.replay.outcome import fixed_cost_usd
from inferplane.replay.report import run_report
from inferplane.replay.scenario import BaselineSection, Event, EventKind
from tests.builders import EU, fleet, substrate
from tests.test_replay_simulator import replay_of, req


def three_jurisdictions():
    """de (primary, reserved), us (burst, cheap), fr (burst, dear); tenant `eu` may use EU only."""
    de = substrate("de").kind("vllm").cls("gpu_cluster").jurisdiction("DE").capacity(8).latency(rtt_ms=10)
    us = (substrate("us").kind("openai_compatible").cls("provider_api").tier("burst").jurisdiction("US")
          .capacity(8).latency(rtt_ms=80).cost(input_per_1m=0.5, output_per_1m=0.5))
    fr = (substrate("fr").kind("openai_compatible").cls("provider_api").tier("burst").jurisdiction("FR")
          .capacity(8).latency(rtt_ms=20).cost(input_per_1m=2.0, output_per_1m=2.0))
    return (fleet(de, us, fr).model("m", primary="de")
            .tenant("eu", allowed=["EU"]).tenant("world").build())


def test_round_robin_takes_every_endpoint_in_turn_whatever_the_jurisdiction():
    built = three_jurisdictions()
    result = replay_of(built, [req(i, float(i), 100, 5, tenant="eu") for i in range(6)], "round_robin")
    assert [o.substrate for o in result.outcomes] == ["de", "us", "fr", "de", "us", "fr"]
    report = run_report(result, fixed_cost_usd(built.fleet, result.span_s))
    assert report["sovereignty_violations"] == 2  # the two requests sent to `us`
    assert report["spillovers"] == report["unlogged_spillovers"] == 4


def test_least_outstanding_picks_the_fewest_in_flight():
    built = three_jurisdictions()
    router = LeastOutstanding(built, BaselineSection())
    r = req(0, 0.0, 10, 1, tenant="world")
    for name in ("de", "de", "us"):
        router.dispatched(r, name, 0.0)
    assert router.place(r, (), 0.0).substrate == "fr"
    router.dispatched(r, "fr", 0.0)
    assert router.place(r, (), 0.0).substrate in ("us", "fr")
    router.finished(r, "de", 0.0, 0.1, 1, 0.2)
    router.finished(r, "de", 0.0, 0.1, 1, 0.2)
    assert router.place(r, (), 0.0).substrate == "de"
    # Never an endpoint already tried for this request.
    assert router.place(r, ("de",), 0.0).substrate in ("us", "fr")


def test_ordered_fallback_honours_region_tags_per_tenant():
    built = three_jurisdictions()
    router = OrderedFallback(built, BaselineSection())
    assert router.endpoints(req(0, 0.0, 1, 1, tenant="eu")) == ("de", "fr")
    assert router.endpoints(req(0, 0.0, 1, 1, tenant="world")) == ("de", "us", "fr")
    result = replay_of(built, [req(i, float(i), 100, 5, tenant="eu") for i in range(5)], "ordered_fallback")
    assert {o.substrate for o in result.outcomes} == {"de"}
    assert not any(o.sovereignty_violation for o in result.outcomes)


def test_ordered_fallback_moves_on_after_errors_and_ejects_the_endpoint():
    # de fails every attempt from 0 s; each request tries de, fails, goes to fr. After 3
    # consecutive errors de is ejected for 30 s: requests 3.. go straight to fr.
    built = three_jurisdictions()
    fault = (Event(EventKind.FAILURE_RATE, "de", 0.0, 100.0, 1.0),)
    settings = BaselineSection(consecutive_errors=3, ejection_s=30.0)
    result = replay_of(built, [req(i, float(i), 100, 5, tenant="eu") for i in range(6)], "ordered_fallback",
                       fault, settings)
    assert [o.tried for o in result.outcomes] == [("de", "fr")] * 3 + [("fr",)] * 3
    assert all(o.status == "completed" and o.substrate == "fr" for o in result.outcomes)


def test_a_429_ejects_until_retry_after():
    built = three_jurisdictions()
    router = OrderedFallback(built, BaselineSection())
    r = req(0, 0.0, 10, 1, tenant="world")
    router.dispatched(r, "de", 0.0)
    router.failed(r, "de", Failure.RATE_LIMITED, 5.0, 1.0)
    assert router.place(r, (), 2.0).substrate == "us"
    assert router.place(r, (), 6.5).substrate == "de"


def test_every_endpoint_ejected_means_panic_mode_not_refusal():
    built = three_jurisdictions()
    router = OrderedFallback(built, BaselineSection(consecutive_errors=1))
    r = req(0, 0.0, 10, 1, tenant="eu")
    for name in ("de", "fr"):
        router.dispatched(r, name, 0.0)
        router.failed(r, name, Failure.UNAVAILABLE, None, 0.0)
    assert router.place(r, (), 1.0).substrate == "de"
    assert router.place(r, ("de", "fr"), 1.0).substrate is None


def test_cheapest_first_sorts_by_list_price_reserved_first():
    built = three_jurisdictions()
    router = CheapestFirst(built, BaselineSection())
    assert router.endpoints(req(0, 0.0, 1, 1, tenant="eu")) == ("de", "us", "fr")
    result = replay_of(built, [req(i, float(i), 100, 5, tenant="world") for i in range(3)], "cheapest_first")
    assert {o.substrate for o in result.outcomes} == {"de"}


def test_per_try_timeout_moves_a_gateway_on():
    # One slot on de, 10 s per request: the second request waits; the gateway gives up after 2 s.
    de = (substrate("de").kind("vllm").cls("gpu_cluster").capacity(1)
          .latency(base_ttft_ms=0, rtt_ms=0, prefill=1000, decode=1))
    fr = substrate("fr").kind("vllm").cls("gpu_cluster").jurisdiction("FR").capacity(4).latency(base_ttft_ms=100)
    built = fleet(de, fr).model("m", primary="de").build()
    a, b = replay_of(built, [req(0, 0.0, 0, 11), req(1, 0.5, 0, 11)], "ordered_fallback",
                     settings=BaselineSection(first_byte_timeout_s=2.0)).outcomes
    assert a.tried == ("de",)
    assert b.tried == ("de", "fr") and b.ttft_s == pytest.approx(2.1)


def test_gateways_honour_the_tenants_model_access():
    built = (fleet(substrate("de").kind("vllm").cls("gpu_cluster").serves("m").serves("other"))
             .tenant("scoped", models=["other"]).model("m").model("other", primary="de").build())
    gateway = baseline("round_robin", built, BaselineSection())
    placement = gateway.place(req(0, 0.0, 1, 1, tenant="scoped"), (), 0.0)
    assert placement.substrate is None and placement.rejection == "model_not_allowed"


def test_unknown_baseline_is_an_error():
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline("random", three_jurisdictions(), BaselineSection())


def test_eu_group_is_what_the_builders_use():
    # The tenant `eu` above is allowed the builders' EU group: FR and DE are in it, US is not.
    assert "DE" in EU and "FR" in EU and "US" not in EU
