"""Client-side traffic for the chaos suite: bounded closed-loop load through the OpenAI API, every
reply classified as an answer, a clear error, or lost.

    answered     200 and complete: a JSON completion, or a stream that ended with ``[DONE]``
    clear error  an HTTP error status with an OpenAI-style error body, or a stream whose status
                 line was 200 and that ended with an OpenAI-style error event
    crude error  a failure the client notices but that is not OpenAI-shaped: an error status
                 with another body (the Serve proxy's plain ``Internal Server Error``), a
                 connection dropped or a stream cut off mid-body (the client library raises)
    lost         nothing the client can act on: no answer in time, or a body or stream that
                 ended cleanly but incomplete (no ``[DONE]``, no error event)

Every loop is bounded in count and in time; all traffic goes to the loopback URL it is given.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from tests.integration.conftest import EU_KEY, GLOBAL_KEY

KEYS = {"eu-bank": EU_KEY, "global-app": GLOBAL_KEY}
EU_COUNTRIES = {"AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE",
                "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK", "EU"}


@dataclass(frozen=True)
class Ask:
    """One request to send."""

    tenant: str = "global-app"
    model: str = "smollm2"
    stream: bool = False
    max_tokens: int = 8
    api: str = "chat"
    sla_class: str | None = None
    prompt: str = "What is the capital of France?"

    def body(self) -> dict:
        b: dict = {"model": self.model, "max_tokens": self.max_tokens, "stream": self.stream}
        if self.api == "chat":
            b["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            b["prompt"] = self.prompt
        return b

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"


@dataclass
class Reply:
    ask: Ask
    sent_at: float
    done_at: float = 0.0
    status: int | None = None
    substrate: str | None = None
    placement_id: str | None = None
    spillover: bool = False
    spillover_reason: str | None = None
    attempts: int | None = None
    complete: bool = False
    error_code: str | None = None
    """The OpenAI error code of an HTTP error or of a stream's error event."""
    stream_error: bool = False
    transport_error: str | None = None
    retry_after: str | None = None
    text: str = ""

    @property
    def answered(self) -> bool:
        return self.status == 200 and self.complete

    @property
    def clear_error(self) -> bool:
        return not self.answered and self.error_code is not None

    @property
    def crude_error(self) -> bool:
        return (not self.answered and not self.clear_error and self.transport_error is not None
                and self.transport_error != "timeout")

    @property
    def lost(self) -> bool:
        return not (self.answered or self.clear_error or self.crude_error)

    @property
    def outcome(self) -> str:
        """``200``; ``<status>:<code>`` (``200:<code>`` for a stream ended by an error event);
        ``crude:<what>``; or ``lost:<why>``."""
        if self.answered:
            return "200"
        if self.clear_error:
            return f"{self.status}:{self.error_code}"
        if self.crude_error:
            return f"crude:{self.transport_error}"
        return f"lost:{self.transport_error or f'{self.status}-incomplete'}"


def _error_code(payload: object) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = payload["error"]
        if isinstance(err.get("message"), str) and err.get("message") and "code" in err and "type" in err:
            return str(err.get("code"))
    return None


async def send(client: httpx.AsyncClient, base_url: str, ask: Ask, *, timeout_s: float = 60.0) -> Reply:
    """Send one request and classify its reply. Never raises."""
    reply = Reply(ask, time.monotonic())
    headers = {"Authorization": f"Bearer {KEYS[ask.tenant]}"}
    if ask.sla_class:
        headers["x-inferplane-sla-class"] = ask.sla_class
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", base_url + ask.path, json=ask.body(), headers=headers) as r:
                reply.status = r.status_code
                reply.substrate = r.headers.get("x-inferplane-substrate")
                reply.placement_id = r.headers.get("x-inferplane-placement-id")
                reply.spillover = r.headers.get("x-inferplane-spillover") == "true"
                reply.spillover_reason = r.headers.get("x-inferplane-spillover-reason")
                attempts = r.headers.get("x-inferplane-attempts")
                reply.attempts = int(attempts) if attempts else None
                reply.retry_after = r.headers.get("retry-after")
                if r.status_code == 200 and ask.stream:
                    await _read_stream(r, reply)
                else:
                    raw = await r.aread()
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        payload = None
                    if r.status_code == 200:
                        reply.complete = isinstance(payload, dict) and bool(payload.get("choices"))
                        if reply.complete:
                            choice = payload["choices"][0]
                            reply.text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
                    else:
                        reply.error_code = _error_code(payload)
                        if reply.error_code is None:
                            reply.transport_error = f"{r.status_code}-not-openai-error"
    except TimeoutError:
        reply.transport_error = "timeout"
    except httpx.HTTPError as exc:
        reply.transport_error = type(exc).__name__
    reply.done_at = time.monotonic()
    return reply


async def _read_stream(r: httpx.Response, reply: Reply) -> None:
    parts = []
    async for line in r.aiter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            reply.complete = reply.error_code is None
            break
        payload = json.loads(data)
        code = _error_code(payload)
        if code is not None:
            reply.error_code = code
            reply.stream_error = True
            continue
        for choice in payload.get("choices") or ():
            parts.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
    reply.text = "".join(parts)


async def closed_loop(base_url: str, asks: Callable[[int], Ask], *, concurrency: int, max_requests: int,
                      max_seconds: float, on_reply: Callable[[Reply], None] | None = None,
                      pause_after_capacity_s: float = 0.0, timeout_s: float = 60.0,
                      stop: threading.Event | None = None) -> list[Reply]:
    """``concurrency`` workers send ``asks(i)`` back to back until ``max_requests`` were sent,
    ``max_seconds`` passed or ``stop`` is set (requests already sent finish). A worker whose
    request was refused for capacity (429/503) waits ``pause_after_capacity_s`` before its next."""
    replies: list[Reply] = []
    counter = iter(range(max_requests))
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits) as client:
        async def worker() -> None:
            for i in counter:
                if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                    return
                reply = await send(client, base_url, asks(i), timeout_s=timeout_s)
                replies.append(reply)
                if on_reply is not None:
                    on_reply(reply)
                if pause_after_capacity_s and reply.status in (429, 503):
                    await asyncio.sleep(pause_after_capacity_s)

        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return replies


async def burst(base_url: str, asks: Iterable[Ask], *, timeout_s: float = 60.0) -> list[Reply]:
    """Every ask at once, on its own connection."""
    asks = list(asks)
    limits = httpx.Limits(max_connections=len(asks) + 1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits) as client:
        return list(await asyncio.gather(*[send(client, base_url, a, timeout_s=timeout_s) for a in asks]))


def outcome_counts(replies: Iterable[Reply]) -> Counter[str]:
    return Counter(r.outcome for r in replies)
