"""The plane on a real Ray Serve, every substrate emulated: the OpenAI API through the official
SDK, placement headers, spillover, sovereignty, every error status, and the actor's restart."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
import ray

from tests.integration.conftest import EU_KEY, GLOBAL_KEY

pytestmark = pytest.mark.integration

EU_SUBSTRATES = {"local-gpu-emulated", "sovereign-de-emulated"}
US_SUBSTRATES = {"groq-class-emulated", "provider-api-emulated"}
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8}


def _client(plane, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{plane.url}/v1", api_key=key, max_retries=0, timeout=30)


def _post(plane, key: str, body, *, path="/v1/chat/completions", headers=None, content=None) -> httpx.Response:
    h = {"Authorization": f"Bearer {key}", **(headers or {})}
    if content is not None:
        return httpx.post(plane.url + path, headers=h, content=content, timeout=30)
    return httpx.post(plane.url + path, headers=h, json=body, timeout=30)


def _assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


async def _hold(plane, key: str, n: int, max_tokens: int, body=None) -> list[httpx.Response]:
    """``n`` concurrent requests (each ``max_tokens`` long) through the plane."""
    async with httpx.AsyncClient(timeout=60) as client:
        payload = dict(body or CHAT, max_tokens=max_tokens)
        return await asyncio.gather(*[
            client.post(f"{plane.url}/v1/chat/completions", json=payload,
                        headers={"Authorization": f"Bearer {key}"})
            for _ in range(n)
        ])


# -- the OpenAI API through the official SDK ------------------------------------------------------

def test_sdk_chat_non_streamed(emulated_plane):
    raw = _client(emulated_plane, GLOBAL_KEY).chat.completions.with_raw_response.create(**CHAT)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "smollm2-135m-instruct"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.startswith("[emulated:local-gpu-emulated]")
    assert completion.usage.completion_tokens == 8
    assert raw.headers["x-inferplane-substrate"] == "local-gpu-emulated"
    assert raw.headers["x-inferplane-spillover"] == "false"
    assert raw.headers["x-inferplane-placement-id"].startswith("pl-")
    assert raw.headers["x-inferplane-emulated"] == "true"


def test_sdk_chat_streamed_with_usage(emulated_plane):
    stream = _client(emulated_plane, GLOBAL_KEY).chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[emulated:local-gpu-emulated]")
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_stream_ends_with_done(emulated_plane):
    with httpx.stream("POST", f"{emulated_plane.url}/v1/chat/completions", json=dict(CHAT, stream=True),
                      headers={"Authorization": f"Bearer {GLOBAL_KEY}"}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_sdk_completions_both_ways(emulated_plane):
    client = _client(emulated_plane, GLOBAL_KEY)
    done = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=5)
    assert done.object == "text_completion" and done.usage.completion_tokens == 5
    assert done.choices[0].text.startswith("[emulated:")
    streamed = list(client.completions.create(model="smollm2", prompt="Hello", max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in streamed).startswith("[emulated:")


def test_models_list_is_per_tenant(emulated_plane):
    everyone = {m.id for m in _client(emulated_plane, GLOBAL_KEY).models.list()}
    eu = {m.id for m in _client(emulated_plane, EU_KEY).models.list()}
    assert everyone == {"smollm2-135m-instruct", "llama-3.1-8b-instant"}
    # llama-3.1-8b-instant runs only in the US: the EU tenant cannot use it, so it is not listed.
    assert eu == {"smollm2-135m-instruct"}


# -- errors ------------------------------------------------------------------------------------

def test_bad_key_is_401(emulated_plane):
    _assert_openai_error(_post(emulated_plane, "sk-wrong", CHAT), 401, "invalid_api_key")
    r = httpx.post(emulated_plane.url + "/v1/chat/completions", json=CHAT, timeout=10)
    _assert_openai_error(r, 401)
    with pytest.raises(openai.AuthenticationError):
        _client(emulated_plane, "sk-wrong").models.list()


def test_unknown_model_is_404(emulated_plane):
    _assert_openai_error(_post(emulated_plane, GLOBAL_KEY, dict(CHAT, model="gpt-17")), 404, "unknown_model")


@pytest.mark.parametrize("body,content", [
    ({"model": "smollm2"}, None),                                     # no messages
    ({"model": "smollm2", "messages": []}, None),                    # empty messages
    ({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, None),
    ({"model": "smollm2", "messages": "hello"}, None),               # wrong type
    (None, b'{"model": "smollm2", "messages": [{"role": "user"'),    # truncated JSON
    (None, b"\xff\xfe not utf-8"),                                    # invalid UTF-8
])
def test_invalid_body_is_400(emulated_plane, body, content):
    _assert_openai_error(_post(emulated_plane, GLOBAL_KEY, body, content=content), 400)


def test_prompt_longer_than_every_context_window_is_400(emulated_plane):
    huge = "word " * 40_000  # ~50k tokens by the ingress estimate; the largest window is 8192
    body = dict(CHAT, messages=[{"role": "user", "content": huge}])
    err = _assert_openai_error(_post(emulated_plane, GLOBAL_KEY, body), 400, "context_window")
    assert "context window <" in err["message"]


def test_body_over_the_limit_is_413(emulated_plane):
    body = dict(CHAT, messages=[{"role": "user", "content": "x" * 1_100_000}])
    _assert_openai_error(_post(emulated_plane, GLOBAL_KEY, body), 413, "request_too_large")


def test_policy_forbids_is_403_with_the_rule(emulated_plane):
    err = _assert_openai_error(_post(emulated_plane, EU_KEY, dict(CHAT, model="llama-3.1-8b-instant")),
                               403, "jurisdiction")
    assert "jurisdiction not in {EU}" in err["message"]


def test_sla_class_header_cannot_widen_policy(emulated_plane):
    # global-app may not use `batch`; asking for it is refused, not honoured.
    r = _post(emulated_plane, GLOBAL_KEY, CHAT, headers={"x-inferplane-sla-class": "batch"})
    _assert_openai_error(r, 403, "sla_class_not_allowed")
    r = _post(emulated_plane, EU_KEY, CHAT, headers={"x-inferplane-sla-class": "platinum"})
    _assert_openai_error(r, 400, "unknown_sla_class")


def test_spoofed_placement_headers_change_nothing(emulated_plane):
    spoof = {"x-inferplane-substrate": "groq-class-emulated", "x-inferplane-spillover": "true",
             "x-inferplane-placement-id": "pl-forged", "x-inferplane-tenant": "global-app"}
    r = _post(emulated_plane, EU_KEY, CHAT, headers=spoof)
    assert r.status_code == 200
    assert r.headers["x-inferplane-substrate"] == "local-gpu-emulated"
    assert r.headers["x-inferplane-placement-id"] != "pl-forged"
    r = _post(emulated_plane, EU_KEY, dict(CHAT, model="llama-3.1-8b-instant"), headers=spoof)
    assert r.status_code == 403


# -- HTTP edges: one model, trailing slashes, stalled uploads, headers on refusals, readiness --------

def test_models_retrieve_by_name_and_alias_per_tenant(emulated_plane):
    client = _client(emulated_plane, GLOBAL_KEY)
    assert client.models.retrieve("llama-3.1-8b-instant").id == "llama-3.1-8b-instant"
    assert client.models.retrieve("smollm2").id == "smollm2"  # an alias of smollm2-135m-instruct
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")
    with pytest.raises(openai.NotFoundError):  # served, but never to this tenant (US only)
        _client(emulated_plane, EU_KEY).models.retrieve("llama-3.1-8b-instant")
    _assert_openai_error(httpx.get(emulated_plane.url + "/v1/models/smollm2", timeout=10), 401)


def test_trailing_slash_is_served_not_redirected(emulated_plane):
    r = _post(emulated_plane, GLOBAL_KEY, CHAT, path="/v1/chat/completions/")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    r = httpx.get(emulated_plane.url + "/v1/models/", headers={"Authorization": f"Bearer {GLOBAL_KEY}"}, timeout=10)
    assert r.status_code == 200 and r.json()["data"]


def test_a_stalled_upload_gets_408_and_an_audit_row(emulated_plane):
    """A client that announces a body and stops sending is answered 408 within the body-read
    timeout (2 s in this config), not held; its request is recorded."""
    import socket

    host, port = emulated_plane.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        t0 = time.monotonic()
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {GLOBAL_KEY}"
                     "\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"model\": ".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
        waited = time.monotonic() - t0
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"request_timeout" in body and b"x-inferplane-request-id" in head.lower()
    assert 1.5 < waited < 15, waited


def test_every_refusal_carries_its_placement_and_explain_finds_it(emulated_plane):
    """403, 404 and a substrate-level refusal name the request and the placement that refused it,
    and ``inferplane explain --audit DIR ID`` finds the row by either id."""
    from inferplane.cli.report import render_recorded_decision

    refused = {
        403: _post(emulated_plane, EU_KEY, dict(CHAT, model="llama-3.1-8b-instant")),
        404: _post(emulated_plane, GLOBAL_KEY, dict(CHAT, model="gpt-17")),
        400: _post(emulated_plane, GLOBAL_KEY, dict(CHAT, messages=[{"role": "user", "content": "word " * 40_000}])),
    }
    for status, r in refused.items():
        assert r.status_code == status, r.text
        assert r.headers["x-inferplane-request-id"].startswith("req-")
        assert r.headers["x-inferplane-placement-id"]
        assert r.headers["x-inferplane-error-code"] == r.json()["error"]["code"]
    unparsed = _post(emulated_plane, GLOBAL_KEY, {"model": "smollm2"})  # refused before placement
    assert unparsed.status_code == 400 and "x-inferplane-placement-id" not in unparsed.headers
    assert unparsed.headers["x-inferplane-request-id"].startswith("req-")
    deadline = time.monotonic() + 20
    while True:  # rows are flushed every 500 ms in this config
        try:
            by_placement = render_recorded_decision(emulated_plane.audit_dir, refused[403].headers["x-inferplane-placement-id"])
            by_request = render_recorded_decision(emulated_plane.audit_dir, unparsed.headers["x-inferplane-request-id"])
            break
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert "jurisdiction" in by_placement and "outcome  403" in by_placement
    assert "refused before placement" in by_request and "400" in by_request
    with pytest.raises(ValueError, match="does not exist"):
        render_recorded_decision(emulated_plane.audit_dir + "-missing", "pl-x")


def test_readiness_names_what_is_starting_and_liveness_is_separate(emulated_plane):
    ready = httpx.get(emulated_plane.url + "/healthz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["substrates_starting"] == [] and ready.json()["substrates_down"] == []
    assert httpx.get(emulated_plane.url + "/readyz", timeout=5).status_code == 200
    assert httpx.get(emulated_plane.url + "/livez", timeout=5).json()["status"] == "ok"


# -- spillover and sovereignty --------------------------------------------------------------------

def test_saturated_primary_spills_global_tenant_and_says_so(emulated_plane):
    # The primary takes 4 at once; 10 concurrent requests of 2 s each overflow it.
    responses = asyncio.run(_hold(emulated_plane, GLOBAL_KEY, 10, max_tokens=200))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    where = [r.headers["x-inferplane-substrate"] for r in responses]
    spilled = [r for r in responses if r.headers["x-inferplane-spillover"] == "true"]
    assert where.count("local-gpu-emulated") <= 4
    assert spilled, where
    for r in spilled:
        assert r.headers["x-inferplane-substrate"] != "local-gpu-emulated"
        assert r.headers["x-inferplane-spillover-reason"] == "primary_saturated"


def test_eu_tenant_never_leaves_the_eu_when_saturated(emulated_plane):
    # EU capacity is 4 (primary) + 2 (sovereign): 12 concurrent 2 s requests must not reach the US.
    # The 6 that find no EU slot wait in the hold queue (their 5 s deadline allows it) and are
    # served in the EU when the first 6 end; a refusal when no wait can meet the deadline is
    # tests/integration/test_arbitration_live.py's.
    responses = asyncio.run(_hold(emulated_plane, EU_KEY, 12, max_tokens=200))
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    assert {r.headers["x-inferplane-substrate"] for r in responses} <= EU_SUBSTRATES
    assert sum(1 for r in responses if int(r.headers["x-inferplane-held-ms"]) > 1000) >= 6


def test_eu_tenant_gets_503_not_a_us_answer_when_eu_is_down(emulated_plane):
    for name in EU_SUBSTRATES:
        emulated_plane.substrate(name).inject.remote(outage=True).result(timeout_s=10)
    try:
        r = _post(emulated_plane, EU_KEY, CHAT)
        err = _assert_openai_error(r, 503, "excluded")
        assert "retry-after" in r.headers
        assert "jurisdiction not in {EU}" in err["message"]
        # Meanwhile the global tenant is re-placed on a fallback, and the response says so.
        r = _post(emulated_plane, GLOBAL_KEY, CHAT)
        assert r.status_code == 200
        assert r.headers["x-inferplane-substrate"] in US_SUBSTRATES
        assert r.headers["x-inferplane-spillover"] == "true"
        assert int(r.headers["x-inferplane-attempts"]) >= 2
    finally:
        for name in EU_SUBSTRATES:
            emulated_plane.substrate(name).inject.remote(outage=False).result(timeout_s=10)


# -- the placement authority -------------------------------------------------------------------

def test_killing_the_placement_actor_does_not_stop_traffic(emulated_plane):
    """While the actor is down, ingress keeps placing on its last snapshot; once that snapshot's
    signals pass the staleness bound (3 s in this config) it fails closed with 503, never anything
    else; when Ray has restarted the actor, traffic is served again."""
    from deployments.placement_actor import NAMESPACE, actor_name

    bound_s = 3.0
    actor = ray.get_actor(actor_name(emulated_plane.app_name), namespace=NAMESPACE)
    started = ray.get(actor.started_at_s.remote())
    killed_at = time.monotonic()
    ray.kill(actor, no_restart=False)
    results = []  # (seconds after the kill, status, error code)
    back_at = None
    while time.monotonic() - killed_at < 30:
        r = _post(emulated_plane, GLOBAL_KEY, CHAT)
        code = None if r.status_code == 200 else r.json()["error"]["code"]
        results.append((time.monotonic() - killed_at, r.status_code, code))
        if back_at is None:
            try:
                if ray.get(actor.started_at_s.remote(), timeout=0.2) > started:
                    back_at = time.monotonic() - killed_at
            except Exception:
                pass
        elif time.monotonic() - killed_at > back_at + 3:
            break
        time.sleep(0.1)
    assert back_at is not None, "Ray did not restart the placement actor within 30 s"
    within_bound = [s for t, s, _ in results if t < bound_s - 0.5]
    assert within_bound and all(s == 200 for s in within_bound), results
    failures = [(t, s, c) for t, s, c in results if s != 200]
    assert all(s == 503 and c in {"stale_signals", "placement_unavailable"} for _, s, c in failures), failures
    assert all(t > bound_s - 0.5 for t, _, _ in failures), failures   # only once the bound had passed
    recovered = [s for t, s, _ in results if t > back_at + 2]
    assert recovered and all(s == 200 for s in recovered), results
    print(f"actor back after {back_at:.1f}s; {len(failures)} of {len(results)} requests failed closed")
    health = httpx.get(emulated_plane.url + "/healthz", timeout=5).json()
    assert health["status"] == "ok" and health["snapshot_age_s"] < 1.0


def test_tenant_over_budget_gets_402(emulated_plane):
    body = dict(CHAT, model="llama-3.1-8b-instant")
    first = _post(emulated_plane, "sk-inferplane-test-thrifty", body)
    assert first.status_code == 200  # this request's cost takes the tenant past its tiny budget
    deadline = time.monotonic() + 5
    while True:
        r = _post(emulated_plane, "sk-inferplane-test-thrifty", body)
        if r.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    err = _assert_openai_error(r, 402, "over_budget")
    assert "budget for this period" in err["message"]
