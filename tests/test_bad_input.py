"""Bad input at unit level, no Ray: whatever bytes or JSON a client sends, parsing a request body
either succeeds or fails with a pydantic ``ValidationError`` that the ingress turns into an
OpenAI-style 400, and the token estimates of any body that parses are positive integers.
(The same cases against a running plane are in tests/chaos.)

Sampling values an engine would refuse (vLLM's bounds, and OpenAI's where tighter) are refused
here, as a 400 naming the parameter."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from inferplane.api.errors import ApiError
from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest
from inferplane.api.tokens import estimate_chat_tokens, estimate_completion_tokens
from substrate_adapters.base import ChatTurn, Finished, GenerationRequest
from substrate_adapters import vllm_engine
from substrate_adapters.errors import SubstrateError, SubstrateRejectedRequest, SubstrateUnavailable

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


# -- the ingress's sampling checks: the bounds of the OpenAI API and of vLLM -----------------------

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

REFUSED = [
    # (field, value or raw JSON literal, what the message says)
    ("stop", [""], "stop: a stop sequence cannot be an empty string"),
    ("stop", "", "stop: a stop sequence cannot be an empty string"),
    ("stop", ["\n", ""], "stop: a stop sequence cannot be an empty string"),
    ("stop", ["a", "b", "c", "d", "e"], "stop: at most 4 stop sequences are allowed, got 5"),
    ("top_p", 0, "top_p: Input should be greater than 0"),
    ("top_p", -0.5, "top_p: Input should be greater than 0"),
    ("top_p", 1.0001, "top_p: Input should be less than or equal to 1"),
    ("top_p", "NaN", "top_p: Input should be a finite number"),
    ("temperature", 2.01, "temperature: Input should be less than or equal to 2"),
    ("temperature", -0.01, "temperature: Input should be greater than or equal to 0"),
    ("temperature", "Infinity", "temperature: Input should be a finite number"),
    ("presence_penalty", 2.5, "presence_penalty: Input should be less than or equal to 2"),
    ("presence_penalty", -2.5, "presence_penalty: Input should be greater than or equal to -2"),
    ("frequency_penalty", 3, "frequency_penalty: Input should be less than or equal to 2"),
    ("frequency_penalty", "NaN", "frequency_penalty: Input should be a finite number"),
    ("seed", 2**70, f"seed: Input should be less than or equal to {INT64_MAX}"),
    ("seed", INT64_MAX + 1, f"seed: Input should be less than or equal to {INT64_MAX}"),
    ("seed", INT64_MIN - 1, f"seed: Input should be greater than or equal to {INT64_MIN}"),
    ("max_tokens", 0, "max_tokens: Input should be greater than or equal to 1"),
    ("n", 2, "n: Input should be less than or equal to 1"),
]


def _raw(body: dict, field: str, value) -> str:
    """``body`` with ``field`` set; "NaN" and "Infinity" go in as the bare literals clients send."""
    text = json.dumps({**body, field: "__VALUE__"})
    literal = value if value in ("NaN", "Infinity") else json.dumps(value)
    return text.replace('"__VALUE__"', literal)


def _refusal(schema, raw: str) -> ApiError:
    with pytest.raises(ValidationError) as info:
        schema.model_validate_json(raw)
    return _ingress_error(info.value)


@pytest.mark.parametrize("schema,body", [(ChatCompletionRequest, CHAT), (CompletionRequest, COMPLETION)],
                         ids=["chat", "completion"])
@pytest.mark.parametrize("field,value,message", REFUSED, ids=[f"{f}={v!r}" for f, v, _ in REFUSED])
def test_a_sampling_value_an_engine_refuses_is_an_openai_400_naming_the_parameter(schema, body, field, value,
                                                                                 message):
    err = _refusal(schema, _raw(body, field, value))
    assert (err.status, err.code, err.param, err.message) == (400, "invalid_request", field, message)
    assert err.body() == {"error": {"message": message, "type": "invalid_request_error", "param": field,
                                    "code": "invalid_request"}}


def test_max_completion_tokens_below_one_is_refused():
    err = _refusal(ChatCompletionRequest, _raw(CHAT, "max_completion_tokens", 0))
    assert (err.status, err.param) == (400, "max_completion_tokens")


EDGES = [
    {"top_p": 1}, {"top_p": 1e-9}, {"temperature": 0}, {"temperature": 2}, {"seed": INT64_MAX},
    {"seed": INT64_MIN}, {"seed": -1}, {"presence_penalty": -2, "frequency_penalty": 2},
    {"stop": ["a", "b", "c", "d"]}, {"stop": "\n"}, {"stop": []}, {"stop": None}, {"max_tokens": 1},
]


@pytest.mark.parametrize("schema,body", [(ChatCompletionRequest, CHAT), (CompletionRequest, COMPLETION)],
                         ids=["chat", "completion"])
@pytest.mark.parametrize("values", EDGES, ids=[json.dumps(v) for v in EDGES])
def test_valid_edge_values_pass(schema, body, values):
    parsed = schema.model_validate_json(json.dumps({**body, **values}))
    for field, value in values.items():
        got = getattr(parsed, field)
        assert got == ([value] if field == "stop" and isinstance(value, str) else value)
