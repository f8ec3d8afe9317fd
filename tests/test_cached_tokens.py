"""Prefix-cache hits as the engines count them: per request (vLLM's ``num_cached_tokens``, a
provider's ``usage.prompt_tokens_details.cached_tokens``) through ``Finished`` into the OpenAI
usage, and per replica (vLLM's prefix-cache counters, summed from its scheduler stats) in the
adapter's load report."""

from __future__ import annotations

import asyncio

from inferplane.api.responses import completion_body, usage_chunk
from substrate_adapters import vllm_engine
from substrate_adapters.base import Finished, GenerationRequest, TextDelta
from tests.test_openai_compatible import chat, chat_chunk, collect, make, sse, streamed
from tests.test_parameters import _Out, _vllm


def _provider_usage(details) -> dict:
    usage = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    if details is not None:
        usage["prompt_tokens_details"] = details
    return {"id": "c1", "choices": [], "usage": usage}


def _provider_finished(details) -> Finished:
    body = sse(chat_chunk("Hi"), chat_chunk(finish="stop"), _provider_usage(details))
    return collect(make(streamed(body)), chat())[-1]


def test_a_providers_cached_tokens_pass_through():
    assert _provider_finished({"cached_tokens": 8}) == Finished("stop", 12, 2, cached_prompt_tokens=8)


def test_a_provider_without_or_with_malformed_cached_tokens_reports_none():
    for details in (None, {}, {"cached_tokens": "8"}, {"cached_tokens": 13}, {"cached_tokens": -1},
                    {"cached_tokens": True}, "8"):
        assert _provider_finished(details).cached_prompt_tokens is None, details


def test_usage_shows_cached_tokens_only_where_counted():
    done = {"t": "done", "finish_reason": "stop", "prompt_tokens": 300, "completion_tokens": 4}
    deltas = [{"t": "delta", "text": "ok", "tokens": 4}]
    plain = completion_body("chat", "r", 0, "m", deltas, done)["usage"]
    assert "prompt_tokens_details" not in plain
    cached = completion_body("chat", "r", 0, "m", deltas, dict(done, cached_prompt_tokens=256))["usage"]
    assert cached == {"prompt_tokens": 300, "completion_tokens": 4, "total_tokens": 304,
                      "prompt_tokens_details": {"cached_tokens": 256}}
    assert usage_chunk("chat", "r", 0, "m", 300, 4, 0)["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert "prompt_tokens_details" not in usage_chunk("completion", "r", 0, "m", 300, 4)["usage"]


def test_vllm_finished_carries_the_engines_cached_prompt_tokens():
    last = _Out("is.", [13], finished=True, reason="stop")
    last.num_cached_tokens = 128
    adapter, _ = _vllm([_Out("Par", [11]), last])
    request = GenerationRequest("r1", "m", "completion", prompt="The capital")

    async def run():
        return [e async for e in adapter.generate(request)]

    events = asyncio.run(run())
    assert isinstance(events[0], TextDelta)
    assert events[-1] == Finished("stop", 3, 2, cached_prompt_tokens=128)


def test_the_stat_logger_sums_vllms_prefix_cache_counters_into_the_load_report():
    from vllm.v1.metrics.stats import PrefixCacheStats, SchedulerStats

    stats = vllm_engine.EngineStats()
    logger = vllm_engine._stat_logger_factory(stats)(vllm_config=None)

    def step(*records):
        prefix = PrefixCacheStats()
        for tokens, hits, preempted in records:
            prefix.record(num_tokens=tokens, num_hits=hits, preempted=preempted)
        logger.record(SchedulerStats(num_running_reqs=1, kv_cache_usage=0.2, prefix_cache_stats=prefix), None)

    step((1000, 0, False))
    step((1100, 896, False), (500, 384, True))  # a preempted request's second lookup: not counted
    logger.record(None, None)  # a step without scheduler stats changes nothing
    assert (stats.prefix_cache_queried_tokens, stats.prefix_cache_hit_tokens) == (2100, 896)

    adapter, _ = _vllm([])
    adapter._stats = stats
    load = adapter.load()
    assert (load.prefix_cache_queried_tokens, load.prefix_cache_hit_tokens) == (2100, 896)
