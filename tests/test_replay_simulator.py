"""The simulator on cases small enough to compute by hand: one or two substrates, known rates.

Every expected latency below is worked out in the comment next to it from the physics formulas
(``substrate_adapters.physics``): outbound = rtt/2; first token = rtt/2 + ttft + input/prefill
after admission; then one token per ``slowdown * (1 + (sigma - 1) * min(1, running/slots)) / decode``.
"""

from __future__ import annotations

import pytest

from inferplane.config import BuiltConfig
from inferplane.fleet_state import SubstrateReport
from inferplane.replay.baselines import baseline
from inferplane.replay.plane_router import PlaneRouter
from inferplane.replay.scenario import BaselineSection, Event, EventKind
from inferplane.replay.simulator import SimulationResult, Simulator
from inferplane.replay.substrate_physics import physics_for
from inferplane.replay.workload import ReplayRequest
from tests.builders import build_doc, fleet, substrate


def req(index: int, arrival_s: float, input_tokens: int, output_tokens: int, *, tenant: str = "t",
        sla: str = "interactive", max_tokens: int | None = None) -> ReplayRequest:
    return ReplayRequest(index=index, request_id=f"r{index}", trace_index=index, copy=0, arrival_s=arrival_s,
                         tenant=tenant, sla_class=sla, model="m", input_tokens=input_tokens,
                         output_tokens=output_tokens, max_tokens=max_tokens or output_tokens)


def replay_of(built: BuiltConfig, requests: list[ReplayRequest], router: str = "round_robin",
              events: tuple[Event, ...] = (), settings: BaselineSection | None = None) -> SimulationResult:
    """One router over ``requests`` on ``built`` with jitter-free physics."""
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    sim = Simulator(built, physics, tuple(requests), events)
    if router == "inferplane":
        r = PlaneRouter(built, sim.loads(), heartbeat_s=0.25, start_s=sim.start_s)
    else:
        r = baseline(router, built, settings or BaselineSection())
    return sim.run(r)


def one_pool(*, slots: int, slowdown: float = 1.0, rtt_ms: float = 40.0, kind: str = "vllm") -> BuiltConfig:
    """ttft 100 ms, prefill 1,000 tok/s, decode 50 tok/s per stream, ``slots`` slots."""
    s = (substrate("pool").kind(kind).cls("gpu_cluster").capacity(slots, queued=slots)
         .latency(base_ttft_ms=100, rtt_ms=rtt_ms, prefill=1000, decode=50, slowdown=slowdown))
    return fleet(s).build()


@pytest.mark.parametrize("router", ["round_robin", "inferplane"])
def test_one_request_alone(router):
    # ttft = rtt/2 + (rtt/2 + 0.1 + 500/1000) = 0.02 + 0.62 = 0.64 s
    # e2e  = 0.64 + 10 tokens * 1/50 = 0.84 s  (one slot of 4 held, slowdown 1)
    result = replay_of(one_pool(slots=4), [req(0, 0.0, 500, 11)], router)
    (o,) = result.outcomes
    assert o.status == "completed" and o.substrate == "pool"
    assert o.ttft_s == pytest.approx(0.64)
    assert o.e2e_s == pytest.approx(0.84)
    assert o.met_sla and not o.spillover


def test_queueing_at_the_concurrency_limit():
    # One slot, decode slowdown 2 at a full batch (a single running request is a full batch):
    # per-token 2/50 = 0.04 s. A: admitted 0.02, first token 0.14 (0.02 + 0.12), done 0.14 + 10*0.04
    # = 0.54. B arrives with A, waits for the slot until 0.54, first token 0.66, done 1.06.
    result = replay_of(one_pool(slots=1, slowdown=2.0), [req(0, 0.0, 0, 11), req(1, 0.0, 0, 11)])
    a, b = result.outcomes
    assert (a.ttft_s, a.e2e_s) == pytest.approx((0.14, 0.54))
    assert (b.ttft_s, b.e2e_s) == pytest.approx((0.66, 1.06))


def test_decode_slows_with_the_batch_and_recovers():
    # Two slots, sigma = 3: per-token 1/50 * (1 + 2 * running/2) -> 0.04 s with one running, 0.06 s
    # with two. A: admitted 0.02, first token 0.14, alone until B takes a slot at 0.32: 4.5 tokens
    # done, 5.5 left at 0.06 s -> A done at 0.65. B: first token 0.32 + 0.12 = 0.44; with A until
    # 0.65 (3.5 tokens), then alone: 6.5 tokens * 0.04 = 0.26 -> done at 0.91 (e2e 0.61).
    result = replay_of(one_pool(slots=2, slowdown=3.0), [req(0, 0.0, 0, 11), req(1, 0.3, 0, 11)])
    a, b = result.outcomes
    assert a.e2e_s == pytest.approx(0.65)
    assert b.ttft_s == pytest.approx(0.14)
    assert b.e2e_s == pytest.approx(0.61)


def shared_compute_pool(*, lanes: int | None, share: float) -> BuiltConfig:
    """No rtt, ttft 100 ms, prefill 1,000 tok/s, decode 50 tok/s, 4 slots, no batch slowdown."""
    s = (substrate("pool").kind("vllm").cls("gpu_cluster").capacity(4, queued=4)
         .latency(base_ttft_ms=100, rtt_ms=0, prefill=1000, decode=50, prefill_lanes=lanes, decode_share=share))
    return fleet(s).build()


def test_one_prefill_lane_serialises_first_tokens():
    # Both admitted at 0. A holds the lane for 0.1 + 0.5 = 0.6 s (first token 0.6); B waits for the
    # lane and prefills 0.6 -> 1.2. With a lane per slot (None) both see their first token at 0.6.
    serial = replay_of(shared_compute_pool(lanes=1, share=1.0), [req(0, 0.0, 500, 1), req(1, 0.0, 500, 1)])
    parallel = replay_of(shared_compute_pool(lanes=None, share=1.0), [req(0, 0.0, 500, 1), req(1, 0.0, 500, 1)])
    assert [o.ttft_s for o in serial.outcomes] == pytest.approx([0.6, 1.2])
    assert [o.ttft_s for o in parallel.outcomes] == pytest.approx([0.6, 0.6])


@pytest.mark.parametrize(("share", "a_done"), [(1.0, 0.3), (0.0, 0.7), (0.5, 0.4)])
def test_decode_slows_to_its_share_while_another_request_prefills(share, a_done):
    # A: first token at 0.1 (no prefill), then 10 tokens at 1/50 s: alone, done at 0.3.
    # B arrives at 0.2 and prefills 0.1 + 300/1000 = 0.4 s (0.2 -> 0.6); A has 5 tokens left.
    #   share 1:   A is undisturbed: done 0.3.
    #   share 0:   A stalls from 0.2 to 0.6, then 5 tokens in 0.1 s: done 0.7.
    #   share 0.5: A's 5 tokens at 25 tok/s take 0.2 s: done 0.4 (B still prefilling).
    result = replay_of(shared_compute_pool(lanes=1, share=share), [req(0, 0.0, 0, 11), req(1, 0.2, 300, 1)])
    a, b = result.outcomes
    assert a.e2e_s == pytest.approx(a_done)
    assert b.ttft_s == pytest.approx(0.4)


def test_rate_limit_answers_429_and_the_gateway_tries_the_next_endpoint():
    # api allows 1 request a minute (a bucket of 1, refilled at 1/60 per s): the first request takes
    # it; the second gets a 429 after rtt/2 out and rtt/2 back (0.04 s) and goes to the pool.
    api = (substrate("api").kind("openai_compatible").cls("provider_api").tier("burst").capacity(4, rpm=1)
           .latency(base_ttft_ms=100, rtt_ms=40, prefill=1000, decode=50).cost(input_per_1m=1.0))
    pool = (substrate("pool").kind("vllm").cls("gpu_cluster").capacity(4)
            .latency(base_ttft_ms=100, rtt_ms=40, prefill=1000, decode=50))
    built = fleet(api, pool).model("m", primary="api").build()
    a, b = replay_of(built, [req(0, 0.0, 0, 1), req(1, 0.5, 0, 1)], "ordered_fallback").outcomes
    assert a.tried == ("api",) and a.ttft_s == pytest.approx(0.14)
    assert b.tried == ("api", "pool") and b.substrate == "pool"
    # 0.04 s to learn of the 429, then 0.14 s on the pool.
    assert b.ttft_s == pytest.approx(0.18)
    # cheapest_first puts the pool (reserved: list price 0) before the priced api: no 429 at all.
    outcomes = replay_of(built, [req(0, 0.0, 0, 1), req(1, 0.5, 0, 1)], "cheapest_first").outcomes
    assert [o.tried for o in outcomes] == [("pool",), ("pool",)]


def test_client_timeout_abandons_the_attempt_and_retries_elsewhere():
    # api: one slot, 10 s per request; its client times out after 1 s without a first byte
    # (openai_compatible.request_timeout_s). B waits behind A, times out at 1.5 s, goes to pool.
    api = (substrate("api").kind("openai_compatible").cls("provider_api").capacity(1)
           .latency(base_ttft_ms=0, rtt_ms=0, prefill=1000, decode=1))
    pool = substrate("pool").kind("vllm").cls("gpu_cluster").capacity(4).latency(base_ttft_ms=100, rtt_ms=0)
    doc = fleet(api, pool).model("m", primary="api").doc()
    doc["substrates"][0]["openai_compatible"]["request_timeout_s"] = 1.0
    built = build_doc(doc)
    a, b = replay_of(built, [req(0, 0.0, 0, 11), req(1, 0.5, 0, 11)], "ordered_fallback").outcomes
    assert a.substrate == "api" and a.e2e_s == pytest.approx(10.0)
    assert b.tried == ("api", "pool")
    # 1.0 s lost on api, then 0.1 s to the first token on pool.
    assert b.ttft_s == pytest.approx(1.1)


def test_outage_fails_attempts_and_the_plane_stops_choosing_the_substrate():
    # Two equal pools; `a` is unreachable from 10 s to 40 s. Attempts on `a` fail after one rtt
    # and are re-placed on `b`; after the staleness bound (2 s) the plane no longer tries `a` at all.
    a = substrate("a").kind("vllm").cls("gpu_cluster").capacity(8).latency(base_ttft_ms=50, rtt_ms=10)
    b = substrate("b").kind("vllm").cls("gpu_cluster").capacity(8).latency(base_ttft_ms=50, rtt_ms=10)
    built = fleet(a, b).model("m", primary="a").build()
    requests = [req(i, 0.5 * i, 100, 5) for i in range(100)]
    outage = (Event(EventKind.OUTAGE, "a", 10.0, 30.0),)
    result = replay_of(built, requests, "inferplane", outage)
    assert all(o.status == "completed" for o in result.outcomes)
    during = [o for o in result.outcomes if 10.0 <= o.arrival_s < 40.0]
    assert all(o.substrate == "b" for o in during)
    late = [o for o in during if o.arrival_s >= 10.0 + 2.0 + 0.5]
    assert late and all(o.tried == ("b",) for o in late)
    after = [o for o in result.outcomes if o.arrival_s >= 45.0]
    assert any(o.substrate == "a" for o in after)


def test_failure_rate_one_fails_every_attempt_on_that_substrate():
    a = substrate("a").kind("vllm").cls("gpu_cluster").capacity(8).latency(base_ttft_ms=50, rtt_ms=10)
    built = fleet(a).build()
    event = (Event(EventKind.FAILURE_RATE, "a", 0.0, 100.0, 1.0),)
    result = replay_of(built, [req(i, float(i), 100, 5) for i in range(5)], "round_robin", event)
    assert [o.status for o in result.outcomes] == ["failed"] * 5
    assert all(o.tried == ("a",) and o.cost_usd == 0.0 for o in result.outcomes)


def test_slowdown_multiplies_durations():
    # slowdown 2 on the pool: ttft 2 * 0.64 = 1.28, decode 10 * 2/50 = 0.4 -> e2e 1.68.
    event = (Event(EventKind.SLOWDOWN, "pool", 0.0, 100.0, 2.0),)
    (o,) = replay_of(one_pool(slots=4), [req(0, 1.0, 500, 11)], events=event).outcomes
    assert (o.ttft_s, o.e2e_s) == pytest.approx((1.28, 1.68))


def test_every_request_settles_exactly_once_and_replays_are_deterministic():
    built = one_pool(slots=2, slowdown=2.0)
    requests = [req(i, 0.05 * i, 200 + i, 1 + i % 40) for i in range(300)]
    first = replay_of(built, requests, "inferplane")
    second = replay_of(built, requests, "inferplane")
    assert [o.index for o in first.outcomes] == list(range(300))
    assert first.outcomes == second.outcomes


def test_every_heartbeat_speaks_for_all_configured_replicas():
    # One simulated report stands for both replicas of the pool: its capacity follows the replicas
    # it says are live (2 of 2: the declared 4 + 4; 1 of 2 would be 2 + 2). The adapter returns
    # the same report object while nothing changed; the copy sent for both replicas is reused
    # then, and made anew when the report changes.
    s = (substrate("pool").kind("vllm").cls("gpu_cluster").capacity(4, queued=4)
         .latency(base_ttft_ms=100, prefill=1000, decode=50).replicas(2))
    built = fleet(s).build()
    idle, busy = SubstrateReport(in_flight=0, kv_cache_usage=0.0), SubstrateReport(in_flight=3, kv_cache_usage=0.5)
    said = iter([idle, idle, busy, busy])
    router = PlaneRouter(built, {"pool": lambda now: next(said)}, heartbeat_s=0.25, start_s=0.0)
    beat = router.periodic()[0].run  # the pool's heartbeat (heartbeats come first, in fleet order)
    authority = router._state  # the placement actor's state the router drives
    for k, in_flight in enumerate([0.0, 0.0, 3.0, 3.0]):
        now = 0.25 * k
        beat(now)
        (signals,) = authority.snapshot(now).signals
        assert signals.capacity == (4, 4)
        assert (signals.in_flight.value, signals.in_flight.observed_at_s) == (in_flight, now)
