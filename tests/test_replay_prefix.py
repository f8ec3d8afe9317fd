"""Prefix caches in the replay (issue #17): Mooncake's block ids drive each replica's cache in the
simulator (the truth), the plane places with its own belief, baselines hit the same caches, the
bound assumes the best cache, and a trace without block ids replays exactly as before.

Reduced replays: the first 1,500-2,000 rows of the Mooncake conversation trace (a few seconds each).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from inferplane.replay.bound import _cached_at_best, build_programme, solve_bound
from inferplane.replay.report import run_report
from inferplane.replay.runner import ReplayOptions, prepare, simulate
from inferplane.replay.trace import MOONCAKE_BLOCK_TOKENS, load_trace
from tests.test_replay_simulator import req

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "data" / "traces"
MOONCAKE = TRACES / "mooncake_conversation_trace.jsonl"
AZURE = TRACES / "AzureLLMInferenceTrace_conv.csv"
SCENARIOS = ROOT / "configs" / "scenarios"


def report(prepared, router: str) -> dict:
    return run_report(simulate(prepared, router), 0.0, prepared.requests)


def strip_blocks(prepared):
    return replace(prepared, requests=tuple(replace(r, prefix_blocks=()) for r in prepared.requests))


@pytest.fixture(scope="module")
def mooncake():
    return prepare(ReplayOptions(scenario=str(SCENARIOS / "mooncake-gpu.yaml"), trace=str(MOONCAKE), limit=2000,
                                 bound=False))


def test_mooncake_rows_keep_their_block_ids_and_azure_rows_have_none() -> None:
    rows = load_trace(MOONCAKE, limit=50)
    assert rows[0].prefix_blocks == tuple(range(14))
    assert all(len(r.prefix_blocks) == math.ceil(r.input_tokens / MOONCAKE_BLOCK_TOKENS) for r in rows)
    assert all(r.prefix_blocks == () for r in load_trace(AZURE, limit=50))


def test_prefix_affinity_raises_the_measured_hit_fraction_without_raising_cost(mooncake) -> None:
    """The same policy with and without its prefix belief, on the same caches: the plane that
    places by where prompts' prefixes are cached gets more of them served from a cache (measured
    by the simulator, which the plane never reads) and pays no more; a gateway spreading by load
    gets fewer still."""
    warm, cold, spread = (report(mooncake, r) for r in ("inferplane", "inferplane-no-prefix", "least_outstanding"))
    assert warm["prefix_hit_fraction"] > cold["prefix_hit_fraction"] + 0.02, (warm["prefix_hit_fraction"],
                                                                              cold["prefix_hit_fraction"])
    assert spread["prefix_hit_fraction"] < cold["prefix_hit_fraction"]
    assert warm["usage_cost_usd"] <= cold["usage_cost_usd"]
    assert warm["sovereignty_violations"] == cold["sovereignty_violations"] == 0


def test_a_cache_hit_skips_prefill_for_every_router(mooncake) -> None:
    """The physics: the same requests without block ids hit nothing and wait longer for their
    first token, under a baseline that routes the same either way."""
    with_blocks = report(mooncake, "least_outstanding")
    without = report(strip_blocks(mooncake), "least_outstanding")
    assert without["prefix_hit_fraction"] is None  # no request carries blocks: nothing to report
    assert with_blocks["prefix_hit_fraction"] > 0.02
    assert with_blocks["ttft_p50_s"] < without["ttft_p50_s"]


def test_declaring_a_cache_changes_nothing_without_block_ids(tmp_path: Path) -> None:
    """enterprise-burst declares its engines' KV caches; its Azure replay (no block ids) decides
    and times every request exactly as the same fleet without them."""
    fleet = (SCENARIOS / "enterprise-burst.fleet.yaml").read_text()
    bare = re.sub(r",\s*kv_cache_tokens_per_replica: \d+", "", fleet)
    assert bare != fleet and "kv_cache_tokens_per_replica" not in bare
    (tmp_path / "fleet.yaml").write_text(bare)
    scenario = (SCENARIOS / "enterprise-burst.yaml").read_text().replace("enterprise-burst.fleet.yaml", "fleet.yaml")
    (tmp_path / "scenario.yaml").write_text(scenario)
    runs = {}
    for name, path in (("declared", SCENARIOS / "enterprise-burst.yaml"), ("bare", tmp_path / "scenario.yaml")):
        prepared = prepare(ReplayOptions(scenario=str(path), trace=str(AZURE), limit=1500, bound=False))
        runs[name] = [simulate(prepared, r).outcomes for r in ("inferplane", "round_robin")]
    assert any(s.prefix_cache for s in prepare(ReplayOptions(
        scenario=str(SCENARIOS / "enterprise-burst.yaml"), trace=str(AZURE), limit=10)).scenario.built.fleet.substrates)
    assert runs["declared"] == runs["bare"]


def test_the_bound_assumes_every_earlier_prefix_is_cached() -> None:
    a = replace(req(0, 0.0, 2000, 10), prefix_blocks=(1, 2, 3, 4))
    b = replace(req(1, 1.0, 2600, 10), prefix_blocks=(1, 2, 3, 9, 10, 11))
    c = replace(req(2, 2.0, 512, 10), prefix_blocks=(1,))  # the whole prompt cached: the last token is computed
    d = replace(req(3, 3.0, 700, 10), prefix_blocks=(7, 1))
    assert _cached_at_best((a, b, c, d)) == {0: 0, 1: 3 * 512, 2: 511, 3: 0}


def test_the_bound_stays_above_every_router_with_caches(mooncake) -> None:
    small = replace(mooncake, requests=mooncake.requests[:1000])
    built = small.scenario.built
    span = small.requests[-1].arrival_s - small.requests[0].arrival_s
    with_cache = solve_bound(build_programme(built, small.physics, small.requests, span_s=span))
    no_cache = solve_bound(build_programme(built, small.physics, strip_blocks(small).requests, span_s=span))
    assert with_cache.sla_attainment >= no_cache.sla_attainment
    for router in ("inferplane", "least_outstanding"):
        assert report(small, router)["sla_attainment"] <= with_cache.sla_attainment + 1e-9


def test_the_plane_believes_what_it_served_not_what_the_caches_hold(tmp_path: Path, mooncake) -> None:
    """The same replay with engines that really hold one block each (``simulation.physics``) while
    the config, and so the plane, believes in millions of tokens: the caches serve almost nothing,
    and the plane, which learns only from the requests it saw finish, keeps predicting hits as
    before. Its belief is its own, not a view of the simulator's caches."""
    scenario = (SCENARIOS / "mooncake-gpu.yaml").read_text()
    scenario = scenario.replace("config: mooncake-gpu.fleet.yaml", f"config: {SCENARIOS / 'mooncake-gpu.fleet.yaml'}")
    one_block = "{kv_cache_tokens_per_replica: 512}"
    scenario = scenario.replace(
        "  sample_interval_s: 10\n",
        f"  sample_interval_s: 10\n  physics: {{gpu-fra: {one_block}, gpu-ams: {one_block}, gpu-iad: {one_block}}}\n")
    (tmp_path / "tiny.yaml").write_text(scenario)
    tiny = prepare(ReplayOptions(scenario=str(tmp_path / "tiny.yaml"), trace=str(MOONCAKE), limit=2000, bound=False))
    assert [c.tokens_per_replica for c in tiny.prefix_caches if c is not None] == [512, 512, 512]
    believed, starved = report(mooncake, "inferplane"), report(tiny, "inferplane")
    assert believed["prefix_hit_predicted_fraction"] == pytest.approx(believed["prefix_hit_fraction"], abs=0.1)
    assert starved["prefix_hit_fraction"] < 0.1 < starved["prefix_hit_predicted_fraction"]
    assert starved["prefix_hit_fraction"] < believed["prefix_hit_fraction"] / 2
    assert report(mooncake, "least_outstanding")["prefix_hit_predicted_fraction"] is None  # a gateway predicts nothing
