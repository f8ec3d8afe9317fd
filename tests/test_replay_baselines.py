"""The baseline gateways do what their docstrings say, and see only what a gateway sees."""

from __future__ import annotations

import pytest

from inferplane.replay.attempt import Failure
from inferplane.replay.baselines import CheapestFirst, LeastOutstanding, OrderedFallback, baseline
from inferplane.replay.outcome import fixed_cost_usd
from inferplane.replay.report import run_report
from inferplane.replay.scenario import BaselineSection, Event, EventKind
from inferplane.replay.simulator import Simulator
from inferplane.replay.substrate_physics import physics_for
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


@pytest.mark.parametrize("name", ["round_robin", "least_outstanding", "cheapest_first"])
def test_configured_for_compliance_a_gateway_keeps_each_tenant_inside_its_jurisdictions(name):
    """The as-deployed gateway sends EU requests to `us`; its compliant variant, the same policy over
    per-tenant endpoint lists, never does, and still spreads a tenant with no restriction."""
    built = three_jurisdictions()
    eu = [req(i, i * 0.01, 100, 50, tenant="eu") for i in range(12)]  # overlap: every endpoint gets some
    world = [req(i, i * 0.01, 100, 50, tenant="world") for i in range(12)]
    deployed = replay_of(built, eu, name)
    compliant = replay_of(built, eu, f"{name}-compliant")
    assert any(o.sovereignty_violation for o in deployed.outcomes) or name == "cheapest_first"
    assert not any(o.sovereignty_violation for o in compliant.outcomes)
    assert {o.substrate for o in compliant.outcomes} <= {"de", "fr"}
    router = baseline(f"{name}-compliant", built, BaselineSection())
    assert router.name == f"{name}-compliant" and router.compliant
    assert set(router.endpoints(req(0, 0.0, 1, 1, tenant="eu"))) == {"de", "fr"}
    assert set(router.endpoints(req(0, 0.0, 1, 1, tenant="world"))) == {"de", "us", "fr"}
    assert {o.substrate for o in replay_of(built, world, f"{name}-compliant").outcomes} >= (
        {"de"} if name == "cheapest_first" else {"de", "us", "fr"})


def test_cheapest_first_as_deployed_sends_eu_requests_to_the_cheap_us_endpoint_when_de_is_full():
    # de holds 1; the cheap endpoint next by list price is `us`, outside the EU tenant's reach.
    de = substrate("de").kind("vllm").cls("gpu_cluster").jurisdiction("DE").capacity(1)
    us = (substrate("us").kind("openai_compatible").cls("provider_api").tier("burst").jurisdiction("US")
          .capacity(8).cost(input_per_1m=0.5, output_per_1m=0.5))
    fr = (substrate("fr").kind("openai_compatible").cls("provider_api").tier("burst").jurisdiction("FR")
          .capacity(8).cost(input_per_1m=2.0, output_per_1m=2.0))
    built = fleet(de, us, fr).model("m", primary="de").tenant("eu", allowed=["EU"]).build()
    gateway = baseline("cheapest_first", built, BaselineSection())
    compliant = baseline("cheapest_first-compliant", built, BaselineSection())
    r = req(0, 0.0, 1, 1, tenant="eu")
    assert gateway.place(r, ("de",), 0.0).substrate == "us"
    assert compliant.place(r, ("de",), 0.0).substrate == "fr"


def test_unknown_baseline_is_an_error():
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline("random", three_jurisdictions(), BaselineSection())


def test_eu_group_is_what_the_builders_use():
    # The tenant `eu` above is allowed the builders' EU group: FR and DE are in it, US is not.
    assert "DE" in EU and "FR" in EU and "US" not in EU


# -- fifo_queue: a gateway with concurrency limits and one FIFO ----------------------------------


def queued_pool(*, slots: int, queued: int = 0, ttft_deadline_ms: float = 100_000.0):
    """One pool `de`: no rtt, no prefill time, 10 tok/s per stream: a request of n output tokens holds
    a slot for (n - 1) / 10 s. One SLA class with the given first-token deadline."""
    de = (substrate("de").kind("vllm").cls("gpu_cluster").capacity(slots, queued=queued)
          .latency(base_ttft_ms=0, rtt_ms=0, prefill=1e9, decode=10))
    return fleet(de).sla("interactive", ttft_ms=ttft_deadline_ms, e2e_ms=1_000_000).build()


def test_fifo_queue_holds_what_exceeds_the_limit_and_serves_it_in_arrival_order():
    # Limit 1 running + 1 queued = 2 in flight. Six 1-second requests 10 ms apart: r0 runs, r1 waits in
    # the substrate, r2..r5 wait in the gateway. Each finish frees a place: r_k (k >= 2) is sent when
    # r_(k-2) finishes, at k - 1 s, and starts when r_(k-1) finishes: first tokens at 0, 1, 2, 3, 4, 5 s.
    built = queued_pool(slots=1, queued=1)
    requests = [req(i, 0.01 * i, 0, 11) for i in range(6)]
    result = replay_of(built, requests, "fifo_queue")
    assert all(o.status == "completed" for o in result.outcomes)
    assert [o.arrival_s + o.ttft_s for o in result.outcomes] == pytest.approx([0, 1, 2, 3, 4, 5])
    assert [o.held_s for o in result.outcomes] == pytest.approx([0, 0] + [k - 1 - 0.01 * k for k in range(2, 6)])
    report = run_report(result, 0.0, requests)
    assert report["held_requests"] == 4 and report["tenants"]["t"]["held_requests"] == 4


def test_fifo_queue_never_sends_more_than_the_declared_limit():
    # Ordered fallback sends all six at once (the substrate queues five); the queueing gateway keeps
    # at most max_concurrent + max_queued = 2 in flight.
    built = queued_pool(slots=1, queued=1)
    router = baseline("fifo_queue", built, BaselineSection())
    seen = []
    dispatched = router.dispatched

    def count(request, substrate, now_s):
        dispatched(request, substrate, now_s)
        seen.append(router.in_flight[substrate])
    router.dispatched = count
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    Simulator(built, physics, tuple(req(i, 0.0, 0, 11) for i in range(6))).run(router)
    assert len(seen) == 6 and max(seen) == 2


def test_fifo_queue_refuses_after_the_first_token_deadline_and_when_full():
    # One slot, no substrate queue, first-token deadline 1.5 s: r0 holds the slot for 5 s; r1 waits
    # 1.5 s and is refused; with room for one waiting request, r2 (behind r1) is refused at once.
    built = queued_pool(slots=1, ttft_deadline_ms=1500)
    requests = [req(0, 0.0, 0, 51), req(1, 0.1, 0, 11), req(2, 0.2, 0, 11)]
    a, b, c = replay_of(built, requests, "fifo_queue", settings=BaselineSection(queue_max_requests=1)).outcomes
    assert a.status == "completed"
    assert (b.status, b.rejection, b.tried) == ("rejected", "queue_timeout", ())
    assert b.held_s == pytest.approx(1.5)
    assert (c.status, c.rejection, c.held_s) == ("rejected", "queue_full", 0.0)
    # With a longer queue, r2 waits too and is refused at its own deadline.
    a, b, c = replay_of(built, requests, "fifo_queue").outcomes
    assert (c.rejection, c.held_s) == ("queue_timeout", pytest.approx(1.5))


def two_jurisdictions():
    """de (one slot, the primary) and us (one slot); tenant `eu` may use EU only, `world` anywhere."""
    de = (substrate("de").kind("vllm").cls("gpu_cluster").jurisdiction("DE").capacity(1)
          .latency(base_ttft_ms=0, rtt_ms=0, prefill=1e9, decode=10))
    us = (substrate("us").kind("vllm").cls("gpu_cluster").jurisdiction("US").capacity(1)
          .latency(base_ttft_ms=0, rtt_ms=0, prefill=1e9, decode=10))
    return (fleet(de, us).model("m", primary="de").sla("interactive", ttft_ms=100_000, e2e_ms=1_000_000)
            .tenant("eu", allowed=["EU"]).tenant("world").build())


def test_fifo_queue_waits_rather_than_leave_the_tenants_jurisdictions():
    # de is busy with r0 (1 s); us is free. eu's r1 waits for de (us is outside the EU); world's r2
    # takes us at once.
    built = two_jurisdictions()
    requests = [req(0, 0.0, 0, 11, tenant="eu"), req(1, 0.1, 0, 11, tenant="eu"), req(2, 0.2, 0, 11, tenant="world")]
    a, b, c = replay_of(built, requests, "fifo_queue").outcomes
    assert (a.substrate, b.substrate, c.substrate) == ("de", "de", "us")
    assert b.tried == ("de",) and b.held_s == pytest.approx(0.9) and c.held_s == 0.0
    assert not any(o.sovereignty_violation for o in (a, b, c))


def test_fifo_queue_many_eu_requests_never_leave_the_eu():
    built = two_jurisdictions()
    requests = [req(i, 0.05 * i, 0, 3 + i % 7, tenant="eu" if i % 3 else "world") for i in range(60)]
    result = replay_of(built, requests, "fifo_queue")
    eu = [o for o in result.outcomes if o.tenant == "eu"]
    assert eu and all(set(o.tried) <= {"de"} for o in eu)
    assert any(o.held_s > 0 for o in eu) and any(o.substrate == "us" for o in result.outcomes)
    assert run_report(result, 0.0)["sovereignty_violations"] == 0


def test_a_waiting_request_does_not_block_one_behind_it_that_may_use_a_freed_endpoint():
    # r0 (eu) holds de for 5 s, r1 (world) holds us for 1 s. r2 (eu) waits for de; r3 (world) waits
    # behind it. When us frees at 1 s, r3 takes it: r2 cannot use us, so it does not hold r3 back.
    built = two_jurisdictions()
    requests = [req(0, 0.0, 0, 51, tenant="eu"), req(1, 0.0, 0, 11, tenant="world"),
                req(2, 0.1, 0, 11, tenant="eu"), req(3, 0.2, 0, 11, tenant="world")]
    result = replay_of(built, requests, "fifo_queue")
    first_token = [o.arrival_s + o.ttft_s for o in result.outcomes]
    assert [o.substrate for o in result.outcomes] == ["de", "us", "de", "us"]
    assert first_token == pytest.approx([0.0, 0.0, 5.0, 1.0])
