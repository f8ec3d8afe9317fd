"""The prefix oracle (``inferplane/replay/prefix_oracle.py``): the replay's ceiling of prefix
affinity, a belief that is the simulator's caches. Small handmade traces, worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from inferplane.placement.fleet import PrefixCacheSpec
from inferplane.replay.plane_router import PlaneRouter
from inferplane.replay.prefix_oracle import PrefixOracle
from inferplane.replay.runner import PLANE_PREFIX_ORACLE, jurisdiction_routes, parse_routers
from inferplane.replay.simulator import Simulator
from inferplane.replay.substrate_physics import physics_for
from inferplane.replay.trace import MOONCAKE_BLOCK_TOKENS as BLOCK
from tests.builders import fleet, substrate
from tests.test_replay_simulator import req


def with_blocks(index: int, arrival_s: float, blocks: tuple[int, ...]):
    return replace(req(index, arrival_s, len(blocks) * BLOCK, 5), prefix_blocks=blocks)


# Spaced 10 s apart: each prefill starts, on an idle pool, as its request is placed.
TRACE = (
    with_blocks(0, 0.0, (1, 2, 3, 4)),            # cold; the pool's next replica in turn: replica 0
    with_blocks(1, 10.0, (9, 10)),                # cold; replica 1
    with_blocks(2, 20.0, (1, 2, 3, 4, 5, 6)),     # replica 0 holds 4 of 6; it keeps its 4 first (LRU of 4)
    with_blocks(3, 30.0, (9, 10, 11, 12)),        # replica 1 holds 2 of 4
    with_blocks(4, 40.0, (1, 2, 3, 4, 5, 6, 7, 8)),  # replica 0 holds 4 of 8 (5 and 6 were evicted)
)
EXPECTED_HITS = (0.0, 0.0, 4 / 6, 2 / 4, 4 / 8)


def pool_declaring_a_large_cache():
    """A vLLM pool of two replicas, each declaring a prefix cache of 1,000 blocks."""
    doc = (substrate("pool").kind("vllm").cls("gpu_cluster").capacity(4, queued=4).replicas(2)
           .latency(base_ttft_ms=100, prefill=1000, decode=50)).obj()
    doc["latency"]["kv_cache_tokens_per_replica"] = 1000 * BLOCK
    return fleet(doc).build()


def run_with_oracle(trace, *, oracle: bool = True):
    """The plane over ``trace`` on one pool whose real caches are two replicas of four blocks each
    (it declares far more), its belief the simulator's caches (``oracle``) or its own."""
    built = pool_declaring_a_large_cache()
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    sim = Simulator(built, physics, tuple(trace), prefix_caches=(PrefixCacheSpec(2, 4 * BLOCK),))
    belief = PrefixOracle(sim.substrates) if oracle else None
    router = PlaneRouter(built, sim.loads(), heartbeat_s=0.25, start_s=sim.start_s, prefix_belief=belief)
    return sim.run(router), belief, sim


def test_the_oracle_predicts_what_the_simulators_caches_serve() -> None:
    result, _, _ = run_with_oracle(TRACE)
    predicted = tuple(o.predicted_prefix_hit for o in result.outcomes)
    served = tuple(o.cached_tokens / (len(r.prefix_blocks) * BLOCK) for o, r in zip(result.outcomes, TRACE))
    assert predicted == pytest.approx(EXPECTED_HITS)
    assert served == pytest.approx(EXPECTED_HITS)


def test_the_learnt_belief_believes_evicted_blocks_the_oracle_does_not() -> None:
    """The plane's own belief of the same pool (its capacity as declared: 2,000 blocks) recorded the
    whole of request 2 and so believes 6 of request 4's 8 blocks cached; the caches kept 4, as the
    oracle says."""
    learnt, _, _ = run_with_oracle(TRACE, oracle=False)
    oracle, _, _ = run_with_oracle(TRACE)
    assert learnt.outcomes[4].predicted_prefix_hit == pytest.approx(6 / 8)
    assert oracle.outcomes[4].predicted_prefix_hit == pytest.approx(4 / 8)
    assert learnt.outcomes[4].cached_tokens == oracle.outcomes[4].cached_tokens == 4 * BLOCK


def test_the_oracle_reads_the_best_replica_and_learns_nothing() -> None:
    _, oracle, sim = run_with_oracle(TRACE)
    (pool,) = sim.substrates
    replica0, replica1 = pool.prefix_caches
    assert oracle.substrates == ("pool",)
    assert oracle.hits((1, 2, 9)) == (("pool", pytest.approx(2 / 3)),)   # replica 0: 1, 2; then 9 is not next
    assert oracle.hits((9, 10, 11, 12, 13)) == (("pool", pytest.approx(4 / 5)),)  # replica 1 holds 9-12
    assert oracle.hits((7, 1)) == () and oracle.hits(()) == ()  # a run must lead the prompt
    assert oracle.hits((1, 2), substrates=("elsewhere",)) == ()
    assert oracle.hit_fraction("pool", (1, 2, 3, 4)) == 1.0 and oracle.hit_fraction("elsewhere", (1,)) == 0.0
    held = (list(replica0._blocks), list(replica1._blocks))
    oracle.sent("pool", (50, 51))  # in flight: held as far as placement can tell ...
    assert oracle.hit_fraction("pool", (50, 51, 52)) == pytest.approx(2 / 3)
    oracle.settled("pool", (50, 51), prefilled=True)  # ... then forgotten: the simulator's caches record what they serve
    assert oracle.hit_fraction("pool", (50, 51, 52)) == 0.0
    assert (list(replica0._blocks), list(replica1._blocks)) == held
    replica1.touch((77,))  # read live, not copied
    assert oracle.hit_fraction("pool", (77, 1)) == 0.5


def test_the_oracle_is_a_named_router_of_the_plane() -> None:
    assert parse_routers(f"inferplane,{PLANE_PREFIX_ORACLE}") == ("inferplane", PLANE_PREFIX_ORACLE)
    assert PLANE_PREFIX_ORACLE not in parse_routers("all")  # by name only: not a router anyone can run
    assert jurisdiction_routes(PLANE_PREFIX_ORACLE) == "policy"
