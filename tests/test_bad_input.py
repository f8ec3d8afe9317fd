"""Bad input at unit level, no Ray: whatever bytes or JSON a client sends, parsing a request body
either succeeds or fails with a pydantic ``ValidationError`` that the ingress turns into an
OpenAI-style 400, and the token estimates of any body that parses are positive integers.
(The same cases against a running plane are in tests/chaos.)"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from inferplane.api.errors import ApiError
from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest
from inferplane.api.tokens import estimate_chat_tokens, estimate_completion_tokens

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "root", ""])
messages = st.lists(st.fixed_dictionaries({"role": roles}, optional={
    "content": st.none() | st.text(max_size=50) | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url"])}, optional={"text": st.none() | st.text(max_size=20)}),
        max_size=3) | json_values,
    "name": st.text(max_size=5) | st.integers()}), max_size=5)
chat_bodies = st.fixed_dictionaries({}, optional={
    "model": st.text(max_size=10) | st.integers() | st.none(),
    "messages": messages | json_values,
    "max_tokens": st.integers(min_value=-10, max_value=2**70) | st.none() | st.text(max_size=3),
    "max_completion_tokens": st.integers(min_value=-10, max_value=10**7) | st.floats(allow_nan=False),
    "stream": st.booleans() | st.text(max_size=5) | st.integers(),
    "stream_options": json_values,
    "temperature": st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=3),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=3), max_size=6) | st.integers(),
    "n": st.integers(min_value=-2, max_value=4),
    "extra": json_values,
})


def _ingress_error(exc: ValidationError) -> ApiError:
    from deployments.ingress import _first_validation_error

    return _first_validation_error(exc)


def _assert_openai_400(exc: ValidationError) -> None:
    err = _ingress_error(exc)
    assert err.status == 400
    body = err.body()["error"]
    assert isinstance(body["message"], str) and body["message"]
    assert body["type"] == "invalid_request_error" and body["code"] in ("invalid_json", "invalid_request")
    json.dumps(err.body())  # serialisable as the response


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_fail_as_an_openai_400(raw):
    for schema in (ChatCompletionRequest, CompletionRequest):
        try:
            schema.model_validate_json(raw)
        except ValidationError as exc:
            _assert_openai_400(exc)


@given(chat_bodies)
def test_any_chat_body_parses_with_a_positive_estimate_or_fails_as_a_400(body):
    try:
        parsed = ChatCompletionRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        _assert_openai_400(exc)
        return
    assert estimate_chat_tokens(parsed) >= 1
    assert parsed.max_tokens is None or parsed.max_tokens >= 1


@given(st.fixed_dictionaries({"model": st.text(min_size=1, max_size=5)}, optional={
    "prompt": st.text(max_size=50) | st.lists(st.text(max_size=10), max_size=3) | json_values,
    "max_tokens": st.integers(min_value=-5, max_value=2**40)}))
def test_any_completion_body_parses_with_a_positive_estimate_or_fails_as_a_400(body):
    try:
        parsed = CompletionRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        _assert_openai_400(exc)
        return
    assert estimate_completion_tokens(parsed) >= 1


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,                       # nesting far past any recursion limit
    b'{"model": "m", "messages": [' + b'{"role": "user", "content": "x"},' * 50_000 + b"]}",  # trailing comma
    b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',                  # lone surrogate
    b'{"model": "m", "model": "n", "messages": [{"role": "user", "content": "x"}]}',         # duplicate key
    b'\xef\xbb\xbf{"model": "m", "messages": [{"role": "user", "content": "x"}]}',           # UTF-8 BOM
])
def test_pathological_json_never_raises_anything_but_a_validation_error(raw):
    try:
        body = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        _assert_openai_400(exc)
    else:
        assert estimate_chat_tokens(body) >= 1
