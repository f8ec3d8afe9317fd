"""A vLLM substrate's ``request_router``: how Serve spreads its requests over the replicas.

Bad values are refused with the path, the YAML line and what is valid; good ones become Serve's
``RequestRouterConfig`` for Ray's own ``PrefixCacheAffinityRouter``; the prompt text that router
reads is built so that a conversation's next turn extends the previous turn's text.
"""

from __future__ import annotations

import pytest

from deployments.request_routing import (
    PREFIX_CACHE_AFFINITY_ROUTER,
    RoutingPrompt,
    request_router_options,
    routes_by_prefix,
    routing_prompt,
)
from inferplane.config import parse_config
from inferplane.config.schema import DefaultRequestRouter, PrefixCacheAffinityRequestRouter
from tests.test_config import BASE, edit, line_of, problems_of

ENGINE = "      engine: {model_path: /models/m, max_model_len: 4096}\n"


def with_router(block: str) -> str:
    return edit((ENGINE, ENGINE + "      replicas: {num_replicas: 2}\n      request_router: " + block + "\n"))


def test_without_a_request_router_serve_routes_as_by_default() -> None:
    gpu = parse_config(BASE).substrates[0]
    assert gpu.vllm.request_router == DefaultRequestRouter()
    assert not routes_by_prefix(gpu)
    assert request_router_options(gpu) == {}
    assert request_router_options(parse_config(with_router("{kind: default}")).substrates[0]) == {}


def test_prefix_cache_affinity_becomes_rays_router_with_its_thresholds() -> None:
    text = with_router("{kind: prefix_cache_affinity, imbalanced_threshold: 4, match_rate_threshold: 0.3, "
                       "eviction: {threshold_chars: 200000, target_chars: 150000, interval_s: 5}}")
    gpu = parse_config(text).substrates[0]
    assert isinstance(gpu.vllm.request_router, PrefixCacheAffinityRequestRouter)
    assert routes_by_prefix(gpu)
    config = request_router_options(gpu)["request_router_config"]
    assert config.request_router_class == PREFIX_CACHE_AFFINITY_ROUTER
    assert config.request_router_kwargs == {
        "imbalanced_threshold": 4, "match_rate_threshold": 0.3, "do_eviction": True,
        "eviction_threshold_chars": 200000, "eviction_target_chars": 150000, "eviction_interval_secs": 5}
    assert config.get_request_router_class().__name__ == "PrefixCacheAffinityRouter"


def test_unset_thresholds_keep_rays_defaults() -> None:
    gpu = parse_config(with_router("{kind: prefix_cache_affinity}")).substrates[0]
    # No imbalanced_threshold: Ray's default (infinity, never imbalanced); no eviction.
    assert request_router_options(gpu)["request_router_config"].request_router_kwargs == {
        "match_rate_threshold": 0.1}


@pytest.mark.parametrize("block, path, fragments", [
    ("{kind: prefix_affinity}", "request_router.kind", ["'default' or 'prefix_cache_affinity'", "prefix_affinity"]),
    ("{match_rate_threshold: 0.2}", "request_router.kind", ["required: 'default' or 'prefix_cache_affinity'"]),
    ("{kind: prefix_cache_affinity, match_rate_threshold: 1.5}", "request_router.match_rate_threshold",
     ["less than or equal to 1", "1.5"]),
    ("{kind: prefix_cache_affinity, imbalanced_threshold: -1}", "request_router.imbalanced_threshold",
     ["greater than or equal to 0"]),
    ("{kind: prefix_cache_affinity, imbalance_threshold: 3}", "request_router.imbalance_threshold",
     ["unknown key", "imbalanced_threshold", "match_rate_threshold", "eviction"]),
    ("{kind: default, match_rate_threshold: 0.2}", "request_router.match_rate_threshold",
     ["unknown key", "valid keys: kind"]),
    ("{kind: prefix_cache_affinity, eviction: {threshold_chars: 1000, target_chars: 2000}}",
     "request_router.eviction", ["target_chars (2000) must not exceed threshold_chars (1000)"]),
    ("{kind: prefix_cache_affinity, eviction: {threshold_chars: 0, target_chars: 1}}",
     "request_router.eviction.threshold_chars", ["greater than 0"]),
    ("prefix_cache_affinity", "request_router", ["valid dictionary"]),
])
def test_bad_request_router_is_refused_with_path_line_and_what_is_valid(block, path, fragments) -> None:
    text = with_router(block)
    err = problems_of(text)
    assert len(err.problems) == 1, str(err)
    text_of = str(err)
    assert f"fleet.yaml:{line_of(text, 'request_router')}: substrates[0].vllm.{path}:" in text_of
    for fragment in fragments:
        assert fragment in text_of


def test_only_vllm_substrates_take_a_request_router() -> None:
    text = edit(('openai_compatible: {base_url: "https://api.example.com/v1", api_key_env: API_US_KEY}',
                 'openai_compatible: {base_url: "https://api.example.com/v1", api_key_env: API_US_KEY, '
                 'request_router: {kind: prefix_cache_affinity}}'))
    assert "unknown key `request_router`" in str(problems_of(text))


def test_a_conversations_next_turn_extends_its_routing_text() -> None:
    turn1 = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Tell me about Paris."}]
    turn2 = turn1 + [{"role": "assistant", "content": "It is in France."}, {"role": "user", "content": "And Lyon?"}]
    first = routing_prompt({"api": "chat", "messages": turn1}).prompt
    second = routing_prompt({"api": "chat", "messages": turn2}).prompt
    assert second.startswith(first) and len(second) > len(first)
    assert "Tell me about Paris." in first


def test_routing_text_of_completions_and_token_ids_is_never_empty() -> None:
    assert routing_prompt({"api": "completion", "prompt": "Once upon"}).prompt.endswith("Once upon")
    empty = routing_prompt({"api": "completion", "prompt": ""}).prompt
    assert empty  # Ray's router divides by the text's length
    ids = routing_prompt({"api": "completion", "prompt": None, "prompt_token_ids": [5, 17, 9]}).prompt
    longer = routing_prompt({"api": "completion", "prompt": None, "prompt_token_ids": [5, 17, 9, 4]}).prompt
    assert longer.startswith(ids) and ids.endswith("5 17 9")


def test_rays_router_finds_the_text_beside_the_payload() -> None:
    """Ray's router reads ``prompt`` or ``messages`` from the first positional argument that has one:
    the payload dict has neither, the ``RoutingPrompt`` after it has ``prompt``."""
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
        PrefixCacheAffinityRouter,
    )

    class Pending:  # the fields of Serve's PendingRequest that the router reads
        def __init__(self, args):
            self.args = args

    payload = {"api": "chat", "messages": [{"role": "user", "content": "hello there"}], "request_id": "r"}
    router = PrefixCacheAffinityRouter.__new__(PrefixCacheAffinityRouter)  # no Serve around it
    assert router._extract_text_from_request(Pending([payload, routing_prompt(payload)])) == "chat\nuser: hello there\n"
    with pytest.raises(ValueError):
        router._extract_text_from_request(Pending([payload]))
    assert isinstance(routing_prompt(payload), RoutingPrompt)
