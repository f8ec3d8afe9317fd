"""Live replay: send a workload through a running plane and measure what really happens.

``inferplane replay CONFIG --trace FILE --target URL`` builds the same workload a simulated replay
would (same tenants, classes, arrivals, ``max_tokens``) and sends it to the plane's OpenAI API:

* each request leaves at its arrival time, measured from the start of the run (a client that
  falls behind sends late and says by how much: ``send_lag_p99_s``);
* a chat completion, streamed, with the tenant's key and its SLA class in ``x-inferplane-sla-class``;
  the prompt is ``input_tokens - PROMPT_OVERHEAD_TOKENS`` seeded random one-token words
  (``inferplane.replay.prompts``: different for every request, so no prefix cache helps), as long
  as the trace says: a prompt no substrate's window holds is the plane's to refuse, as in a
  simulated replay;
* time to first token is the first content chunk, end to end the ``[DONE]`` line, both from the
  moment the request was sent; tokens come from the usage chunk; where it ran, whether it spilled
  and whether the plane said so come from the ``x-inferplane-*`` headers;
* bounded: at most ``max_in_flight`` requests at once, nothing sent after ``max_duration_s``
  (requests not sent are counted as ``not_sent`` and left out of the report), and every request
  abandoned after ``request_timeout_s``.

Outcomes (``RequestOutcome``, as in the simulator): ``completed`` with a 200 and a ``[DONE]``;
``rejected`` when the plane refused with a 4xx or a 503 (it never placed the request); ``failed``
for any other status, an error event in the stream, a broken connection or the timeout. A
sovereignty violation is an answer from a substrate outside the tenant's allowed jurisdictions.

The target must be a loopback address unless ``allow_remote``: a replay is a load test.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from inferplane.config import BuiltConfig
from inferplane.jurisdiction import is_within
from inferplane.replay.outcome import RequestOutcome, usage_cost_usd
from inferplane.replay.prompts import prompt_text
from inferplane.replay.simulator import SimulationResult
from inferplane.replay.workload import ReplayRequest

SLA_HEADER = "x-inferplane-sla-class"
PROMPT_OVERHEAD_TOKENS = 30
"""Tokens a chat template adds around one user message (SmolLM2's adds 30, with its default
system prompt); the measured prompt size comes back in the usage chunk either way."""


class LiveError(ValueError):
    """A live replay that cannot start: a remote target, a missing key."""


@dataclass(frozen=True, slots=True)
class LiveOptions:
    target: str
    api_keys: Mapping[str, str]
    """Tenant -> API key; only digests live in the config, so the keys come from the caller."""
    max_in_flight: int = 256
    max_duration_s: float = 900.0
    request_timeout_s: float = 300.0
    allow_remote: bool = False


@dataclass(frozen=True, slots=True)
class LiveRequest:
    """What the client measured of one request (times in seconds from the run's start)."""

    request: ReplayRequest
    sent_s: float
    status: int | None
    error_code: str | None
    substrate: str | None
    spillover_header: bool
    attempts: int
    ttft_s: float | None
    e2e_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    prompt_words: int


@dataclass(frozen=True, slots=True)
class LiveRun:
    result: SimulationResult
    requests: tuple[LiveRequest, ...]
    not_sent: int
    send_lag_p99_s: float


def check_target(url: str, allow_remote: bool) -> str:
    """The base URL without a trailing slash; refuses a non-loopback host unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LiveError(f"--target {url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000")
    if not allow_remote:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80)}
        except socket.gaierror as exc:
            raise LiveError(f"--target host {parts.hostname!r} does not resolve: {exc}") from None
        remote = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
        if remote:
            raise LiveError(f"--target {parts.hostname} resolves to {', '.join(sorted(remote))}, not loopback; "
                            "a replay is a load test: pass --allow-remote to send it elsewhere")
    return url.rstrip("/")


def parse_api_keys(pairs: list[str], env_value: str | None) -> dict[str, str]:
    """``TENANT=KEY`` pairs from the environment value (comma-separated) then the command line."""
    out: dict[str, str] = {}
    items = [p for p in (env_value or "").split(",") if p.strip()] + list(pairs)
    for item in items:
        tenant, sep, key = item.strip().partition("=")
        if not sep or not tenant or not key:
            raise LiveError("an API key is given as TENANT=KEY")
        out[tenant] = key
    return out


def check_keys(built: BuiltConfig, requests: tuple[ReplayRequest, ...], keys: Mapping[str, str]) -> None:
    """Every tenant of the workload has a key, and it is one of the tenant's configured keys."""
    from inferplane.auth import TenantKeys

    auth = TenantKeys((t.name, t.api_keys_sha256) for t in built.config.tenants)
    for tenant in sorted({r.tenant for r in requests}):
        key = keys.get(tenant)
        if key is None:
            raise LiveError(f"no API key for tenant `{tenant}`: pass --api-key {tenant}=KEY or set "
                            "INFERPLANE_REPLAY_API_KEYS=tenant=KEY,...")
        if auth.tenant_for(f"Bearer {key}") != tenant:
            raise LiveError(f"the key given for tenant `{tenant}` is not one of its configured keys")


async def _one(client, base: str, req: ReplayRequest, key: str, words: int, start: float,
               timeout_s: float) -> LiveRequest:
    body = {
        "model": req.model, "max_tokens": req.max_tokens, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 1.0,
        "messages": [{"role": "user", "content": prompt_text(req.request_id, words)}],
    }
    headers = {"Authorization": f"Bearer {key}", SLA_HEADER: req.sla_class}
    sent = time.perf_counter()
    status = code = substrate = None
    spill, attempts = False, 0
    first = done = None
    usage: dict = {}
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as r:
                status = r.status_code
                substrate = r.headers.get("x-inferplane-substrate")
                spill = r.headers.get("x-inferplane-spillover") == "true"
                attempts = int(r.headers.get("x-inferplane-attempts") or 0)
                if status != 200:
                    raw = await r.aread()
                    try:
                        code = json.loads(raw)["error"].get("code") or json.loads(raw)["error"].get("type")
                    except (ValueError, KeyError, TypeError, AttributeError):
                        code = f"http_{status}"
                else:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            done = time.perf_counter() - sent
                            break
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            code = (chunk["error"] or {}).get("code") or "stream_error"
                            break
                        if first is None and any((c.get("delta") or {}).get("content")
                                                 for c in chunk.get("choices") or ()):
                            first = time.perf_counter() - sent
                        if chunk.get("usage"):
                            usage = chunk["usage"]
    except TimeoutError:
        code = "client_timeout"
    except Exception as exc:  # noqa: BLE001 - a broken connection is a failed request, named by its type
        code = f"client_{type(exc).__name__}"
    return LiveRequest(req, sent - start, status, code, substrate, spill, attempts, first,
                       done if code is None else None, usage.get("prompt_tokens"),
                       usage.get("completion_tokens"), words)


async def _run(built: BuiltConfig, requests: tuple[ReplayRequest, ...], options: LiveOptions,
               on_progress: Callable[[int], None] | None) -> tuple[list[LiveRequest], int, float]:
    import httpx

    base = check_target(options.target, options.allow_remote)
    limits = httpx.Limits(max_connections=options.max_in_flight, max_keepalive_connections=options.max_in_flight)
    gate = asyncio.Semaphore(options.max_in_flight)
    first_arrival = requests[0].arrival_s
    lags: list[float] = []
    tasks: list[asyncio.Task] = []
    not_sent = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(options.request_timeout_s, connect=10.0),
                                 limits=limits) as client:
        start = time.perf_counter()

        async def guarded(req: ReplayRequest, words: int) -> LiveRequest:
            try:
                return await _one(client, base, req, options.api_keys[req.tenant], words, start,
                                  options.request_timeout_s)
            finally:
                gate.release()
                if on_progress is not None:
                    on_progress(1)

        for req in requests:
            due = req.arrival_s - first_arrival
            if due > options.max_duration_s:
                not_sent = len(requests) - len(tasks)
                break
            delay = due - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            lags.append(max(0.0, time.perf_counter() - start - due))
            words = max(1, req.input_tokens - PROMPT_OVERHEAD_TOKENS)
            tasks.append(asyncio.create_task(guarded(req, words)))
        results = list(await asyncio.gather(*tasks))
    lags.sort()
    lag_p99 = lags[min(len(lags) - 1, math.ceil(0.99 * len(lags)) - 1)] if lags else 0.0
    return results, not_sent, lag_p99


def _outcome(built: BuiltConfig, live: LiveRequest) -> RequestOutcome:
    req = live.request
    policy = built.policy
    names = {s.name for s in built.fleet.substrates}
    spec = built.fleet.substrate(live.substrate) if live.substrate in names else None
    route = built.fleet.resolve_model(req.model)
    violation = spec is not None and not is_within(spec.countries, policy.tenants[req.tenant].allowed_countries)
    base = {"index": req.index, "tenant": req.tenant, "sla_class": req.sla_class, "arrival_s": req.arrival_s,
            "tried": (live.substrate,) if live.substrate else (), "sovereignty_violation": violation}
    if live.status == 200 and live.e2e_s is not None and spec is not None:
        sla = policy.sla_classes[req.sla_class]
        ttft = live.ttft_s if live.ttft_s is not None else live.e2e_s  # an empty answer: first = last
        return RequestOutcome(
            **base, status="completed", substrate=spec.name, ttft_s=ttft, e2e_s=live.e2e_s,
            met_sla=ttft <= sla.ttft_deadline_s and live.e2e_s <= sla.e2e_deadline_s,
            cost_usd=usage_cost_usd(spec, live.prompt_tokens or 0, live.completion_tokens or 0,
                                    built.ingress_region),
            spillover=route is not None and spec.name != route.primary, spillover_logged=live.spillover_header,
            cross_region=spec.region != built.ingress_region)
    refused = live.status is not None and (400 <= live.status < 500 or live.status == 503)
    return RequestOutcome(
        **base, status="rejected" if refused else "failed", substrate=live.substrate, ttft_s=None, e2e_s=None,
        met_sla=False, cost_usd=0.0, spillover=False, spillover_logged=False, cross_region=False,
        rejection=live.error_code or (f"http_{live.status}" if live.status else None))


def run_live(built: BuiltConfig, requests: tuple[ReplayRequest, ...], options: LiveOptions, *,
             progress: bool = False) -> LiveRun:
    """Send ``requests`` through the plane at ``options.target``; the measured run."""
    import sys

    check_target(options.target, options.allow_remote)
    check_keys(built, requests, options.api_keys)
    wall0 = time.perf_counter()
    if progress:
        from tqdm import tqdm

        with tqdm(total=len(requests), desc="live", unit="req", file=sys.stderr, dynamic_ncols=True) as bar:
            measured, not_sent, lag = asyncio.run(_run(built, requests, options, bar.update))
    else:
        measured, not_sent, lag = asyncio.run(_run(built, requests, options, None))
    wall = time.perf_counter() - wall0
    outcomes = tuple(_outcome(built, m) for m in measured)
    fleet = built.fleet
    span = (measured[-1].request.arrival_s - measured[0].request.arrival_s) if measured else 0.0
    end = max((m.sent_s + (m.e2e_s or 0.0) for m in measured), default=0.0)
    result = SimulationResult(
        router="inferplane (live)", outcomes=outcomes, substrates=tuple(s.name for s in fleet.substrates),
        slots=tuple(s.max_concurrent for s in fleet.substrates), span_s=span, end_s=end, load=(),
        busy_slot_s=tuple(0.0 for _ in fleet.substrates), events_run=0, wall_s=wall)
    return LiveRun(result, tuple(measured), not_sent, lag)
