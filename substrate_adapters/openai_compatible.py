"""An adapter for any OpenAI-compatible HTTP API: providers, Groq- and Cerebras-class endpoints,
on-prem servers.

Every request is streamed upstream (``"stream": true`` with ``stream_options.include_usage``) to
``{base_url}/chat/completions`` or ``{base_url}/completions``; the server-sent events are turned
into ``TextDelta`` events and one ``Finished``. When the upstream sends no usage, completion tokens
are the number of content deltas and prompt tokens an estimate (``len(text) // 4 + 1`` per message).

Every parameter of the request is passed through as the OpenAI API names it (``logprobs``,
``top_logprobs``, ``logit_bias``, the penalties, ``response_format``, ``tools``, ``tool_choice``,
``parallel_tool_calls``, ``echo``, ``suffix``, a token-id ``prompt``); a provider that does not take
one says so in its config (``unsupported_parameters``) and placement sends such requests
elsewhere. From the stream, each choice's ``logprobs`` (chat's ``content`` list, or completions'
``tokens``/``token_logprobs``/``top_logprobs``) ride on its delta; ``tool_calls`` fragments are
joined by index and the complete calls come in one delta before ``Finished("tool_calls", ...)``.

Errors, all ``substrate_adapters.errors``:

    connect error, dropped connection, 5xx        SubstrateUnavailable (``status`` set for 5xx)
    connect / read / write / pool timeout, 408    SubstrateTimeout
    429                                           SubstrateRateLimited(retry_after_s)
    400, 413, 422: the request's own fault        SubstrateRejectedRequest: not retried, never
                                                  counted against the substrate, the upstream's
                                                  reason passed to the client
    other 4xx (401, 403, 404, ...): the           SubstrateUnavailable (``status`` set): the
    substrate's key, quota or model               substrate cannot serve anyone's request
    3xx, undecodable body, malformed SSE or JSON  SubstrateProtocolError

An upstream's reason is cut to ``errors.MESSAGE_LIMIT`` characters between words. A rejection's
message, which the client sees, names the upstream's status but not its address.

Rate-limit headers on every response feed ``load()``: ``x-ratelimit-remaining-requests`` and
``-tokens`` (each forgotten when its ``x-ratelimit-reset-*`` time has passed: after the reset the
adapter no longer knows), and ``Retry-After`` (seconds or an HTTP date) as
``retry_after_until_s`` on the injected clock, cleared by the next successful response.

The API key is read once from the environment variable the config names, sent only as
``Authorization: Bearer``, and redacted from anything built from upstream text. Exception
messages carry neither the key nor prompt or completion text. Nothing here logs.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from inferplane.config.schema import OpenAICompatibleSettings
from substrate_adapters.base import (
    AdapterLoad,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    ToolCall,
    TopLogprob,
)
from substrate_adapters.errors import (
    SubstrateProtocolError,
    SubstrateRateLimited,
    SubstrateRejectedRequest,
    SubstrateTimeout,
    SubstrateUnavailable,
    reason,
)

REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})
"""Upstream statuses that say the request itself is invalid: whichever substrate got it, the
answer would be the same, so it is neither retried nor held against this substrate."""
ERROR_BODY_LIMIT = 16 * 1024
"""Bytes of an error response read to find its message."""
REDACTED = "[redacted]"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_DURATION_UNIT_S = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
}


def parse_duration_s(value: str) -> float | None:
    """Seconds in a rate-limit duration: plain seconds (``"20"``, ``"0.5"``) or Go-style
    (``"1s"``, ``"6m0s"``, ``"250ms"``, ``"1h2m3.5s"``). None when it is neither, or negative."""
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                return None
            seconds += float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]
            pos = match.end()
        if pos != len(text):
            return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def parse_retry_after_s(value: str, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds, a duration as above, or an
    HTTP date (``now_s`` is the wall clock, seconds since the epoch). Never negative."""
    seconds = parse_duration_s(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_s)


def _estimate_prompt_tokens(request: GenerationRequest) -> int:
    """For a provider that reports no usage: the plane's count, else characters / 4."""
    if request.counted_prompt_tokens is not None:
        return request.counted_prompt_tokens
    if request.api == "chat":
        return sum(len(turn.content) // 4 + 1 for turn in request.messages)
    return len(request.prompt or "") // 4 + 1


def _finish_reason(upstream: str | None) -> str:
    """Our contract knows ``length`` (cut at max_tokens), ``tool_calls`` and ``stop`` (everything
    else)."""
    if upstream in ("length", "max_tokens"):
        return "length"
    return "tool_calls" if upstream in ("tool_calls", "function_call") else "stop"


def _bytes(value: object, token: str) -> tuple[int, ...]:
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return tuple(value)
    return tuple(token.encode())


def _chat_logprobs(entries: object) -> tuple[TokenLogprob, ...]:
    """OpenAI's chat ``logprobs.content`` entries."""
    out = []
    for e in entries if isinstance(entries, list) else ():
        if not isinstance(e, dict) or not isinstance(e.get("token"), str):
            continue
        tops = tuple(TopLogprob(t["token"], float(t["logprob"]), _bytes(t.get("bytes"), t["token"]))
                     for t in e.get("top_logprobs") or () if isinstance(t, dict) and isinstance(t.get("token"), str)
                     and isinstance(t.get("logprob"), (int, float)))
        lp = e.get("logprob")
        out.append(TokenLogprob(e["token"], float(lp) if isinstance(lp, (int, float)) else None,
                                _bytes(e.get("bytes"), e["token"]), tops))
    return tuple(out)


def _completion_logprobs(obj: dict) -> tuple[TokenLogprob, ...]:
    """OpenAI's completions ``logprobs`` (parallel lists)."""
    tokens = obj.get("tokens") or []
    values = obj.get("token_logprobs") or [None] * len(tokens)
    tops = obj.get("top_logprobs") or [None] * len(tokens)
    out = []
    for token, lp, top in zip(tokens, values, tops):
        if not isinstance(token, str):
            continue
        alternatives = tuple(TopLogprob(t, float(v), tuple(t.encode())) for t, v in (top or {}).items()
                             if isinstance(v, (int, float)))
        out.append(TokenLogprob(token, float(lp) if isinstance(lp, (int, float)) else None, tuple(token.encode()),
                                alternatives))
    return tuple(out)


class _SseEvents:
    """Server-sent events, line by line: ``feed`` returns an event's data once a blank line ends
    it. Only ``data`` fields matter here; comments, ``event``, ``id`` and ``retry`` are skipped."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if line == "":
            return self.flush()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


class _StreamState:
    """What one response stream has said so far, besides its text."""

    __slots__ = ("calls", "deltas", "done", "finish_reason", "usage")

    def __init__(self) -> None:
        self.deltas = 0
        self.finish_reason: str | None = None
        self.usage: tuple[int, int, int | None] | None = None
        """(prompt, completion, cached prompt tokens or None) as the upstream reported them."""
        self.done = False
        self.calls: dict[int, list[str]] = {}
        """Tool calls by index: [id, name, arguments so far]."""

    def add_call_fragment(self, fragment: dict) -> None:
        index = fragment.get("index", len(self.calls))
        call = self.calls.setdefault(index if isinstance(index, int) else len(self.calls), ["", "", ""])
        fn = fragment.get("function") or {}
        if isinstance(fragment.get("id"), str):
            call[0] = fragment["id"]
        if isinstance(fn, dict):
            if isinstance(fn.get("name"), str):
                call[1] += fn["name"]
            if isinstance(fn.get("arguments"), str):
                call[2] += fn["arguments"]

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(c[0] or f"call_{i}", c[1], c[2]) for i, c in sorted(self.calls.items()) if c[1])


class _Remaining:
    """A rate-limit headroom reading and when the upstream said its window resets."""

    __slots__ = ("valid_until_s", "value")

    def __init__(self, value: float, valid_until_s: float | None) -> None:
        self.value = value
        self.valid_until_s = valid_until_s

    def value_at(self, now_s: float) -> float | None:
        if self.valid_until_s is not None and now_s >= self.valid_until_s:
            return None
        return self.value


class OpenAICompatibleAdapter:
    """A ``SubstrateAdapter`` for one OpenAI-compatible endpoint.

    ``client``: an ``httpx.AsyncClient`` to use (tests pass one with ``httpx.MockTransport``);
    when None the adapter creates one and ``aclose`` closes it. ``environ`` is where the variable
    named by ``settings.api_key_env`` is read, once, here. ``clock`` is wall-clock seconds since
    the epoch (HTTP dates in ``Retry-After`` are compared with it).
    """

    def __init__(
        self,
        settings: OpenAICompatibleSettings,
        *,
        client: httpx.AsyncClient | None = None,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base_url = str(settings.base_url).rstrip("/")
        url = httpx.URL(self._base_url)
        # Where the substrate is, for messages: no user-info or query, which could hold secrets.
        self._where = (
            f"{url.scheme}://{url.host}{'' if url.port is None else f':{url.port}'}{url.path}"
        )
        self._api_key: str | None = None
        if settings.api_key_env is not None:
            key = environ.get(settings.api_key_env, "")
            if not key.strip():
                raise ValueError(
                    f"environment variable {settings.api_key_env} is not set or empty; it must "
                    f"hold the API key for {self._where}"
                )
            self._api_key = key.strip()
        self._timeout = httpx.Timeout(
            settings.request_timeout_s, connect=settings.connect_timeout_s
        )
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=self._timeout)
        self._clock = clock
        self._headers = {"Accept": "text/event-stream"}
        if self._api_key is not None:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._in_flight = 0
        self._requests_remaining: _Remaining | None = None
        self._tokens_remaining: _Remaining | None = None
        self._retry_after_until_s: float | None = None

    def load(self) -> AdapterLoad:
        now = self._clock()
        requests, tokens = self._requests_remaining, self._tokens_remaining
        until = self._retry_after_until_s
        return AdapterLoad(
            in_flight=self._in_flight,
            rate_limit_requests_remaining=None if requests is None else requests.value_at(now),
            rate_limit_tokens_remaining=None if tokens is None else tokens.value_at(now),
            retry_after_until_s=until if until is not None and until > now else None,
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        path, body = self._request_body(request)
        self._in_flight += 1
        try:
            try:
                async with self._client.stream(
                    "POST",
                    self._base_url + path,
                    json=body,
                    headers=self._headers,
                    timeout=self._timeout,
                ) as response:
                    self._observe_headers(response)
                    if not 200 <= response.status_code < 300:
                        await self._raise_for_status(response)
                    async with aclosing(self._events(response, request)) as events:
                        async for event in events:
                            yield event
            # The httpx exception is not chained: it holds the request, headers included.
            except httpx.TimeoutException as exc:
                raise SubstrateTimeout(
                    f"{self._where}: no answer in time ({type(exc).__name__})"
                ) from None
            except httpx.TransportError as exc:
                raise SubstrateUnavailable(
                    f"{self._where}: {type(exc).__name__}: {self._clean(str(exc))}"
                ) from None
            except httpx.RequestError as exc:
                raise SubstrateProtocolError(
                    f"{self._where}: {type(exc).__name__}: {self._clean(str(exc))}"
                ) from None
        finally:
            self._in_flight -= 1

    # -- request --------------------------------------------------------------------------------

    def _request_body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": request.model}
        if request.api == "chat":
            if not request.messages:
                raise SubstrateRejectedRequest(
                    "a chat request needs at least one message", status=400
                )
            path = "/chat/completions"
            body["messages"] = [t.to_openai() for t in request.messages]
        elif request.api == "completion":
            if request.prompt is None and request.prompt_token_ids is None:
                raise SubstrateRejectedRequest("a completion request needs a prompt", status=400)
            path = "/completions"
            body["prompt"] = request.prompt if request.prompt is not None else list(request.prompt_token_ids)
        else:
            raise SubstrateRejectedRequest(f"unsupported api {request.api!r}", status=400)
        body["max_tokens"] = request.max_tokens
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "parallel_tool_calls"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.stop:
            body["stop"] = list(request.stop)
        if request.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in request.logit_bias}
        if request.logprobs is not None:
            if request.api == "chat":
                body["logprobs"] = True
                if request.logprobs:
                    body["top_logprobs"] = request.logprobs
            else:
                body["logprobs"] = request.logprobs
        if request.response_format is not None:
            body["response_format"] = request.response_format.to_openai()
        if request.tools:
            body["tools"] = [t.to_openai() for t in request.tools]
            if request.forced_function is not None:
                body["tool_choice"] = {"type": "function", "function": {"name": request.forced_function}}
            elif request.tool_choice is not None:
                body["tool_choice"] = request.tool_choice
        if request.echo:
            body["echo"] = True
        if request.suffix:
            body["suffix"] = request.suffix
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return path, body

    # -- response -------------------------------------------------------------------------------

    async def _events(
        self, response: httpx.Response, request: GenerationRequest
    ) -> AsyncIterator[GenerationEvent]:
        sse = _SseEvents()
        stream = _StreamState()
        async with aclosing(response.aiter_lines()) as lines:
            async for line in lines:
                data = sse.feed(line)
                if data is None:
                    continue
                if data.strip() == "[DONE]":
                    stream.done = True
                    break
                for delta in self._consume(data, request.api, stream):
                    yield delta
        if not stream.done:
            data = sse.flush()  # a last event that no blank line closed
            if data is not None and data.strip() == "[DONE]":
                stream.done = True
            elif data is not None:
                for delta in self._consume(data, request.api, stream):
                    yield delta
        if not stream.done and stream.finish_reason is None:
            raise SubstrateProtocolError(
                f"{self._where}: the stream ended without [DONE] or a finish_reason"
            )
        prompt_tokens, completion_tokens, cached = stream.usage or (
            _estimate_prompt_tokens(request),
            stream.deltas,
            None,
        )
        calls = stream.tool_calls()
        if calls:
            yield TextDelta("", 0, tool_calls=calls)
        yield Finished(_finish_reason(stream.finish_reason), prompt_tokens, completion_tokens,
                       cached_prompt_tokens=cached)

    def _consume(self, data: str, api: str, stream: _StreamState) -> list[TextDelta]:
        """The deltas of one event (content, with its tokens' log probabilities); its tool-call
        fragments, finish_reason and usage go into ``stream``."""
        deltas: list[TextDelta] = []
        for text, finish, usage, logprobs, calls in self._parse_chunk(data, api):
            if text or logprobs:
                deltas.append(TextDelta(text or "", len(logprobs) if logprobs else 1, logprobs=logprobs))
                stream.deltas += 1
            for fragment in calls:
                stream.add_call_fragment(fragment)
            stream.finish_reason = finish or stream.finish_reason
            stream.usage = usage or stream.usage
        return deltas

    def _parse_chunk(self, data: str, api: str) -> list[tuple]:
        """(text, finish_reason, usage, logprobs, tool-call fragments) for each choice of one
        chunk; one more entry carries the usage, and a chunk without choices gives one entry."""
        try:
            chunk = json.loads(data)
        except ValueError:
            raise SubstrateProtocolError(f"{self._where}: a stream event is not JSON") from None
        if not isinstance(chunk, dict):
            raise SubstrateProtocolError(f"{self._where}: a stream event is not a JSON object")
        if chunk.get("error"):
            raise SubstrateUnavailable(
                f"{self._where}: the upstream reported an error mid-stream: "
                f"{self._error_message(chunk)}"
            )
        usage = self._parse_usage(chunk.get("usage"))
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise SubstrateProtocolError(f"{self._where}: `choices` is not a list")
        out: list[tuple] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise SubstrateProtocolError(f"{self._where}: a choice is not a JSON object")
            raw_logprobs = choice.get("logprobs")
            calls: list = []
            if api == "chat":
                delta = choice.get("delta") or {}
                if not isinstance(delta, dict):
                    raise SubstrateProtocolError(f"{self._where}: `delta` is not a JSON object")
                text = delta.get("content")
                calls = [c for c in delta.get("tool_calls") or () if isinstance(c, dict)]
                logprobs = (_chat_logprobs(raw_logprobs.get("content"))
                            if isinstance(raw_logprobs, dict) else None)
            else:
                text = choice.get("text")
                logprobs = _completion_logprobs(raw_logprobs) if isinstance(raw_logprobs, dict) else None
            reason = choice.get("finish_reason")
            if text is not None and not isinstance(text, str):
                raise SubstrateProtocolError(f"{self._where}: the content of a delta is not text")
            if reason is not None and not isinstance(reason, str):
                raise SubstrateProtocolError(f"{self._where}: `finish_reason` is not a string")
            out.append((text, reason, None, logprobs or None, calls))
        if usage is not None or not out:
            out.append((None, None, usage, None, ()))
        return out

    def _parse_usage(self, usage: object) -> tuple[int, int, int | None] | None:
        """(prompt, completion, cached) tokens; cached: ``prompt_tokens_details.cached_tokens``,
        where the provider reports a well-formed one."""
        if usage is None:
            return None
        if not isinstance(usage, dict):
            raise SubstrateProtocolError(f"{self._where}: `usage` is not a JSON object")
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (prompt, completion)
        ):
            raise SubstrateProtocolError(f"{self._where}: `usage` lacks token counts")
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if not (isinstance(cached, int) and not isinstance(cached, bool) and 0 <= cached <= prompt):
            cached = None
        return prompt, completion, cached

    async def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) >= ERROR_BODY_LIMIT:
                break
        message = self._error_message_from_body(bytes(body[:ERROR_BODY_LIMIT]))
        where = f"{self._where} answered {status}"
        if status == 429:
            retry_after = self._retry_after_s(response)
            raise SubstrateRateLimited(
                f"{where}: {message}", retry_after_s=retry_after, status=status
            )
        if status in REQUEST_FAULT_STATUSES:
            # The client reads this message: the upstream's reason, not the upstream's address.
            raise SubstrateRejectedRequest(
                f"the upstream refused the request ({status}): {message}", status=status
            )
        if status == 408:
            raise SubstrateTimeout(f"{where}: {message}", status=status)
        if status >= 400:
            raise SubstrateUnavailable(f"{where}: {message}", status=status)
        raise SubstrateProtocolError(f"{where}, not a stream", status=status)

    def _error_message_from_body(self, body: bytes) -> str:
        text = body.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            return self._clean(text) or "(no message)"
        if isinstance(parsed, dict):
            return self._error_message(parsed)
        return self._clean(text)

    def _error_message(self, payload: dict[str, Any]) -> str:
        """``error.message``, ``error`` (a string), ``message`` or ``detail``; cleaned."""
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return self._clean(error["message"])
        for candidate in (error, payload.get("message"), payload.get("detail")):
            if isinstance(candidate, str):
                return self._clean(candidate)
        return self._clean(json.dumps(payload))

    def _clean(self, text: str) -> str:
        """The API key redacted, then one line cut between words (``errors.reason``); redacting
        first means a cut can never leave part of the key behind."""
        if self._api_key:
            text = text.replace(self._api_key, REDACTED)
        return reason(text)

    # -- rate-limit headers ---------------------------------------------------------------------

    def _observe_headers(self, response: httpx.Response) -> None:
        now = self._clock()
        headers = response.headers
        for kind in ("requests", "tokens"):
            raw = headers.get(f"x-ratelimit-remaining-{kind}")
            if raw is None:
                continue
            try:
                value = float(raw.strip())
            except ValueError:
                continue
            if not math.isfinite(value) or value < 0:
                continue
            reset_raw = headers.get(f"x-ratelimit-reset-{kind}")
            reset = parse_duration_s(reset_raw) if reset_raw is not None else None
            reading = _Remaining(value, None if reset is None else now + reset)
            if kind == "requests":
                self._requests_remaining = reading
            else:
                self._tokens_remaining = reading
        retry_after = self._retry_after_s(response)
        if retry_after is not None:
            self._retry_after_until_s = now + retry_after
        elif 200 <= response.status_code < 300:
            self._retry_after_until_s = None

    def _retry_after_s(self, response: httpx.Response) -> float | None:
        """``Retry-After`` if present; for a 429 without it, the longest ``x-ratelimit-reset-*``."""
        raw = response.headers.get("retry-after")
        if raw is not None:
            return parse_retry_after_s(raw, self._clock())
        if response.status_code != 429:
            return None
        resets = [
            parse_duration_s(v)
            for v in (
                response.headers.get(f"x-ratelimit-reset-{k}") for k in ("requests", "tokens")
            )
            if v is not None
        ]
        known = [r for r in resets if r is not None]
        return max(known) if known else None
