"""The OpenAI-compatible adapter against ``httpx.MockTransport``: streaming, rate-limit headers,
error mapping, and a planted API key that must never surface."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from inferplane.config.schema import OpenAICompatibleSettings
from substrate_adapters.base import (
    AdapterLoad,
    ChatTurn,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from substrate_adapters.errors import (
    SubstrateError,
    SubstrateProtocolError,
    SubstrateRateLimited,
    SubstrateRejectedRequest,
    SubstrateTimeout,
    SubstrateUnavailable,
)
from substrate_adapters.openai_compatible import (
    OpenAICompatibleAdapter,
    parse_duration_s,
    parse_retry_after_s,
)

KEY = "sk-planted-Zq81-secret-4f0c9b2a7d"
KEY_ENV = "TEST_PROVIDER_KEY"
PROMPT = "PROMPT-TEXT-must-stay-private"
T0 = 1_700_000_000.0

Handler = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> OpenAICompatibleSettings:
    fields: dict[str, Any] = {
        "base_url": "https://api.example.test/v1",
        "api_key_env": KEY_ENV,
        "connect_timeout_s": 2.5,
        "request_timeout_s": 30.0,
    }
    fields.update(overrides)
    return OpenAICompatibleSettings.model_validate(fields)


def make(
    handler: Handler, clock: FakeClock | None = None, **overrides: Any
) -> OpenAICompatibleAdapter:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAICompatibleAdapter(
        settings(**overrides), client=client, environ={KEY_ENV: KEY}, clock=clock or FakeClock()
    )


def chat(max_tokens: int = 16, **kw: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id="r1",
        model="provider/model-x",
        api="chat",
        messages=(ChatTurn("user", PROMPT),),
        max_tokens=max_tokens,
        **kw,
    )


def completion(max_tokens: int = 16) -> GenerationRequest:
    return GenerationRequest(
        request_id="r2",
        model="provider/model-x",
        api="completion",
        prompt=PROMPT,
        max_tokens=max_tokens,
    )


def sse(*chunks: Any, done: bool = True) -> bytes:
    body = "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


def chat_chunk(
    content: str | None = None, finish: str | None = None, role: str | None = None
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(prompt: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": "c1",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    }


def streamed(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, content=body, headers={"content-type": "text/event-stream", **(headers or {})}
        )

    return handler


def collect(adapter: OpenAICompatibleAdapter, request: GenerationRequest) -> list[GenerationEvent]:
    async def main() -> list[GenerationEvent]:
        return [event async for event in adapter.generate(request)]

    return asyncio.run(main())


def failure(
    adapter: OpenAICompatibleAdapter,
    request: GenerationRequest | None = None,
) -> tuple[SubstrateError, list[GenerationEvent]]:
    """The error the stream ends with, and the events before it."""
    received: list[GenerationEvent] = []

    async def main() -> None:
        async for event in adapter.generate(request or chat()):
            received.append(event)

    with pytest.raises(SubstrateError) as info:
        asyncio.run(main())
    return info.value, received


def assert_private(exc: BaseException) -> None:
    """Neither the key nor the prompt shows in the message, repr, args or formatted traceback."""
    rendered = [str(exc), repr(exc), *map(str, exc.args), "".join(traceback.format_exception(exc))]
    for text in rendered:
        assert KEY not in text
        assert KEY[:12] not in text
        assert PROMPT not in text


# ------------------------------------------------------------------------------------------------
# Streaming


def test_chat_streams_deltas_and_usage_and_sends_what_the_upstream_expects():
    seen: list[httpx.Request] = []
    body = sse(
        chat_chunk(role="assistant", content=""),
        chat_chunk("Hel"),
        chat_chunk("lo"),
        chat_chunk(finish="stop"),
        usage_chunk(12, 2),
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return streamed(body)(request)

    events = collect(make(handler), chat(max_tokens=5, temperature=0.2, stop=("END",), seed=3))
    assert events == [TextDelta("Hel"), TextDelta("lo"), Finished("stop", 12, 2)]

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://api.example.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    payload = json.loads(request.content)
    assert payload == {
        "model": "provider/model-x",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 5,
        "temperature": 0.2,
        "seed": 3,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert request.extensions["timeout"] == {
        "connect": 2.5,
        "read": 30.0,
        "write": 30.0,
        "pool": 30.0,
    }


def test_completion_streams_text_and_estimates_usage_when_none_is_sent():
    seen: list[httpx.Request] = []
    body = sse(
        {"choices": [{"index": 0, "text": "one", "finish_reason": None}]},
        {"choices": [{"index": 0, "text": " two", "finish_reason": None}]},
        {"choices": [{"index": 0, "text": " three", "finish_reason": "length"}]},
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return streamed(body)(request)

    events = collect(make(handler), completion(max_tokens=3))
    # no usage: completion tokens = deltas; prompt tokens = len(prompt) // 4 + 1
    assert events == [
        TextDelta("one"),
        TextDelta(" two"),
        TextDelta(" three"),
        Finished("length", len(PROMPT) // 4 + 1, 3),
    ]
    assert seen[0].url.path == "/v1/completions"
    payload = json.loads(seen[0].content)
    assert payload["prompt"] == PROMPT and "messages" not in payload
    assert payload["stream"] is True and payload["stream_options"] == {"include_usage": True}
    assert "temperature" not in payload and "stop" not in payload


def test_sse_comments_other_fields_multiline_data_and_an_unterminated_last_event():
    body = (
        b": keep-alive\n\nevent: message\nid: 7\ndata: "
        + json.dumps(chat_chunk("a")).encode()
        + b'\n\ndata: {"choices": [{"index": 0,\ndata: "delta": {"content": "b"}, '
        b'"finish_reason": "stop"}]}\n\ndata: [DONE]'
    )
    events = collect(make(streamed(body)), chat())
    assert events == [TextDelta("a"), TextDelta("b"), Finished("stop", len(PROMPT) // 4 + 1, 2)]


def test_finish_without_done_is_accepted_and_odd_finish_reasons_read_as_stop():
    body = sse(chat_chunk("x"), chat_chunk(finish="content_filter"), done=False)
    assert collect(make(streamed(body)), chat())[-1] == Finished("stop", len(PROMPT) // 4 + 1, 1)


def test_without_an_api_key_env_no_authorization_is_sent():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return streamed(sse(chat_chunk("x", finish="stop")))(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    adapter = OpenAICompatibleAdapter(settings(api_key_env=None), client=client, environ={})
    collect(adapter, chat())
    assert "authorization" not in seen[0].headers


# ------------------------------------------------------------------------------------------------
# Load: in flight, rate-limit headers, Retry-After


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("20", 20.0),
        ("0.5", 0.5),
        ("1h2m3.5s", 3723.5),
        ("2m30s", 150.0),
        ("  7s ", 7.0),
        ("abc", None),
        ("", None),
        ("-1", None),
        ("5x", None),
        ("1s2", None),
        ("s", None),
        ("nan", None),
    ],
)
def test_rate_limit_durations_parse(text, seconds):
    assert parse_duration_s(text) == (None if seconds is None else pytest.approx(seconds))


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after_s("120", T0) == 120.0
    assert parse_retry_after_s(email.utils.formatdate(T0 + 30, usegmt=True), T0) == pytest.approx(
        30.0
    )
    assert parse_retry_after_s(email.utils.formatdate(T0 - 30, usegmt=True), T0) == 0.0
    assert parse_retry_after_s("soon", T0) is None


def test_rate_limit_headers_feed_load_until_their_reset():
    clock = FakeClock()
    headers = {
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-remaining-tokens": "149000",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    adapter = make(streamed(sse(chat_chunk("x", finish="stop")), headers=headers), clock)
    assert adapter.load() == AdapterLoad(in_flight=0)
    collect(adapter, chat())
    assert adapter.load() == AdapterLoad(
        in_flight=0, rate_limit_requests_remaining=59.0, rate_limit_tokens_remaining=149000.0
    )
    clock.now = T0 + 1.0  # the request window has reset: its headroom is no longer known
    assert adapter.load().rate_limit_requests_remaining is None
    assert adapter.load().rate_limit_tokens_remaining == 149000.0
    clock.now = T0 + 360.0
    assert adapter.load().rate_limit_tokens_remaining is None


def test_in_flight_counts_open_streams():
    async def main() -> tuple[AdapterLoad, AdapterLoad]:
        adapter = make(streamed(sse(chat_chunk("a"), chat_chunk("b", finish="stop"))))
        one, two = adapter.generate(chat()), adapter.generate(chat())
        await anext(one)
        await anext(two)
        during = adapter.load()
        async for _ in one:
            pass
        await two.aclose()
        return during, adapter.load()

    during, after = asyncio.run(main())
    assert during.in_flight == 2
    assert after.in_flight == 0


def test_429_with_retry_after_raises_rate_limited_and_sets_retry_until():
    clock = FakeClock()
    body = json.dumps({"error": {"message": "Rate limit reached", "type": "rate_limit"}}).encode()
    adapter = make(
        streamed(body, 429, {"retry-after": "7", "x-ratelimit-remaining-requests": "0"}), clock
    )
    exc, received = failure(adapter)
    assert isinstance(exc, SubstrateRateLimited)
    assert exc.retry_after_s == 7.0 and exc.status == 429 and exc.retryable
    assert "Rate limit reached" in str(exc)
    assert received == []
    assert adapter.load().retry_after_until_s == T0 + 7.0
    assert adapter.load().rate_limit_requests_remaining == 0.0
    clock.now = T0 + 7.0
    assert adapter.load().retry_after_until_s is None  # passed


def test_429_retry_after_as_http_date_and_without_it_from_reset_headers():
    date = email.utils.formatdate(T0 + 42, usegmt=True)
    exc, _ = failure(make(streamed(b"{}", 429, {"retry-after": date})))
    assert isinstance(exc, SubstrateRateLimited) and exc.retry_after_s == pytest.approx(42.0)

    exc, _ = failure(
        make(
            streamed(
                b"{}", 429, {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "1m0s"}
            )
        )
    )
    assert isinstance(exc, SubstrateRateLimited) and exc.retry_after_s == 60.0

    exc, _ = failure(make(streamed(b"{}", 429)))
    assert isinstance(exc, SubstrateRateLimited) and exc.retry_after_s is None


def test_a_successful_response_clears_retry_after():
    clock = FakeClock()
    responses = iter(
        [streamed(b"{}", 503, {"retry-after": "30"}), streamed(sse(chat_chunk("x", finish="stop")))]
    )
    adapter = make(lambda request: next(responses)(request), clock)
    failure(adapter)
    assert adapter.load().retry_after_until_s == T0 + 30.0
    collect(adapter, chat())
    assert adapter.load().retry_after_until_s is None


# ------------------------------------------------------------------------------------------------
# Error mapping


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_unavailable_with_status(status):
    exc, received = failure(make(streamed(b"upstream exploded", status)))
    assert type(exc) is SubstrateUnavailable and exc.status == status and exc.retryable
    assert received == []


def test_400_is_rejected_with_the_upstream_message():
    body = json.dumps(
        {"error": {"message": "max_tokens is too large: 99999", "type": "invalid_request_error"}}
    )
    exc, _ = failure(make(streamed(body.encode(), 400)))
    assert type(exc) is SubstrateRejectedRequest and exc.status == 400 and not exc.retryable
    assert "max_tokens is too large: 99999" in str(exc)
    # The client reads a rejection's message: the upstream's reason, not its address.
    assert "example.test" not in str(exc) and "(400)" in str(exc)


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        # The request's own fault: any substrate would answer the same; never held against this one.
        (400, SubstrateRejectedRequest, False),
        (413, SubstrateRejectedRequest, False),
        (422, SubstrateRejectedRequest, False),
        # The substrate's fault (its key, quota or model): another substrate may serve the request.
        (401, SubstrateUnavailable, True),
        (402, SubstrateUnavailable, True),
        (403, SubstrateUnavailable, True),
        (404, SubstrateUnavailable, True),
        (408, SubstrateTimeout, True),
        (429, SubstrateRateLimited, True),
        (500, SubstrateUnavailable, True),
        (503, SubstrateUnavailable, True),
    ],
)
def test_only_the_requests_own_fault_is_a_rejection(status, kind, retryable):
    body = json.dumps({"error": {"message": "upstream says no"}}).encode()
    exc, received = failure(make(streamed(body, status)))
    assert type(exc) is kind and exc.retryable is retryable and exc.status == status
    assert "upstream says no" in str(exc) and received == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": "model not found"}', "model not found"),
        (b'{"message": "bad stop"}', "bad stop"),
        (b'{"detail": "unprocessable"}', "unprocessable"),
        (b"plain text\nproblem", "plain text problem"),
    ],
)
def test_4xx_messages_in_other_shapes(body, expected):
    for status in (400, 404):
        exc, _ = failure(make(streamed(body, status)))
        assert expected in str(exc), status


def test_the_upstream_message_is_cut_to_200_characters():
    body = json.dumps({"error": {"message": "E" * 5000}}).encode()
    exc, _ = failure(make(streamed(body, 422)))
    assert type(exc) is SubstrateRejectedRequest
    assert 150 < str(exc).count("E") <= 200


def test_the_upstream_message_is_cut_between_words():
    words = " ".join(f"word{i:02d}" for i in range(100))  # 699 characters: 200 falls inside a word
    body = json.dumps({"error": {"message": words}}).encode()
    exc, _ = failure(make(streamed(body, 400)))
    reason = str(exc).split(": ", 1)[1]
    assert reason.endswith("…") and len(reason) <= 200
    kept = reason[:-1].split(" ")
    assert kept == [f"word{i:02d}" for i in range(len(kept))]  # whole words, in order
    assert len(kept) > 20


def test_a_redirect_is_a_protocol_error():
    exc, _ = failure(make(streamed(b"", 302, {"location": "https://elsewhere.test/"})))
    assert type(exc) is SubstrateProtocolError and exc.status == 302


def raising(error: type[httpx.TransportError], message: str = "boom") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error(message, request=request)

    return handler


@pytest.mark.parametrize(
    ("error", "mapped"),
    [
        (httpx.ConnectError, SubstrateUnavailable),
        (httpx.RemoteProtocolError, SubstrateUnavailable),
        (httpx.ReadError, SubstrateUnavailable),
        (httpx.ConnectTimeout, SubstrateTimeout),
        (httpx.ReadTimeout, SubstrateTimeout),
        (httpx.PoolTimeout, SubstrateTimeout),
    ],
)
def test_transport_errors_map_to_unavailable_or_timeout(error, mapped):
    adapter = make(raising(error))
    exc, _ = failure(adapter)
    assert type(exc) is mapped and exc.retryable
    assert adapter.load().in_flight == 0


class ChunkStream(httpx.AsyncByteStream):
    """A response body sent chunk by chunk; raises ``fail`` after them if given; records aclose."""

    def __init__(
        self, chunks: list[bytes], fail: Exception | None = None, hang: bool = False
    ) -> None:
        self.chunks, self.fail, self.hang = chunks, fail, hang
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail is not None:
            raise self.fail
        if self.hang:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


def test_a_read_timeout_mid_stream_is_a_timeout_after_the_deltas_already_sent():
    stream = ChunkStream(
        [sse(chat_chunk("a"), done=False)], fail=httpx.ReadTimeout("read timed out")
    )
    exc, received = failure(make(lambda request: httpx.Response(200, stream=stream)))
    assert type(exc) is SubstrateTimeout
    assert received == [TextDelta("a")]
    assert stream.closed


@pytest.mark.parametrize(
    "body",
    [
        b"data: {not json\n\n",
        sse("[1, 2]"),
        sse({"choices": {"0": "x"}}),
        sse({"choices": [{"delta": "text"}]}),
        sse({"choices": [{"delta": {"content": 5}}]}),
        sse({"choices": [], "usage": {"prompt_tokens": "many"}}),
        sse(chat_chunk("a"), done=False),  # cut short: neither [DONE] nor a finish_reason
        b'{"id": "x", "choices": [{"message": {"content": "not streamed"}}]}',
    ],
)
def test_malformed_streams_are_protocol_errors(body):
    exc, _ = failure(make(streamed(body)))
    assert type(exc) is SubstrateProtocolError and exc.retryable


def test_an_error_event_mid_stream_is_unavailable():
    body = sse(chat_chunk("a"), {"error": {"message": "overloaded"}})
    exc, received = failure(make(streamed(body)))
    assert type(exc) is SubstrateUnavailable and "overloaded" in str(exc)
    assert received == [TextDelta("a")]


# ------------------------------------------------------------------------------------------------
# Secrets


@pytest.mark.parametrize(
    "handler",
    [
        streamed(
            json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}).encode(), 401
        ),
        streamed(
            json.dumps({"error": {"message": "x" * 185 + f" key={KEY} " + "y" * 50}}).encode(), 400
        ),
        streamed(f"Bearer {KEY} rejected".encode(), 403),
        streamed(json.dumps({"error": f"quota for {KEY}"}).encode(), 429),
        streamed(f"backend error for {KEY}".encode(), 500),
        streamed(sse({"error": {"message": f"auth {KEY} revoked"}})),
        raising(httpx.ConnectError, f"connect failed, Authorization: Bearer {KEY}"),
        raising(httpx.ReadTimeout, f"timed out with {KEY}"),
    ],
)
def test_the_api_key_never_reaches_an_exception(handler):
    exc, _ = failure(make(handler))
    assert_private(exc)
    assert exc.__cause__ is None  # the httpx error holds the request and its headers


def test_missing_key_variable_is_a_clear_error_naming_the_variable_only():
    environ = {"OTHER_KEY": "sk-other-value-123456"}
    with pytest.raises(ValueError) as info:
        OpenAICompatibleAdapter(settings(), client=httpx.AsyncClient(), environ=environ)
    message = str(info.value)
    assert KEY_ENV in message
    assert "sk-other-value-123456" not in message
    with pytest.raises(ValueError, match=KEY_ENV):
        OpenAICompatibleAdapter(settings(), client=httpx.AsyncClient(), environ={KEY_ENV: "  "})


# ------------------------------------------------------------------------------------------------
# Cancellation and closing


def test_closing_the_stream_closes_the_upstream_response():
    async def main() -> tuple[ChunkStream, int, int]:
        stream = ChunkStream([sse(chat_chunk("a"), done=False)], hang=True)
        adapter = make(lambda request: httpx.Response(200, stream=stream))
        events = adapter.generate(chat())
        assert await anext(events) == TextDelta("a")
        during = adapter.load().in_flight
        await events.aclose()
        return stream, during, adapter.load().in_flight

    stream, during, after = asyncio.run(main())
    assert stream.closed
    assert (during, after) == (1, 0)


def test_cancelling_the_consuming_task_closes_the_upstream_response():
    async def main() -> tuple[ChunkStream, OpenAICompatibleAdapter, list[GenerationEvent]]:
        stream = ChunkStream([sse(chat_chunk("a"), done=False)], hang=True)
        adapter = make(lambda request: httpx.Response(200, stream=stream))
        received: list[GenerationEvent] = []

        async def consume() -> None:
            async for event in adapter.generate(chat()):
                received.append(event)

        task = asyncio.ensure_future(consume())
        for _ in range(20):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream, adapter, received

    stream, adapter, received = asyncio.run(main())
    assert received == [TextDelta("a")]
    assert stream.closed
    assert adapter.load().in_flight == 0


def test_aclose_closes_only_a_client_the_adapter_created():
    async def main() -> tuple[bool, bool]:
        injected = httpx.AsyncClient(transport=httpx.MockTransport(streamed(b"")))
        await OpenAICompatibleAdapter(settings(), client=injected, environ={KEY_ENV: KEY}).aclose()
        own = OpenAICompatibleAdapter(settings(), environ={KEY_ENV: KEY})
        await own.aclose()
        return injected.is_closed, own._client.is_closed

    injected_closed, own_closed = asyncio.run(main())
    assert not injected_closed
    assert own_closed


# -- parameters: passed through, and logprobs / tool calls read back ------------------------------

def _capturing(body: bytes, seen: list[dict]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return handler


def test_every_chat_parameter_is_passed_through():
    from substrate_adapters.base import FunctionTool, ResponseFormat, ToolCall

    seen: list[dict] = []
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = dataclasses.replace(chat(
        8, logprobs=3, logit_bias=((42, -100.0),), presence_penalty=0.5, frequency_penalty=-0.5, seed=7,
        response_format=ResponseFormat("json_schema", "city", json.dumps(schema), True),
        tools=(FunctionTool("weather", "Weather", json.dumps(schema)),), tool_choice="weather",
        parallel_tool_calls=False), messages=(ChatTurn("user", "hi"), ChatTurn("assistant", "", tool_calls=(ToolCall("c1", "weather", "{}"),)),
                  ChatTurn("tool", "sunny", tool_call_id="c1")))
    collect(make(_capturing(sse(chat_chunk("x", finish="stop")), seen)), request)
    (body,) = seen
    assert {k: body[k] for k in ("logprobs", "top_logprobs", "logit_bias", "presence_penalty", "frequency_penalty",
                                 "seed", "parallel_tool_calls")} == {
        "logprobs": True, "top_logprobs": 3, "logit_bias": {"42": -100.0}, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "seed": 7, "parallel_tool_calls": False}
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "city", "schema": schema, "strict": True}}
    assert body["tools"] == [{"type": "function", "function": {"name": "weather", "description": "Weather",
                                                               "parameters": schema}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["messages"][1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]
    assert body["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}


def test_every_completion_parameter_is_passed_through():
    seen: list[dict] = []
    request = GenerationRequest(request_id="r", model="m", api="completion", prompt_token_ids=(1, 2, 3),
                                logprobs=0, echo=True, suffix="!", max_tokens=4)
    chunk = {"id": "c", "choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]}
    collect(make(_capturing(sse(chunk), seen)), request)
    (body,) = seen
    assert (body["prompt"], body["logprobs"], body["echo"], body["suffix"]) == ([1, 2, 3], 0, True, "!")
    assert "top_logprobs" not in body and "tools" not in body and "response_format" not in body


def test_plain_requests_send_no_parameter_they_did_not_set():
    seen: list[dict] = []
    collect(make(_capturing(sse(chat_chunk("x", finish="stop")), seen)), chat())
    assert set(seen[0]) == {"model", "messages", "max_tokens", "stream", "stream_options"}


def test_chat_logprobs_and_tool_call_fragments_are_read_from_the_stream():
    from substrate_adapters.base import TokenLogprob, ToolCall, TopLogprob

    lp = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                       "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}]}
    with_logprobs = {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": lp,
                                             "finish_reason": None}]}
    fragments = [
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_9", "type": "function", "function": {"name": "weather", "arguments": ""}}]}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"city": '}}]}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '"Paris"}'}}]}, "finish_reason": "tool_calls"}]},
    ]
    events = collect(make(streamed(sse(with_logprobs, *fragments, usage_chunk(5, 9)))), chat())
    first, calls, done = events
    assert first == TextDelta("Hi", 1, logprobs=(TokenLogprob("Hi", -0.5, (72, 105), (TopLogprob("Hi", -0.5, (72, 105)),)),))
    assert calls.tool_calls == (ToolCall("call_9", "weather", '{"city": "Paris"}'),)
    assert done == Finished("tool_calls", 5, 9)


def test_completion_logprobs_are_read_from_the_stream():
    chunk = {"id": "c", "choices": [{"index": 0, "text": " Paris", "finish_reason": "length", "logprobs": {
        "tokens": [" Paris"], "token_logprobs": [-0.25], "top_logprobs": [{" Paris": -0.25, " Lyon": -3.0}],
        "text_offset": [24]}}]}
    delta, _ = collect(make(streamed(sse(chunk))), completion())
    (entry,) = delta.logprobs
    assert (entry.token, entry.logprob, [t.token for t in entry.top_logprobs]) == (" Paris", -0.25, [" Paris", " Lyon"])


def test_a_provider_config_can_name_parameters_it_does_not_take():
    assert settings(unsupported_parameters=["logit_bias", "tools"]).unsupported_parameters == ["logit_bias", "tools"]
    with pytest.raises(Exception):
        settings(unsupported_parameters=["temperature_x"])
