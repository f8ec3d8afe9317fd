"""Bad input, written by hand: every malformed, oversized or hostile request gets an OpenAI-style
4xx (never a 5xx, never a crash), and a client that walks away mid-stream frees its substrate
slot. Each case also leaves exactly one audit row."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.chaos.conftest import until
from tests.chaos.traffic import KEYS

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

GLOBAL = KEYS["global-app"]
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
PRIMARY = "local-gpu-emulated"


def _post(plane, *, json_body=None, content=None, path="/v1/chat/completions", headers=None) -> httpx.Response:
    h = {"Authorization": f"Bearer {GLOBAL}", "Content-Type": "application/json", **(headers or {})}
    if content is not None:
        return httpx.post(plane.url + path, content=content, headers=h, timeout=60)
    return httpx.post(plane.url + path, json=json_body, headers=h, timeout=60)


def assert_openai_error(r: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    body = r.json()
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and "code" in err and "param" in err
    if code is not None:
        assert err["code"] == code, err
    return err


CASES = [
    # (id, raw body or JSON, status, code)
    ("malformed-json", b'{"model": "smollm2", messages: [}', 400, "invalid_json"),
    ("truncated-json", b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"', 400, "invalid_json"),
    ("empty-body", b"", 400, "invalid_json"),
    ("json-array", b"[1, 2, 3]", 400, None),
    ("json-null", b"null", 400, None),
    ("invalid-utf8", b'{"model": "smollm2", "messages": [{"role": "user", "content": "\xff\xfe\xfa"}]}', 400, None),
    ("nul-bytes", b'{"model": "smol\x00lm2", "messages": []}', 400, None),
    ("deeply-nested", b'{"model": "smollm2", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None),
    ("messages-not-a-list", {"model": "smollm2", "messages": "hello"}, 400, "invalid_request"),
    ("message-not-an-object", {"model": "smollm2", "messages": ["hello"]}, 400, "invalid_request"),
    ("unknown-role", {"model": "smollm2", "messages": [{"role": "root", "content": "hi"}]}, 400, "invalid_request"),
    ("model-is-a-number", {"model": 42, "messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request"),
    ("model-empty", {"model": "", "messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request"),
    ("model-missing", {"messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request"),
    ("max-tokens-string", dict(CHAT, max_tokens="ten"), 400, "invalid_request"),
    ("max-tokens-float", dict(CHAT, max_tokens=4.5), 400, "invalid_request"),
    ("max-tokens-negative", dict(CHAT, max_tokens=-1), 400, "invalid_request"),
    ("max-tokens-zero", dict(CHAT, max_tokens=0), 400, "invalid_request"),
    ("max-tokens-huge", dict(CHAT, max_tokens=10**30), 400, "invalid_request"),
    ("max-tokens-over-every-window", dict(CHAT, max_tokens=1_000_000), 400, "context_window"),
    ("max-completion-tokens-negative", dict(CHAT, max_tokens=None, max_completion_tokens=-5), 400, "invalid_request"),
    ("temperature-string", dict(CHAT, temperature="hot"), 400, "invalid_request"),
    ("temperature-out-of-range", dict(CHAT, temperature=7), 400, "invalid_request"),
    ("top-p-nan", b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "top_p": NaN}', 400, None),
    ("stream-not-a-boolean", dict(CHAT, stream="maybe"), 400, "invalid_request"),
    ("n-greater-than-one", dict(CHAT, n=5), 400, "invalid_request"),
    ("too-many-stops", dict(CHAT, stop=["a", "b", "c", "d", "e"]), 400, "invalid_request"),
    ("unknown-model", dict(CHAT, model="gpt-17"), 404, "unknown_model"),
]


@pytest.mark.parametrize("case_id,body,status,code", CASES, ids=[c[0] for c in CASES])
def test_bad_chat_body_is_an_openai_4xx(chaos_plane, case_id, body, status, code):
    if isinstance(body, bytes):
        r = _post(chaos_plane, content=body)
    else:
        r = _post(chaos_plane, json_body=body)
    assert_openai_error(r, status, code)


@pytest.mark.parametrize("body,code", [
    ({"model": "smollm2"}, "invalid_request"),
    ({"model": "smollm2", "prompt": 17}, "invalid_request"),
    ({"model": "smollm2", "prompt": ["a", "b"]}, "invalid_request"),     # batches of prompts: not served
    ({"model": "smollm2", "prompt": [[1, 2], [3]]}, "invalid_request"),  # a batch of token-id prompts
    ({"model": "smollm2", "prompt": "hi", "max_tokens": -3}, "invalid_request"),
    ({"model": "smollm2", "prompt": "word " * 40_000}, "context_window"),
], ids=["no-prompt", "prompt-number", "prompt-batch", "prompt-token-id-batch", "negative-max-tokens", "too-long"])
def test_bad_completion_body_is_an_openai_4xx(chaos_plane, body, code):
    assert_openai_error(_post(chaos_plane, json_body=body, path="/v1/completions"), 400, code)


def test_body_over_the_limit_is_413_without_reading_it_all(chaos_plane):
    # 1 MiB is the configured limit (ingress.max_body_bytes).
    big = dict(CHAT, messages=[{"role": "user", "content": "x" * 1_100_000}])
    assert_openai_error(_post(chaos_plane, json_body=big), 413, "request_too_large")
    # 32 MiB: refused just the same, and the plane still answers afterwards.
    huge = b'{"model": "smollm2", "messages": [{"role": "user", "content": "' + b"y" * (32 << 20) + b'"}]}'
    assert_openai_error(_post(chaos_plane, content=huge), 413, "request_too_large")
    assert _post(chaos_plane, json_body=CHAT).status_code == 200


def test_prompt_longer_than_every_context_window_is_400(chaos_plane):
    body = dict(CHAT, messages=[{"role": "user", "content": "word " * 40_000}])  # ~50k tokens; max window 8192
    err = assert_openai_error(_post(chaos_plane, json_body=body), 400, "context_window")
    assert "context window" in err["message"]


def test_unknown_fields_are_ignored(chaos_plane):
    body = dict(CHAT, frobnicate=True, metadata={"a": "b"}, user="u-1",
                messages=[{"role": "user", "content": "hi", "weird": [1, {"x": None}]}])
    r = _post(chaos_plane, json_body=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def test_parameters_no_substrate_honours_are_refused_by_name_not_dropped(chaos_plane):
    """Every substrate of this plane is emulated, and emulations honour neither tools, nor a
    response format, nor logit_bias: the request is refused before dispatch, naming one of them."""
    body = dict(CHAT, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
                response_format={"type": "json_object"}, logit_bias={"50256": -100})
    err = assert_openai_error(_post(chaos_plane, json_body=body), 400, "unsupported_parameter")
    assert err["param"] in {"tools", "response_format", "logit_bias"}, err


def test_very_many_messages(chaos_plane):
    few_enough = dict(CHAT, messages=[{"role": "user", "content": "hi"}] * 500)       # ~2.5k tokens: fits
    r = _post(chaos_plane, json_body=few_enough)
    assert r.status_code == 200, r.text
    too_many = dict(CHAT, messages=[{"role": "user", "content": "hi"}] * 20_000)     # ~100k tokens, ~0.6 MB
    assert_openai_error(_post(chaos_plane, json_body=too_many), 400, "context_window")


def test_wrong_method_and_unknown_path_are_openai_errors(chaos_plane):
    r = httpx.get(chaos_plane.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {GLOBAL}"}, timeout=30)
    assert_openai_error(r, 405)
    r = httpx.get(chaos_plane.url + "/v1/no-such-thing", headers={"Authorization": f"Bearer {GLOBAL}"}, timeout=30)
    assert_openai_error(r, 404)


def test_bad_content_type_and_auth_headers(chaos_plane):
    # A JSON body sent as text/plain is still parsed by its content; form data is not JSON.
    assert_openai_error(_post(chaos_plane, content=b"model=smollm2&messages=hi",
                              headers={"Content-Type": "application/x-www-form-urlencoded"}), 400, "invalid_json")
    for auth in ("Bearer", "Basic Zm9vOmJhcg==", "bearer sk-wrong", "Bearer " + "A" * 10_000,
                 f"Bearer {GLOBAL} extra", "Bearer \u00e9\u00e8"):
        r = httpx.post(chaos_plane.url + "/v1/chat/completions", json=CHAT,
                       headers={"Authorization": auth.encode("utf-8")}, timeout=30)
        assert_openai_error(r, 401, "invalid_api_key")


def test_client_disconnecting_mid_stream_frees_the_substrate_slot(chaos_plane):
    """Expectation: a client that goes away mid-stream cancels the substrate request: the
    emulated substrate's in-flight count (its own report, as the placement actor's status shows
    it) returns to 0 long before the 20 s the stream would have taken, and the request's audit
    row says the client disconnected."""
    plane = chaos_plane
    handle = plane.substrate(PRIMARY)

    def primary_in_flight() -> int:
        subs = {s["name"]: s for s in plane.status()["substrates"]}
        return sum(r["in_flight"] for r in subs[PRIMARY]["replicas"])

    assert until(lambda: primary_in_flight() == 0, 20.0)
    body = json.dumps(dict(CHAT, max_tokens=2000, stream=True)).encode()  # 20 s at 100 tok/s
    host, port = plane.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                     b"Authorization: Bearer " + GLOBAL.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 3:  # the status line and a few chunks: the stream has started
            got += sock.recv(65536)
        placement_id = next(line.split(b":", 1)[1].strip().decode() for line in got.split(b"\r\n")
                            if line.lower().startswith(b"x-inferplane-placement-id"))
        assert b"x-inferplane-substrate: " + PRIMARY.encode() in got
        assert handle.load.remote().result(timeout_s=10)["in_flight"] == 1
    finally:
        sock.close()
    closed_at = time.monotonic()
    assert until(lambda: handle.load.remote().result(timeout_s=10)["in_flight"] == 0, 15.0), \
        "the substrate kept generating for a client that had gone"
    freed_after = time.monotonic() - closed_at
    assert until(lambda: primary_in_flight() == 0, 10.0), "the actor still sees the slot taken"
    row = until(lambda: next((r for r in plane.rows() if r["placement_id"] == placement_id), None), 10.0)
    assert row is not None and row["status_code"] != 200 and row["error_code"] == "client_disconnected", row
    print(f"substrate slot freed {freed_after:.2f}s after the client went away")
