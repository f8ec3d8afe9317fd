"""Prefix-cache affinity across a pool's replicas, measured by vLLM itself.

Two replicas of the vLLM CPU substrate (SmolLM2-135M-Instruct) serve the same multi-turn
conversations twice, through the plane's HTTP ingress with the official ``openai`` SDK: once routed
by Ray Serve's ``PrefixCacheAffinityRouter`` (``tests/integration/prefix_affinity.yaml``), once by
Serve's default router. Each turn resends the whole history, so a turn's prompt extends the one
before; each conversation opens with its own ~600-token document (several 128-token KV blocks).

Measured by the engines, not by the plane: per request vLLM's ``num_cached_tokens`` (the answer's
``usage.prompt_tokens_details.cached_tokens``), per replica vLLM's prefix-cache counters (queried
and hit tokens, reported by each replica to the placement actor). Asserted: the counters agree
with the answers; under affinity every later turn finds at least half its prompt cached and both
replicas take conversations; affinity's hit rate is above the default router's. The last could
fail by chance only if the default router, picking one of two idle replicas at random for each of
the 12 later turns, happened to pick the replica holding the history every time (about 1 in 4,000).
Nothing here is timed. ``INFERPLANE_PREFIX_REPORT=1`` prints the rates.
"""

from __future__ import annotations

import inspect
import os
import random
import time
from pathlib import Path

import openai
import pytest
import ray

from tests.integration.conftest import EU_KEY, _deploy

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parent / "prefix_affinity.yaml"
AFFINITY = "request_router: {kind: prefix_cache_affinity, imbalanced_threshold: 8, match_rate_threshold: 0.1}"
CONVERSATIONS, TURNS = 4, 4
WORDS = ("harbour ledger copper valley signal orchard mineral archive lantern meadow quarry beacon "
         "granite canal furnace timber vessel market pigment glacier compass thistle cellar anchor").split()


def _document(conversation: int) -> str:
    """A distinct ~600-token text for one conversation: no two conversations share a prefix
    beyond the chat template's first few tokens."""
    rng = random.Random(conversation)
    lines = [f"Field log {conversation}, entry {i}: the {rng.choice(WORDS)} near the {rng.choice(WORDS)} "
             f"held {rng.randint(10, 999)} units of {rng.choice(WORDS)} and {rng.choice(WORDS)}."
             for i in range(30)]
    return "\n".join(lines)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=EU_KEY, max_retries=0, timeout=300)


def _replay(url: str) -> tuple[list[dict], list[list[dict]]]:
    """Every conversation's turns, interleaved turn by turn (one request at a time); per request
    its conversation, turn and usage, and the conversations' histories."""
    client = _client(url)
    histories = [[{"role": "system", "content": "You answer in one short sentence."},
                  {"role": "user", "content": _document(c) + "\n\nWhich entry mentions a glacier?"}]
                 for c in range(CONVERSATIONS)]
    served = []
    for turn in range(TURNS):
        for c, history in enumerate(histories):
            if turn:
                history.append({"role": "user", "content": f"Now summarise entries {turn * 5} to {turn * 5 + 4} "
                                                           f"of field log {c} in a few words each, please."})
            raw = client.chat.completions.with_raw_response.create(
                model="smollm2", messages=history, max_tokens=8, temperature=0)
            answer = raw.parse()
            assert raw.headers["x-inferplane-substrate"] == "pool-vllm"
            usage = answer.usage
            assert usage.prompt_tokens_details is not None, "the engine's cached-token count is missing"
            served.append({"conversation": c, "turn": turn, "prompt": usage.prompt_tokens,
                           "cached": usage.prompt_tokens_details.cached_tokens})
            history.append({"role": "assistant", "content": answer.choices[0].message.content or ""})
    return served, histories


def _streamed_usage(url: str, history: list[dict]):
    """The usage chunk of a streamed resend of ``history``."""
    chunks = list(_client(url).chat.completions.create(
        model="smollm2", messages=history, max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    return chunks[-1].usage


def _replica_counters(plane, expected_queried: int, timeout_s: float = 60.0) -> list[tuple[int, int]]:
    """Each replica's (queried, hit) prefix-cache tokens as it last reported them, once their sum
    reaches ``expected_queried`` (replicas report every quarter second)."""
    from deployments.placement_actor import NAMESPACE, actor_name

    actor = ray.get_actor(actor_name(plane.app_name), namespace=NAMESPACE)
    deadline = time.monotonic() + timeout_s
    while True:
        (sub,) = ray.get(actor.status.remote())["substrates"]
        counters = [(r["prefix_cache_queried_tokens"] or 0, r["prefix_cache_hit_tokens"] or 0)
                    for r in sub["replicas"]]
        if sum(q for q, _ in counters) >= expected_queried or time.monotonic() > deadline:
            return counters
        time.sleep(0.5)


def _measure(config_text: str, app_name: str) -> dict:
    plane, teardown = _deploy(config_text, app_name, 600)
    try:
        served, histories = _replay(plane.url)
        prompts = sum(s["prompt"] for s in served)
        counters = _replica_counters(plane, prompts)
        streamed = _streamed_usage(plane.url, histories[0])  # after the counters: not in them
    finally:
        teardown()
    queried, hits = sum(q for q, _ in counters), sum(h for _, h in counters)
    return {"served": served, "replicas": counters, "queried": queried, "hits": hits,
            "hit_rate": hits / queried if queried else 0.0, "cached": sum(s["cached"] for s in served),
            "prompts": prompts, "streamed": streamed}


@pytest.fixture(scope="module")
def measured(ray_cluster):
    from inferplane.cli.models import prepare_config_models

    prepare_config_models(str(CONFIG))
    text = CONFIG.read_text()
    assert text.count(AFFINITY) == 1
    affinity = _measure(text, "inferplane-prefix-affinity")
    default = _measure(text.replace(AFFINITY, "request_router: {kind: default}"), "inferplane-prefix-default")
    if os.environ.get("INFERPLANE_PREFIX_REPORT"):
        for name, m in (("affinity", affinity), ("default", default)):
            print(f"\n{name}: hit rate {m['hit_rate']:.3f} ({m['hits']}/{m['queried']} prompt tokens), "
                  f"replicas (queried, hit) {m['replicas']}, per request cached/prompt "
                  + " ".join(f"{s['cached']}/{s['prompt']}" for s in m["served"]))
    return {"affinity": affinity, "default": default}


@pytest.mark.parametrize("router", ["affinity", "default"])
def test_engine_counters_agree_with_each_answers_cached_tokens(measured, router):
    m = measured[router]
    assert len(m["replicas"]) == 2
    assert m["queried"] == m["prompts"], m["replicas"]
    assert m["hits"] == m["cached"], m["replicas"]
    assert all(s["cached"] == 0 for s in m["served"] if s["turn"] == 0)  # nothing shared between documents


def test_affinity_keeps_each_conversation_where_its_history_is_cached(measured):
    m = measured["affinity"]
    later = [s for s in m["served"] if s["turn"] > 0]
    assert all(s["cached"] >= s["prompt"] // 2 for s in later), later
    assert all(queried > 0 for queried, _ in m["replicas"]), m["replicas"]  # conversations spread over both
    streamed = m["streamed"]  # a streamed answer's usage chunk says so too
    assert streamed.prompt_tokens_details.cached_tokens >= streamed.prompt_tokens // 2, streamed


def test_affinity_hits_the_prefix_cache_more_than_the_default_router(measured):
    assert measured["affinity"]["hit_rate"] > measured["default"]["hit_rate"], (
        measured["affinity"]["replicas"], measured["default"]["replicas"])


def test_the_public_router_is_the_class_configured():
    """The config names the class that Ray's public ``ray.serve.llm.request_router``
    ``PrefixCacheAffinityRouter`` subclasses (its package imports vLLM); the public one adds nothing."""
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter

    from deployments.request_routing import PREFIX_CACHE_AFFINITY_ROUTER
    from ray.serve.config import RequestRouterConfig

    configured = RequestRouterConfig(request_router_class=PREFIX_CACHE_AFFINITY_ROUTER).get_request_router_class()
    assert PrefixCacheAffinityRouter.__mro__[1] is configured
    added = {k for k, v in vars(PrefixCacheAffinityRouter).items()
             if inspect.isfunction(v) or isinstance(v, (property, classmethod, staticmethod))}
    assert not added
