"""Baseline routers: what teams deploy today, each a gateway that sees only what a gateway sees.

A gateway knows its endpoints (the substrates serving the model, in config order), its own
in-flight count per endpoint, and the errors it got back. It does not see queue depth, KV cache,
rate-limit headroom or any other signal of the plane, nor a request's deadline (``fifo_queue``'s
queue timeout is each SLA class's first-token deadline, set per route as a user would). Common to
all five:

- **retry**: a 429, 5xx, connect error or timeout before the first byte is retried on another
  endpoint not yet tried for this request, until none is left (then the client gets the error);
  a 4xx other than 429 is returned to the client as it is;
- **per-try timeout**: ``baselines.first_byte_timeout_s`` (scenario) on every endpoint, on top of
  the endpoint client's own (``openai_compatible.request_timeout_s``);
- **outlier ejection** (Envoy-style): ``consecutive_errors`` 5xx/timeouts in a row eject an
  endpoint for ``ejection_s``; a 429 ejects it until its Retry-After at once. Ejected endpoints are
  skipped while any endpoint is left; when all are ejected the gateway uses them all (panic mode).
- **access**: a tenant's key is scoped to the models it may use (``allowed_models``);
- **no spillover log**: a gateway records no placement decision, so every request it serves off the
  model's primary substrate is an unlogged spillover.

**As deployed, and configured for compliance.** ``round_robin``, ``least_outstanding`` and
``cheapest_first`` as deployed spread over every endpoint serving the model: their sovereignty
violations are what such a gateway does when nobody configures it for the tenants' jurisdictions,
and their SLA and cost are won partly by sending prompts where they may not go. Each also runs
*configured for compliance* (``round_robin-compliant``, ...): the same policy over per-tenant
endpoint lists, one route per tenant listing only the endpoints whose jurisdiction tag lies inside
the tenant's allowed jurisdictions (``is_within``), as LiteLLM or Envoy users configure per-tenant
routes. ``ordered_fallback`` and ``fifo_queue`` are configured that way as deployed. The comparison
that counts is among compliant routers (``COMPLIANT``).

The five policies:

``round_robin``        endpoints in turn, over every endpoint serving the model.
``least_outstanding``  the endpoint with the fewest of the gateway's own in-flight requests
                       (ties: in turn), over every endpoint serving the model.
``ordered_fallback``   the model's primary first, then its spillover list (or config order), next
                       on 429/5xx/timeout. Region tags are honoured as a gateway honours them: one
                       gateway route per tenant, listing only the endpoints whose jurisdiction tag
                       lies inside the tenant's allowed jurisdictions (the reading chosen here).
``cheapest_first``     endpoints by list price, ``usd_per_1m_input_tokens + usd_per_1m_output_tokens``
                       (owned and reserved hardware is already paid for: 0), ties in config order,
                       over every endpoint serving the model; next on error.
``fifo_queue``         a gateway with a request queue, configured as LiteLLM or Envoy users configure
                       one: ordered_fallback's per-tenant endpoint lists (only endpoints inside the
                       tenant's jurisdictions, the model's primary first), a concurrency limit per
                       endpoint equal to the substrate's declared ``max_concurrent_requests +
                       max_queued_requests``, and one FIFO. A request goes to the first endpoint of
                       its list (not yet tried, not ejected) below its limit; when every one is at
                       its limit the request waits in the queue. Whenever a slot frees (a request
                       finishes or fails), waiting requests are dispatched in the order they entered
                       the queue, each to the first endpoint of its own list with room (a request
                       whose endpoints are all full does not block one behind it that may use the
                       freed endpoint). The queue holds ``baselines.queue_max_requests`` at most
                       (then ``queue_full``), and a request waits at most its SLA class's
                       first-token deadline (then ``queue_timeout``). No priorities, no fairness
                       between tenants: first come, first served.
"""

from __future__ import annotations

import abc

from collections import Counter

from inferplane.config import BuiltConfig
from inferplane.jurisdiction import is_within
from inferplane.placement.fleet import SubstrateSpec
from inferplane.replay.attempt import Failure
from inferplane.replay.router import HELD, Host, Periodic, Placement
from inferplane.replay.scenario import BaselineSection
from inferplane.replay.workload import ReplayRequest

BASELINES = ("round_robin", "least_outstanding", "ordered_fallback", "cheapest_first", "fifo_queue")
"""The baselines as deployed."""
COMPLIANT_SUFFIX = "-compliant"
COMPLIANT_VARIANTS = tuple(f"{n}{COMPLIANT_SUFFIX}" for n in ("round_robin", "least_outstanding", "cheapest_first"))
"""The baselines that are not compliant as deployed, configured with per-tenant endpoint lists."""
COMPLIANT = ("ordered_fallback", "fifo_queue", *COMPLIANT_VARIANTS)
"""The baselines whose endpoint lists keep every tenant inside its jurisdictions."""


class _Gateway(abc.ABC):
    """Endpoint lists, in-flight counts, retries and outlier ejection; subclasses choose."""

    name = "gateway"
    compliant = False
    """Per-tenant endpoint lists inside each tenant's jurisdictions (else every endpoint serving
    the model, for every tenant)."""

    def __init__(self, built: BuiltConfig, settings: BaselineSection) -> None:
        self._fleet = built.fleet
        self._policy = built.policy
        self._settings = settings
        self.in_flight: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self.ejected_until: dict[str, float] = {}
        self._turn = 0
        self._serving: dict[tuple[str, str], tuple[str, ...]] = {}

    def endpoints(self, request: ReplayRequest) -> tuple[str, ...]:
        key = (request.tenant if self.compliant else "", request.model)
        serving = self._serving.get(key)
        if serving is None:
            route = self._fleet.resolve_model(request.model)
            specs = () if route is None else [self._fleet.substrates[i] for i in route.substrate_indices]
            if self.compliant:
                allowed = self._policy.tenants[request.tenant].allowed_countries
                specs = [s for s in specs if is_within(s.countries, allowed)]
            serving = tuple(s.name for s in specs)
            self._serving[key] = serving
        return serving

    @abc.abstractmethod
    def choose(self, request: ReplayRequest, pool: tuple[str, ...]) -> str:
        """The endpoint this gateway sends ``request`` to, from the non-ejected ``pool``."""

    def place(self, request: ReplayRequest, tried: tuple[str, ...], now_s: float) -> Placement:
        refusal = self.refusal(request, tried)
        if refusal is not None:
            return refusal
        return self.send(self.choose(request, self.pool(request, tried, now_s)))

    def refusal(self, request: ReplayRequest, tried: tuple[str, ...]) -> Placement | None:
        """Refused before any endpoint is chosen: outside the key's models, or no endpoint left."""
        allowed_models = self._policy.tenants[request.tenant].allowed_models
        if allowed_models is not None and request.model not in allowed_models:
            return Placement(None, rejection="model_not_allowed")  # the gateway's key scopes
        if all(e in tried for e in self.endpoints(request)):
            return Placement(None, rejection="no_endpoint_left" if tried else "no_endpoint")
        return None

    def pool(self, request: ReplayRequest, tried: tuple[str, ...], now_s: float) -> tuple[str, ...]:
        """The endpoints not yet tried, without the ejected ones unless all are (panic mode)."""
        left = tuple(e for e in self.endpoints(request) if e not in tried)
        healthy = tuple(e for e in left if self.ejected_until.get(e, 0.0) <= now_s)
        return healthy or left

    def send(self, endpoint: str) -> Placement:
        return Placement(endpoint, spillover_logged=False, first_byte_timeout_s=self._settings.first_byte_timeout_s)

    def dispatched(self, request: ReplayRequest, substrate: str, now_s: float) -> None:
        self.in_flight[substrate] += 1

    def finished(self, request: ReplayRequest, substrate: str, dispatched_s: float, first_token_s: float,
                 output_tokens: int, now_s: float) -> None:
        self.in_flight[substrate] -= 1
        self._errors[substrate] = 0

    def failed(self, request: ReplayRequest, substrate: str, failure: Failure, retry_after_s: float | None,
               now_s: float) -> None:
        self.in_flight[substrate] -= 1
        if failure is Failure.REJECTED:
            return
        if failure is Failure.RATE_LIMITED:
            self.ejected_until[substrate] = now_s + (retry_after_s if retry_after_s is not None else 1.0)
            return
        self._errors[substrate] += 1
        if self._errors[substrate] >= self._settings.consecutive_errors:
            self.ejected_until[substrate] = now_s + self._settings.ejection_s
            self._errors[substrate] = 0

    def periodic(self) -> tuple[Periodic, ...]:
        return ()


class RoundRobin(_Gateway):
    name = "round_robin"

    def choose(self, request: ReplayRequest, pool: tuple[str, ...]) -> str:
        everyone = self.endpoints(request)
        for step in range(len(everyone)):
            candidate = everyone[(self._turn + step) % len(everyone)]
            if candidate in pool:
                self._turn = (self._turn + step + 1) % len(everyone)
                return candidate
        return pool[0]


class LeastOutstanding(_Gateway):
    name = "least_outstanding"

    def choose(self, request: ReplayRequest, pool: tuple[str, ...]) -> str:
        fewest = min(self.in_flight[e] for e in pool)
        ties = [e for e in pool if self.in_flight[e] == fewest]
        self._turn += 1
        return ties[self._turn % len(ties)]


class OrderedFallback(_Gateway):
    name = "ordered_fallback"
    compliant = True

    def __init__(self, built: BuiltConfig, settings: BaselineSection) -> None:
        super().__init__(built, settings)
        self._routes: dict[tuple[str, str], tuple[str, ...]] = {}

    def endpoints(self, request: ReplayRequest) -> tuple[str, ...]:
        key = (request.tenant, request.model)
        route = self._routes.get(key)
        if route is None:
            route = self._route(request)
            self._routes[key] = route
        return route

    def _route(self, request: ReplayRequest) -> tuple[str, ...]:
        model = self._fleet.resolve_model(request.model)
        if model is None:
            return ()
        serving = [self._fleet.substrates[i] for i in model.substrate_indices]
        listed = list(model.spillover_substrates or ())
        ordered = sorted(serving, key=lambda s: (s.name != model.primary,
                                                 listed.index(s.name) if s.name in listed else len(listed),
                                                 s.index))
        allowed = self._policy.tenants[request.tenant].allowed_countries
        return tuple(s.name for s in ordered if is_within(s.countries, allowed))

    def choose(self, request: ReplayRequest, pool: tuple[str, ...]) -> str:
        return pool[0]


def list_price_usd_per_1m(spec: SubstrateSpec) -> float:
    """What a price-aware gateway sorts by: input + output list price per 1M tokens (0 for hardware
    that is owned or reserved, whose price is per GPU-hour whether used or not)."""
    return (spec.cost.usd_per_input_token + spec.cost.usd_per_output_token) * 1e6


class CheapestFirst(_Gateway):
    name = "cheapest_first"

    def __init__(self, built: BuiltConfig, settings: BaselineSection) -> None:
        super().__init__(built, settings)
        self._by_price: dict[tuple[str, str], tuple[str, ...]] = {}

    def endpoints(self, request: ReplayRequest) -> tuple[str, ...]:
        key = (request.tenant if self.compliant else "", request.model)
        by_price = self._by_price.get(key)
        if by_price is None:
            serving = [self._fleet.substrate(n) for n in super().endpoints(request)]
            by_price = tuple(s.name for s in sorted(serving, key=lambda s: (list_price_usd_per_1m(s), s.index)))
            self._by_price[key] = by_price
        return by_price

    def choose(self, request: ReplayRequest, pool: tuple[str, ...]) -> str:
        return pool[0]


class FifoQueue(OrderedFallback):
    name = "fifo_queue"

    def __init__(self, built: BuiltConfig, settings: BaselineSection) -> None:
        super().__init__(built, settings)
        self.limit = {s.name: s.max_concurrent + s.max_queued for s in self._fleet.substrates}
        self._max_wait_s = {name: sla.ttft_deadline_s for name, sla in self._policy.sla_classes.items()}
        self.waiting: dict[int, tuple[ReplayRequest, tuple[str, ...], int]] = {}
        """Request index -> (request, endpoints it already tried, number of its entry), in queue order."""
        self._entries = 0
        self._host: Host | None = None

    def attach(self, host: Host) -> None:
        self._host = host

    def place(self, request: ReplayRequest, tried: tuple[str, ...], now_s: float) -> Placement:
        refusal = self.refusal(request, tried)
        if refusal is not None:
            return refusal
        if self.waiting:
            self._dispatch_waiting(now_s)  # those ahead first, should a slot be free
        endpoint = self._with_room(self.pool(request, tried, now_s))
        if endpoint is not None:
            return self.send(endpoint)
        if len(self.waiting) >= self._settings.queue_max_requests:
            return Placement(None, rejection="queue_full")
        self._entries += 1
        self.waiting[request.index] = (request, tried, self._entries)
        self._host.at(now_s + self._max_wait_s[request.sla_class], self._expire, request.index, self._entries)
        return HELD

    def _with_room(self, pool: tuple[str, ...]) -> str | None:
        for e in pool:
            if self.in_flight[e] < self.limit[e]:
                return e
        return None

    def _full(self) -> bool:
        return all(self.in_flight[e] >= n for e, n in self.limit.items())

    def finished(self, request: ReplayRequest, substrate: str, dispatched_s: float, first_token_s: float,
                 output_tokens: int, now_s: float) -> None:
        super().finished(request, substrate, dispatched_s, first_token_s, output_tokens, now_s)
        self._dispatch_waiting(now_s)

    def failed(self, request: ReplayRequest, substrate: str, failure: Failure, retry_after_s: float | None,
               now_s: float) -> None:
        super().failed(request, substrate, failure, retry_after_s, now_s)
        self._dispatch_waiting(now_s)

    def _dispatch_waiting(self, now_s: float) -> None:
        """Waiting requests in queue order, each to the first endpoint of its list with room."""
        if not self.waiting or self._full():
            return
        for index, (request, tried, _) in list(self.waiting.items()):
            endpoint = self._with_room(self.pool(request, tried, now_s))
            if endpoint is None:
                continue
            del self.waiting[index]
            self._host.resume(request, self.send(endpoint), now_s)
            if self._full():
                return

    def _expire(self, now_s: float, index: int, entry_number: int) -> None:
        entry = self.waiting.get(index)
        if entry is None or entry[2] != entry_number:
            return  # dispatched meanwhile (or waiting again after a later failure)
        del self.waiting[index]
        self._host.resume(entry[0], Placement(None, rejection="queue_timeout"), now_s)


def _configured_for_compliance(cls: type[_Gateway]) -> type[_Gateway]:
    """``cls`` over per-tenant endpoint lists inside each tenant's jurisdictions."""
    return type(f"Compliant{cls.__name__}", (cls,), {"name": f"{cls.name}{COMPLIANT_SUFFIX}", "compliant": True})


_CLASSES = {c.name: c for c in (RoundRobin, LeastOutstanding, OrderedFallback, CheapestFirst, FifoQueue)}
_CLASSES.update({variant: _configured_for_compliance(_CLASSES[variant.removesuffix(COMPLIANT_SUFFIX)])
                 for variant in COMPLIANT_VARIANTS})


def baseline(name: str, built: BuiltConfig, settings: BaselineSection) -> _Gateway:
    if name not in _CLASSES:
        raise ValueError(f"unknown baseline `{name}`; baselines: {', '.join(_CLASSES)}")
    return _CLASSES[name](built, settings)
