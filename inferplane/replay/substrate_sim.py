"""One substrate in simulated time, following ``substrate_adapters.physics`` (shared, not copied).

For one attempt, in the order of the emulated adapter (``substrate_adapters.emulated``):

    1. unreachable (an outage event)          -> fails UNAVAILABLE after one network_rtt
       failure draw  ``draws.fails(rate)``    -> fails UNAVAILABLE after one network_rtt
    2. travels ``outbound_delay_s * draws.jitter(j)``
    3. rate limits (APIs with requests_per_minute / tokens_per_minute): two token buckets, each
       holding at most one minute's allowance and refilled continuously at allowance / 60 per
       second; an attempt takes 1 request and input + max_tokens tokens. Short of either: 429
       (RATE_LIMITED) after network_rtt / 2, with Retry-After = the time until both buckets hold
       enough; the substrate then reports ``retry_after_until_s`` (the plane opens its circuit).
       A prompt over the context window: REJECTED (final) after network_rtt / 2.
    4. waits in a FIFO for one of ``max_concurrency`` slots (unbounded, as vLLM's waiting queue and
       the emulated FIFO are; admission limits are the router's business)
    5. holding its slot, waits (in arrival order) for one of ``prefill_slots`` prefill lanes, then
       holds the lane for ``first_token_delay_s(input - cached) * draws.jitter(j)``: the first token
       arrives. ``cached`` is what the prefix cache serves (below); 0 without prefix blocks.
    6. decodes ``output_tokens - 1`` more tokens, one per ``decode_interval_s(running)``, slowed to
       ``decode_share(prefilling)`` of that rate while any prefill runs, with ``running`` (slots
       held) and ``prefilling`` (lanes held) read continuously: the continuous-time limit of the
       emulated adapter's step schedule. All streams of a substrate decode at the same per-stream
       rate, so one virtual clock tracks them: V advances at
       decode_share(prefilling) / decode_interval_s(running) tokens per second, and a stream that
       starts decoding at V0 finishes when V = V0 + output_tokens - 1.
    7. releases its slot; the oldest waiter is admitted.

A caller's timeout (``abandon``) takes an attempt out of the queue or frees its slot at once.
Events: ``slowdown`` multiplies every later duration (``PhysicsModel.with_slowdown``; decode at once,
through V), ``failure_rate`` sets the draw's probability, ``outage`` makes the substrate unreachable
and silent (no load reports: the plane's signals go stale); as with the emulated adapter's
``set_outage``, attempts already past step 1 finish.

Prefix caches (a substrate that declares ``latency.kv_cache_tokens_per_replica``, for requests
whose trace gives prefix blocks, Mooncake's ``hash_ids``): one ``placement.prefix.BlockCache`` per
replica (``PrefixCacheSpec.replicas``) of ``kv_cache_tokens_per_replica // MOONCAKE_BLOCK_TOKENS``
blocks, the engine's whole KV cache: vLLM keeps a finished request's blocks until they are
evicted, least recently used first, and running requests' blocks are in it too. When a prefill
starts, the pool's router picks the replica holding the longest leading run of the prompt's blocks
when that run is at least ``MATCH_RATE_THRESHOLD`` of them (Serve's prefix-cache-affinity router
inside the pool, issue #17 item 1, with its default threshold; load balance among replicas is not
modelled, the slots are pooled), else the next replica in turn (a short match, such as the system
prompt every conversation shares, must not pile every new conversation onto one replica);
``cached = min(run * 512, input - 1)`` tokens are not prefilled (an engine always computes the
last prompt token), and the prompt's blocks become that replica's most recently used. Prefill time
is the only thing a hit changes. This is the truth: nothing of it reaches the router, whose belief
(the plane's ``PrefixIndex``) comes only from the outcomes it sees.

Replicas (``elastic``: a substrate the plane autoscales, ``config.sizing.plane_autoscaled``): its
slots and prefill lanes are per replica (the pooled physics over its maximum replicas) times the
replicas running. ``scale_to(target)`` starts replicas that become live ``start_s`` later (a
starting one is cancelled first when the target drops) or stops live ones: a stopping replica takes
no new work at once and drains, its running requests finishing; the pool's slots are pooled, so a
draining replica stops once the pool's running requests fit in the live replicas
(``settle_drains``). The decode batch fraction is over the slots of live and draining replicas.
Billed replicas (live + starting + draining, as a cloud bills a machine from its start) are logged
at every change, for ``replica_seconds``. Prefix caches stay one per replica at full scale.
A substrate that is not elastic has its replicas at full scale throughout, as before.

``load()`` is what the substrate's adapter would report (``substrate_adapters.*.load``):

    emulated            in_flight = running,            queued = waiting
    vllm                in_flight = running + waiting,  queued = waiting,
                        kv_cache_usage = running / max_concurrency (each slot a fixed KV share)
    openai_compatible   in_flight = attempts sent and not finished, queued = 0,
                        rate-limit headroom = the buckets' levels, retry_after_until_s
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from inferplane.fleet_state import SubstrateReport
from inferplane.placement.fleet import PrefixCacheSpec, SubstrateSpec
from inferplane.placement.prefix import BlockCache
from inferplane.replay.attempt import Attempt, Failure, Phase
from inferplane.replay.clock import EventQueue
from inferplane.replay.trace import MOONCAKE_BLOCK_TOKENS
from substrate_adapters.physics import (
    PhysicsDraws,
    PhysicsModel,
    decode_interval_s,
    decode_share,
    first_token_delay_s,
    outbound_delay_s,
    prefill_slots,
)

EPSILON_TOKENS = 1e-7
MATCH_RATE_THRESHOLD = 0.1
"""The least fraction of a prompt's blocks a replica must hold for the pool to route by it
(``PrefixCacheAffinityRouter``'s default ``match_rate_threshold``)."""


@dataclass(frozen=True, slots=True)
class SubstrateCallbacks:
    completed: Callable[[float, Attempt], None]
    failed: Callable[[float, Attempt], None]


class SimSubstrate:
    def __init__(self, spec: SubstrateSpec, physics: PhysicsModel, queue: EventQueue,
                 callbacks: SubstrateCallbacks, prefix_cache: PrefixCacheSpec | None = None) -> None:
        """``prefix_cache``: the caches it really has (the config's, unless the scenario says
        otherwise: ``substrate_physics.prefix_cache_for``)."""
        self.spec = spec
        self.base_physics = physics
        self.physics = physics
        self._q = queue
        self._cb = callbacks
        self._draws = PhysicsDraws(physics.seed)
        self.slots = physics.max_concurrency
        self.running = 0
        self.prefilling = 0
        self.sent = 0
        self.waiting: deque[Attempt] = deque()
        self._prefill_waiting: deque[Attempt] = deque()
        self.reachable = True
        # Virtual decode clock.
        self._v = 0.0
        self._v_at = queue.now
        self._v_rate = 1.0 / decode_interval_s(physics, 0)
        self._rates: dict[tuple[int, bool], float] = {}
        self._decoding: list[tuple[float, int, Attempt]] = []
        self._seq = 0
        self._completion_version = 0
        # Rate limits.
        self._rpm = spec.requests_per_minute
        self._tpm = spec.tokens_per_minute
        self._req_level = float(self._rpm or 0)
        self._tok_level = float(self._tpm or 0)
        self._bucket_at = queue.now
        self.retry_after_until_s: float | None = None
        self._last_load_key: tuple | None = None
        self._last_load: SubstrateReport | None = None
        # Prefix caches, one per replica (the module docstring).
        pc = prefix_cache
        self.prefix_caches = () if pc is None else tuple(
            BlockCache(max(1, pc.tokens_per_replica // MOONCAKE_BLOCK_TOKENS)) for _ in range(pc.replicas))
        self._next_replica = 0
        # Counters for the report.
        self.busy_slot_s = 0.0
        self._busy_at = queue.now
        self.elastic = False

    # -- faults -----------------------------------------------------------------------------
    def set_slowdown(self, now: float, factor: float) -> None:
        self._advance(now)
        self.physics = self.physics.with_slowdown(factor)
        self._rates.clear()
        self._set_rate(now)

    def set_failure_rate(self, rate: float) -> None:
        self.physics = self.physics.with_failure_rate(rate)
        self._rates.clear()

    def set_reachable(self, reachable: bool) -> None:
        self.reachable = reachable

    # -- replicas (the module docstring) ----------------------------------------------------
    def make_elastic(self, now: float, max_replicas: int, live: int, start_s: float) -> None:
        """Run ``live`` of ``max_replicas`` replicas from now; a new one takes ``start_s`` to start."""
        self.elastic = True
        self.max_replicas = max_replicas
        self.per_replica_slots = max(1, self.physics.max_concurrency // max_replicas)
        lanes = self.physics.prefill_concurrency
        self._per_replica_lanes = None if lanes is None else max(1, lanes // max_replicas)
        self.start_s = start_s
        self.replicas_live = live
        self.replicas_draining = 0
        self._starting: list[object] = []
        self.replica_log: list[tuple[float, int]] = []
        self._set_replicas(now)

    @property
    def replicas_starting(self) -> int:
        return len(self._starting) if self.elastic else 0

    def scale_to(self, now: float, target: int) -> None:
        current = self.replicas_live + len(self._starting)
        while current < target:
            token = object()
            self._starting.append(token)
            self._q.at(now + self.start_s, self._replica_ready, token)
            current += 1
        while current > target and self._starting:
            self._starting.pop()  # the newest start is cancelled first
            current -= 1
        while current > target:
            self.replicas_live -= 1
            self.replicas_draining += 1
            current -= 1
        self._set_replicas(now)

    def settle_drains(self, now: float) -> None:
        """Draining replicas stop once the running requests fit in the live replicas' slots."""
        if self.replicas_draining:
            busy = -(-self.running // self.per_replica_slots) - self.replicas_live
            if busy < self.replicas_draining:
                self.replicas_draining = max(0, busy)
                self._set_replicas(now)

    def _replica_ready(self, now: float, token: object) -> None:
        if token in self._starting:  # not cancelled meanwhile
            self._starting.remove(token)
            self.replicas_live += 1
            self._set_replicas(now)

    def _set_replicas(self, now: float) -> None:
        self._advance(now)
        live, running_on = self.replicas_live, self.replicas_live + self.replicas_draining
        self.slots = self.per_replica_slots * live
        lanes = self._per_replica_lanes
        self.physics = replace(self.physics, max_concurrency=max(1, self.per_replica_slots * running_on),
                               prefill_concurrency=None if lanes is None else max(1, lanes * running_on))
        self._rates.clear()
        billed = running_on + len(self._starting)
        if not self.replica_log or self.replica_log[-1][1] != billed:
            self.replica_log.append((now, billed))
        self._release(now, 0)

    def replica_seconds(self, t0: float, t1: float) -> float:
        """Billed replica-seconds between ``t0`` and ``t1`` (the log's step function)."""
        total = 0.0
        log = self.replica_log
        for i, (t, n) in enumerate(log):
            end = log[i + 1][0] if i + 1 < len(log) else t1
            lo, hi = max(t, t0), min(end, t1)
            if hi > lo:
                total += n * (hi - lo)
        return total

    # -- an attempt's life ------------------------------------------------------------------
    def send(self, now: float, attempt: Attempt) -> None:
        self.sent += 1
        rtt = self.physics.network_rtt_s * self.physics.slowdown_factor
        if not self.reachable or self._draws.fails(self.physics.failure_rate):
            self._q.at(now + rtt, self._fail, attempt, Failure.UNAVAILABLE, None)
            return
        delay = outbound_delay_s(self.physics) * self._draws.jitter(self.physics.jitter_ratio)
        self._q.at(now + delay, self._arrive, attempt)

    def abandon(self, now: float, attempt: Attempt) -> None:
        """The caller timed out before the first token: leave the queue or free the slot."""
        phase = attempt.phase
        attempt.phase = Phase.ABANDONED
        self.sent -= 1
        if phase is Phase.QUEUED:
            self.waiting.remove(attempt)
        elif phase is Phase.PREFILL:
            if attempt in self._prefill_waiting:
                self._prefill_waiting.remove(attempt)
            else:
                self._end_prefill(now)
            self._release(now)

    def _arrive(self, now: float, attempt: Attempt) -> None:
        if attempt.phase is not Phase.OUTBOUND:
            return  # abandoned on the way
        req = attempt.request
        back = self.physics.network_rtt_s * self.physics.slowdown_factor / 2.0
        if req.input_tokens + req.max_tokens > self.spec.context_windows.get(req.model, 0):
            self._q.at(now + back, self._fail, attempt, Failure.REJECTED, None)
            return
        if self._rpm is not None or self._tpm is not None:
            wait = self._take_rate_limit(now, req.input_tokens + req.max_tokens)
            if wait is not None:
                self.retry_after_until_s = now + wait
                self._q.at(now + back, self._fail, attempt, Failure.RATE_LIMITED, wait)
                return
        if self.running < self.slots and not self.waiting:
            self._admit(now, attempt)
        else:
            attempt.phase = Phase.QUEUED
            self.waiting.append(attempt)

    def _admit(self, now: float, attempt: Attempt) -> None:
        self._advance(now)
        self.running += 1
        self._set_rate(now)
        attempt.phase = Phase.PREFILL
        if self.prefilling < prefill_slots(self.physics) and not self._prefill_waiting:
            self._start_prefill(now, attempt)
        else:
            self._prefill_waiting.append(attempt)

    def _start_prefill(self, now: float, attempt: Attempt) -> None:
        self._advance(now)
        self.prefilling += 1
        self._set_rate(now)
        tokens = attempt.request.input_tokens
        if self.prefix_caches and attempt.request.prefix_blocks:
            attempt.cached_tokens = self._prefix_hit(attempt.request.prefix_blocks, tokens)
            tokens -= attempt.cached_tokens
        delay = first_token_delay_s(self.physics, tokens)
        self._q.at(now + delay * self._draws.jitter(self.physics.jitter_ratio), self._first_token, attempt)

    def _prefix_hit(self, blocks: tuple[int, ...], input_tokens: int) -> int:
        """Tokens of this prompt the chosen replica's cache serves; its blocks are cached there after."""
        caches = self.prefix_caches
        best, run = None, 0
        for cache in caches:
            r = cache.leading_run(blocks)
            if r > run:
                best, run = cache, r
        if best is None or run < MATCH_RATE_THRESHOLD * len(blocks):
            best = caches[self._next_replica]
            self._next_replica = (self._next_replica + 1) % len(caches)
        best.touch(blocks)
        return max(0, min(run * MOONCAKE_BLOCK_TOKENS, input_tokens - 1))

    def _end_prefill(self, now: float) -> None:
        """A lane is free: the next waiting prefill takes it, or decode speeds up again."""
        self._advance(now)
        self.prefilling -= 1
        if self._prefill_waiting and self.prefilling < prefill_slots(self.physics):
            self._start_prefill(now, self._prefill_waiting.popleft())
        else:
            self._set_rate(now)

    def _first_token(self, now: float, attempt: Attempt) -> None:
        if attempt.phase is not Phase.PREFILL:
            return  # abandoned while prefilling
        self._end_prefill(now)
        attempt.phase = Phase.DECODE
        attempt.first_token_s = now
        remaining = attempt.request.output_tokens - 1
        if remaining <= 0:
            self._finish(now, attempt)
            self._release(now)
            return
        self._advance(now)
        self._seq += 1
        heapq.heappush(self._decoding, (self._v + remaining, self._seq, attempt))
        self._schedule_completion(now)

    def _completion(self, now: float, version: int) -> None:
        if version != self._completion_version:
            return
        self._advance(now)
        finished = 0
        while self._decoding and self._decoding[0][0] <= self._v + EPSILON_TOKENS:
            _, _, attempt = heapq.heappop(self._decoding)
            self._finish(now, attempt)
            finished += 1
        self._release(now, finished)

    def _finish(self, now: float, attempt: Attempt) -> None:
        attempt.phase = Phase.DONE
        attempt.done_s = now
        self.sent -= 1
        self._cb.completed(now, attempt)

    def _fail(self, now: float, attempt: Attempt, failure: Failure, retry_after_s: float | None) -> None:
        if attempt.phase is Phase.ABANDONED:
            return
        attempt.phase = Phase.FAILED
        attempt.failure = failure
        attempt.retry_after_s = retry_after_s
        self.sent -= 1
        self._cb.failed(now, attempt)

    def _release(self, now: float, slots: int = 1) -> None:
        """Free ``slots`` slots, admit waiters FIFO, and re-time the next completion."""
        if slots:
            self._advance(now)
            self.running -= slots
        while self.waiting and self.running < self.slots:
            self._admit(now, self.waiting.popleft())
        self._set_rate(now)

    # -- the virtual decode clock -------------------------------------------------------------
    def _advance(self, now: float) -> None:
        dt = now - self._v_at
        if dt > 0:
            self._v += dt * self._v_rate
            self.busy_slot_s += dt * self.running
        self._v_at = now

    def _set_rate(self, now: float) -> None:
        # The rate is a function of the physics, the slots held and whether any prefill runs: kept
        # per (running, prefilling > 0) until the physics changes (it is set on most events).
        key = (self.running, self.prefilling > 0)
        rate = self._rates.get(key)
        if rate is None:
            rate = self._rates[key] = \
                decode_share(self.physics, self.prefilling) / decode_interval_s(self.physics, self.running)
        self._v_rate = rate
        self._schedule_completion(now)

    def _schedule_completion(self, now: float) -> None:
        self._completion_version += 1
        if self._decoding and self._v_rate > 0:  # at rate 0 (decode stalled) the next change re-times it
            dt = (self._decoding[0][0] - self._v) / self._v_rate
            self._q.at(now + (dt if dt > 0 else 0.0), self._completion, self._completion_version)

    # -- rate limits --------------------------------------------------------------------------
    def _refill(self, now: float) -> None:
        dt = now - self._bucket_at
        if dt > 0:
            if self._rpm is not None:
                self._req_level = min(float(self._rpm), self._req_level + dt * self._rpm / 60.0)
            if self._tpm is not None:
                self._tok_level = min(float(self._tpm), self._tok_level + dt * self._tpm / 60.0)
        self._bucket_at = now

    def _take_rate_limit(self, now: float, tokens: int) -> float | None:
        """Take one request and ``tokens`` from the buckets; None if taken, else Retry-After (s)."""
        self._refill(now)
        wait = 0.0
        if self._rpm is not None and self._req_level < 1.0:
            wait = max(wait, (1.0 - self._req_level) * 60.0 / self._rpm)
        if self._tpm is not None and self._tok_level < tokens:
            if tokens > self._tpm:
                wait = max(wait, 60.0)  # larger than a minute's allowance: refused every time
            else:
                wait = max(wait, (tokens - self._tok_level) * 60.0 / self._tpm)
        if wait > 0.0:
            return wait
        if self._rpm is not None:
            self._req_level -= 1.0
        if self._tpm is not None:
            self._tok_level -= tokens
        return None

    # -- what the adapter reports -------------------------------------------------------------
    def load(self, now: float) -> SubstrateReport:
        # A report is immutable: the last one is returned again while what it says is unchanged
        # (an idle substrate's heartbeats), instead of an equal one built anew.
        kind = self.spec.kind
        if kind == "openai_compatible":
            self._refill(now)
            until = self.retry_after_until_s
            key = (self.sent, self._req_level, self._tok_level, until if until is not None and until > now else None)
        else:
            key = (self.running, len(self.waiting))
        if key == self._last_load_key:
            return self._last_load
        self._last_load_key = key
        if kind == "vllm":
            running, waiting = key
            report = SubstrateReport(in_flight=running + waiting, queued=waiting,
                                     kv_cache_usage=min(1.0, running / (self.slots or 1)))
        elif kind == "openai_compatible":
            report = SubstrateReport(
                in_flight=key[0], queued=0,
                rate_limit_requests_remaining=None if self._rpm is None else key[1],
                rate_limit_tokens_remaining=None if self._tpm is None else key[2],
                retry_after_until_s=key[3],
            )
        else:
            report = SubstrateReport(in_flight=key[0], queued=key[1])
        self._last_load = report
        return report

    def busy_until(self, now: float) -> float:
        """Slot-seconds held since the start, up to ``now`` (for utilisation)."""
        self._advance(now)
        return self.busy_slot_s
