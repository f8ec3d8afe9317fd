"""The emulated adapter, in virtual time: timing follows the physics, slots queue in FIFO order,
cancellation frees the slot, injected faults fail before the first token."""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from inferplane.config.schema import EmulatedSettings, ServedModel
from substrate_adapters.base import (
    AdapterLoad,
    ChatTurn,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from substrate_adapters.emulated import EmulatedAdapter, estimate_prompt_tokens
from substrate_adapters.errors import SubstrateRejectedRequest, SubstrateUnavailable

T = TypeVar("T")


class VirtualTime:
    """A clock and a sleep for one event loop. ``sleep(d)`` parks the caller until the test moves
    time past ``now + d``; ``run_until``/``finish`` move it, jumping from one wake-up to the next
    and letting every ready task run in between. No real time passes."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        assert delay >= 0, "the adapter asked to sleep a negative time"
        waker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + delay, next(self._seq), waker))
        await waker

    @staticmethod
    async def settle() -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def run_until(self, t: float) -> None:
        """Move time to ``t``, waking every sleeper due by then, in order."""
        await self.settle()
        while self._timers and self._timers[0][0] <= t:
            when, _, waker = heapq.heappop(self._timers)
            if waker.done():
                continue
            self.now = max(self.now, when)
            waker.set_result(None)
            await self.settle()
        self.now = max(self.now, t)

    async def finish(self, *aws: Awaitable[T]) -> list[T]:
        """Run ``aws`` to completion, moving time as far as they need."""
        tasks = [asyncio.ensure_future(a) for a in aws]
        while True:
            await self.settle()
            if all(t.done() for t in tasks):
                return [t.result() for t in tasks]
            live = [w for w in self._timers if not w[2].done()]
            if not live:
                raise AssertionError("deadlock: tasks wait but nobody sleeps")
            await self.run_until(min(live)[0])


PHYSICS: dict[str, Any] = dict(
    ttft_ms=100.0,
    network_rtt_ms=40.0,
    prefill_tokens_per_s=1000.0,
    decode_tokens_per_s=50.0,
    decode_slowdown_at_full_batch=3.0,
    max_concurrency=4,
)
"""rtt/2 = 0.02 s; ttft 0.1 s; 100 prompt tokens prefill in 0.1 s; one stream alone decodes at
50 / (1 + 2 * 1/4) = 33.3 tok/s, i.e. 0.03 s a token."""

PROMPT_100 = "x" * 396  # 396 // 4 + 1 = 100 estimated tokens


def adapter(
    vt: VirtualTime, *, name: str | None = "sov-emulated", **physics: Any
) -> EmulatedAdapter:
    settings = EmulatedSettings.model_validate(
        {"emulates": "Sovereign pool (test)", "physics": {**PHYSICS, **physics}}
    )
    models = [
        ServedModel(name="m", upstream_name="m-upstream", context_window_tokens=8192),
        ServedModel(name="other", context_window_tokens=4096),
    ]
    return EmulatedAdapter(models, settings, substrate_name=name, clock=vt.clock, sleep=vt.sleep)


def chat(
    max_tokens: int = 10, content: str = PROMPT_100, model: str = "m-upstream"
) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        model=model,
        api="chat",
        messages=(ChatTurn("user", content),),
        max_tokens=max_tokens,
    )


async def timed(
    vt: VirtualTime,
    events: AsyncIterator[GenerationEvent],
    on_event: Callable[[GenerationEvent], Awaitable[None]] | None = None,
) -> list[tuple[float, GenerationEvent]]:
    out = []
    async for event in events:
        out.append((vt.now, event))
        if on_event is not None:
            await on_event(event)
    return out


def text_of(events: list[tuple[float, GenerationEvent]]) -> str:
    return "".join(e.text for _, e in events if isinstance(e, TextDelta))


# ------------------------------------------------------------------------------------------------
# Timing


def test_first_token_and_every_next_token_follow_the_physics():
    async def main() -> list[tuple[float, GenerationEvent]]:
        vt = VirtualTime()
        (events,) = await vt.finish(timed(vt, adapter(vt).generate(chat(max_tokens=10))))
        return events

    events = asyncio.run(main())
    deltas = [(t, e) for t, e in events if isinstance(e, TextDelta)]
    # outbound 0.02, then 0.02 + 0.1 + 100/1000 = 0.22: first token at 0.24; then 0.03 apart.
    assert [t for t, _ in deltas] == pytest.approx([0.24 + 0.03 * i for i in range(10)])
    finished_at, finished = events[-1]
    assert finished == Finished("length", prompt_tokens=100, completion_tokens=10)
    assert finished_at == pytest.approx(0.24 + 9 * 0.03)


def test_fast_decode_batches_tokens_per_sleep_but_keeps_the_total_time():
    async def main() -> list[tuple[float, GenerationEvent]]:
        vt = VirtualTime()
        fast = adapter(vt, decode_tokens_per_s=2000.0, decode_slowdown_at_full_batch=1.0)
        (events,) = await vt.finish(timed(vt, fast.generate(chat(max_tokens=101))))
        return events

    events = asyncio.run(main())
    deltas = [e for _, e in events if isinstance(e, TextDelta)]
    assert len(deltas) <= 12  # 100 tokens at 0.5 ms each, >= 5 ms per sleep
    assert len(text_of(events).split()) == 101
    assert events[-1][1] == Finished("length", 100, 101)
    assert events[-1][0] == pytest.approx(0.24 + 100 * 0.0005)


def test_a_slow_consumer_does_not_push_the_schedule_back():
    async def main() -> list[tuple[float, GenerationEvent]]:
        vt = VirtualTime()
        paused = False

        async def pause_once(event: GenerationEvent) -> None:
            nonlocal paused
            if not paused:
                paused = True
                await vt.sleep(0.1)

        (events,) = await vt.finish(timed(vt, adapter(vt).generate(chat(10)), pause_once))
        return events

    events = asyncio.run(main())
    # Tokens due during the pause come out at once; the stream still ends on the physics schedule.
    assert events[-1][0] == pytest.approx(0.24 + 9 * 0.03)


def test_set_slowdown_multiplies_every_duration():
    async def main() -> list[tuple[float, GenerationEvent]]:
        vt = VirtualTime()
        slow = adapter(vt)
        slow.set_slowdown(2.0)
        (events,) = await vt.finish(timed(vt, slow.generate(chat(max_tokens=10))))
        return events

    events = asyncio.run(main())
    first = next(t for t, e in events if isinstance(e, TextDelta))
    assert first == pytest.approx(2 * 0.24)
    assert events[-1][0] == pytest.approx(2 * (0.24 + 9 * 0.03))


def test_jitter_is_seeded_and_bounded():
    async def run(seed: int) -> list[float]:
        vt = VirtualTime()
        jittery = adapter(vt, jitter_ratio=0.2, seed=seed)
        (events,) = await vt.finish(timed(vt, jittery.generate(chat(max_tokens=10))))
        return [t for t, _ in events]

    a, b, c = asyncio.run(run(5)), asyncio.run(run(5)), asyncio.run(run(6))
    assert a == b
    assert a != c
    assert 0.24 * 0.8 <= a[0] <= 0.24 * 1.2  # outbound and first-token delays, each jittered
    gaps = [y - x for x, y in itertools.pairwise(a[:-1])]
    assert all(0.03 * 0.8 - 1e-9 <= g <= 0.03 * 1.2 + 1e-9 for g in gaps)
    assert len(set(round(g, 9) for g in gaps)) > 1


# ------------------------------------------------------------------------------------------------
# Admission and load


def test_requests_beyond_max_concurrency_queue_in_fifo_order():
    async def main() -> tuple[AdapterLoad, AdapterLoad, list[list[tuple[float, GenerationEvent]]]]:
        vt = VirtualTime()
        emu = adapter(vt, max_concurrency=2, decode_slowdown_at_full_batch=1.0)  # 0.02 s a token
        tasks = [asyncio.ensure_future(timed(vt, emu.generate(chat(10)))) for _ in range(3)]
        await vt.run_until(0.3)
        during = emu.load()
        results = await vt.finish(*tasks)
        return during, emu.load(), results

    during, after, (a, b, c) = asyncio.run(main())
    assert during == AdapterLoad(in_flight=2, queued=1)
    assert after == AdapterLoad(in_flight=0, queued=0)
    # A and B end at 0.24 + 9 * 0.02 = 0.42; C is admitted then and starts from scratch.
    assert a[-1][0] == pytest.approx(0.42) and b[-1][0] == pytest.approx(0.42)
    assert c[0][0] == pytest.approx(0.42 + 0.22)
    assert c[-1][0] == pytest.approx(0.42 + 0.22 + 9 * 0.02)


def test_queue_is_first_come_first_served():
    async def main() -> list[int]:
        vt = VirtualTime()
        emu = adapter(vt, max_concurrency=1, network_rtt_ms=0.0)
        order: list[int] = []

        async def run(i: int) -> None:
            async for event in emu.generate(chat(3)):
                if isinstance(event, Finished):
                    order.append(i)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.ensure_future(run(i)))
            await vt.settle()
        await vt.run_until(0.01)
        assert emu.load() == AdapterLoad(in_flight=1, queued=4)
        await vt.finish(*tasks)
        return order

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_decode_slows_as_more_requests_run():
    async def main() -> tuple[float, float]:
        vt = VirtualTime()
        alone = adapter(vt)
        (solo,) = await vt.finish(timed(vt, alone.generate(chat(10))))
        vt2 = VirtualTime()
        crowded = adapter(vt2)
        results = await vt2.finish(*[timed(vt2, crowded.generate(chat(10))) for _ in range(4)])
        return solo[-1][0], results[0][-1][0]

    solo_end, crowded_end = asyncio.run(main())
    assert solo_end == pytest.approx(0.24 + 9 * 0.03)  # 1 of 4 slots: 50 / 1.5 tok/s
    assert crowded_end == pytest.approx(0.24 + 9 * 0.06)  # 4 of 4 slots: 50 / 3 tok/s


def test_one_prefill_lane_serialises_first_tokens():
    async def main(lanes: int | None) -> list[float]:
        vt = VirtualTime()
        a = adapter(vt, prefill_concurrency=lanes)
        runs = await vt.finish(*(timed(vt, a.generate(chat(max_tokens=1))) for _ in range(2)))
        return [events[0][0] for events in runs]

    # Both admitted at 0.02; the first holds the lane 0.22 s (first token 0.24), the second takes it
    # then: 0.24 + 0.22 = 0.46. With a lane per slot, both at 0.24.
    assert asyncio.run(main(1)) == pytest.approx([0.24, 0.46])
    assert asyncio.run(main(None)) == pytest.approx([0.24, 0.24])


@pytest.mark.parametrize(("share", "a_done"), [(1.0, 0.44), (0.0, 0.66), (0.5, 0.55)])
def test_a_stream_loses_its_share_of_decode_while_another_request_prefills(share, a_done):
    async def main() -> float:
        vt = VirtualTime()
        a = adapter(vt, decode_slowdown_at_full_batch=1.0, prefill_concurrency=1,
                    decode_share_during_prefill=share)

        async def later() -> list[tuple[float, GenerationEvent]]:
            await vt.sleep(0.3)
            return await timed(vt, a.generate(chat(max_tokens=1)))

        first, _ = await vt.finish(timed(vt, a.generate(chat(max_tokens=11))), later())
        return first[-1][0]

    # A: first token 0.24, then 10 tokens 0.02 s apart: alone, done at 0.44. B is sent at 0.3 and
    # holds the lane from 0.32 to 0.54 (0.22 s); A loses (1 - share) * 0.22 s of decode.
    assert asyncio.run(main()) == pytest.approx(a_done)


# ------------------------------------------------------------------------------------------------
# Cancellation


def test_closing_the_stream_frees_the_slot_at_once():
    async def main() -> None:
        vt = VirtualTime()
        emu = adapter(vt, max_concurrency=1, decode_slowdown_at_full_batch=1.0)
        first = emu.generate(chat(10))
        (delta,) = await vt.finish(anext(first))
        assert isinstance(delta, TextDelta) and vt.now == pytest.approx(0.24)
        assert emu.load() == AdapterLoad(in_flight=1, queued=0)
        second = asyncio.ensure_future(timed(vt, emu.generate(chat(10))))
        await vt.run_until(0.3)  # it reaches the substrate at 0.24 + 0.02 and queues
        assert emu.load() == AdapterLoad(in_flight=1, queued=1)

        await first.aclose()  # the client went away
        assert vt.now == pytest.approx(0.3)
        assert emu.load() == AdapterLoad(in_flight=1, queued=0)  # the slot went to the next in line
        (events,) = await vt.finish(second)
        assert events[0][0] == pytest.approx(0.3 + 0.22)  # not after the closed stream's end
        assert emu.load() == AdapterLoad(in_flight=0, queued=0)

    asyncio.run(main())


def test_cancelling_a_running_task_frees_the_slot():
    async def main() -> None:
        vt = VirtualTime()
        emu = adapter(vt, max_concurrency=1)
        running = asyncio.ensure_future(timed(vt, emu.generate(chat(10))))
        await vt.run_until(0.1)  # admitted, waiting for its first token
        assert emu.load() == AdapterLoad(in_flight=1, queued=0)
        running.cancel()
        await vt.settle()
        assert running.cancelled()
        assert emu.load() == AdapterLoad(in_flight=0, queued=0)

    asyncio.run(main())


def test_cancelling_a_queued_task_leaves_the_queue_without_taking_a_slot():
    async def main() -> None:
        vt = VirtualTime()
        emu = adapter(vt, max_concurrency=1, decode_slowdown_at_full_batch=1.0)
        running = asyncio.ensure_future(timed(vt, emu.generate(chat(10))))
        waiting = asyncio.ensure_future(timed(vt, emu.generate(chat(10))))
        await vt.run_until(0.1)
        assert emu.load() == AdapterLoad(in_flight=1, queued=1)
        waiting.cancel()
        await vt.settle()
        assert emu.load() == AdapterLoad(in_flight=1, queued=0)
        await vt.finish(running)
        assert emu.load() == AdapterLoad(in_flight=0, queued=0)
        # The slot is free for the next request, which starts at once.
        start = vt.now
        (events,) = await vt.finish(timed(vt, emu.generate(chat(1))))
        assert events[0][0] == pytest.approx(start + 0.24)

    asyncio.run(main())


def test_a_waiter_cancelled_just_after_it_was_handed_the_slot_passes_it_on():
    async def main() -> None:
        vt = VirtualTime()
        emu = adapter(vt, max_concurrency=1)
        first = emu.generate(chat(10))
        await vt.finish(anext(first))
        second = asyncio.ensure_future(timed(vt, emu.generate(chat(10))))
        await vt.settle()
        third = asyncio.ensure_future(timed(vt, emu.generate(chat(10))))
        await vt.run_until(vt.now + 0.05)
        assert emu.load() == AdapterLoad(in_flight=1, queued=2)

        await first.aclose()  # hands the slot to `second`...
        second.cancel()  # ...which is cancelled before it ever runs
        await vt.settle()
        assert emu.load() == AdapterLoad(in_flight=1, queued=0)  # `third` holds it, none leaked
        (events,) = await vt.finish(third)
        assert isinstance(events[-1][1], Finished)
        assert emu.load() == AdapterLoad(in_flight=0, queued=0)

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# Injected faults


def _fails_before_any_delta(emu: EmulatedAdapter, vt: VirtualTime) -> bool:
    received: list[GenerationEvent] = []

    async def main() -> None:
        async for event in emu.generate(chat(5)):
            received.append(event)

    try:
        asyncio.run(vt.finish(main()))
    except SubstrateUnavailable:
        assert received == []
        assert emu.load() == AdapterLoad(in_flight=0, queued=0)
        return True
    assert isinstance(received[-1], Finished)
    return False


def test_outage_fails_every_request_before_the_first_token_until_lifted():
    vt = VirtualTime()
    emu = adapter(vt)
    emu.set_outage(True)
    assert all(_fails_before_any_delta(emu, vt) for _ in range(5))
    emu.set_outage(False)
    assert not _fails_before_any_delta(emu, vt)


def test_set_failure_rate_one_fails_every_request_and_zero_none():
    vt = VirtualTime()
    emu = adapter(vt)
    emu.set_failure_rate(1.0)
    assert all(_fails_before_any_delta(emu, vt) for _ in range(5))
    emu.set_failure_rate(0.0)
    assert not any(_fails_before_any_delta(emu, vt) for _ in range(5))


def test_configured_failure_rate_is_drawn_from_the_seed():
    def outcomes(seed: int) -> list[bool]:
        vt = VirtualTime()
        emu = adapter(vt, failure_rate=0.5, seed=seed)
        return [_fails_before_any_delta(emu, vt) for _ in range(40)]

    a = outcomes(21)
    assert a == outcomes(21)
    assert 5 < sum(a) < 35  # both outcomes happen
    assert a != outcomes(22)


@pytest.mark.parametrize("factor", [0.5, 0.0, float("nan"), float("inf")])
def test_set_slowdown_refuses_a_speed_up_or_nonsense(factor):
    with pytest.raises(ValueError):
        adapter(VirtualTime()).set_slowdown(factor)


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_set_failure_rate_refuses_rates_outside_zero_one(rate):
    with pytest.raises(ValueError):
        adapter(VirtualTime()).set_failure_rate(rate)


# ------------------------------------------------------------------------------------------------
# Requests, text and usage


def test_unknown_model_is_rejected_without_taking_a_slot():
    async def main() -> None:
        vt = VirtualTime()
        emu = adapter(vt)
        for model in ("nope", "m"):  # `m` is the public name; the adapter takes upstream names
            with pytest.raises(SubstrateRejectedRequest) as info:
                await anext(emu.generate(chat(model=model)))
            assert not info.value.retryable
        assert emu.load() == AdapterLoad(in_flight=0, queued=0)
        # A model without an upstream name is known by its name.
        (events,) = await vt.finish(timed(vt, emu.generate(chat(2, model="other"))))
        assert isinstance(events[-1][1], Finished)

    asyncio.run(main())


def test_the_text_says_it_is_emulated_one_word_per_token():
    async def main() -> list[tuple[float, GenerationEvent]]:
        vt = VirtualTime()
        (events,) = await vt.finish(timed(vt, adapter(vt).generate(chat(16))))
        return events

    events = asyncio.run(main())
    words = text_of(events).split(" ")
    assert words[0] == "[emulated:sov-emulated]"
    assert words.count("[emulated:sov-emulated]") >= 2  # the marker recurs through long text
    assert all(w for w in words)
    assert len(words) == 16 == events[-1][1].completion_tokens


def test_without_a_substrate_name_the_label_comes_from_emulates():
    async def main() -> str:
        vt = VirtualTime()
        (events,) = await vt.finish(timed(vt, adapter(vt, name=None).generate(chat(1))))
        return text_of(events)

    assert asyncio.run(main()) == "[emulated:sovereign-pool-test]"


def test_completion_requests_work_and_prompt_tokens_are_estimated():
    completion = GenerationRequest(
        request_id="c", model="m-upstream", api="completion", prompt="y" * 41, max_tokens=3
    )
    assert estimate_prompt_tokens(completion) == 11
    two_turns = GenerationRequest(
        request_id="t",
        model="m-upstream",
        api="chat",
        max_tokens=1,
        messages=(ChatTurn("system", "abc"), ChatTurn("user", "x" * 8)),
    )
    assert estimate_prompt_tokens(two_turns) == (0 + 1) + (2 + 1)

    async def main() -> list[tuple[float, GenerationEvent]]:
        vt = VirtualTime()
        (events,) = await vt.finish(timed(vt, adapter(vt).generate(completion)))
        return events

    events = asyncio.run(main())
    assert events[-1][1] == Finished("length", 11, 3)
    # 11 prompt tokens prefill in 0.011 s: first token at 0.02 + 0.02 + 0.1 + 0.011
    assert events[0][0] == pytest.approx(0.151)


@pytest.mark.parametrize(
    "request_",
    [
        GenerationRequest(request_id="r", model="m-upstream", api="chat", max_tokens=5),
        GenerationRequest(request_id="r", model="m-upstream", api="completion", max_tokens=5),
        GenerationRequest(
            request_id="r", model="m-upstream", api="completion", prompt="p", max_tokens=0
        ),
    ],
)
def test_malformed_requests_are_rejected(request_):
    async def main() -> None:
        await anext(adapter(VirtualTime()).generate(request_))

    with pytest.raises(SubstrateRejectedRequest):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": float("nan")}, "top_p must be in (0, 1]"),
        ({"temperature": 2.5}, "temperature must be in [0, 2]"),
        ({"temperature": -0.1}, "temperature must be in [0, 2]"),
        ({"stop": ("",)}, "stop cannot contain an empty string"),
        ({"stop": ("a", "b", "c", "d", "e")}, "at most 4 stop sequences"),
        ({"seed": 2**70}, "seed must be a signed 64-bit integer"),
        ({"seed": -(2**63) - 1}, "seed must be a signed 64-bit integer"),
    ],
)
def test_sampling_values_an_engine_refuses_are_rejected_before_taking_a_slot(values, reason):
    """An emulation refuses what vLLM refuses, as the request's fault (not retryable), instead of
    answering 200 where the real engine would not."""

    async def main() -> SubstrateRejectedRequest:
        vt = VirtualTime()
        emu = adapter(vt)
        with pytest.raises(SubstrateRejectedRequest) as info:
            await vt.finish(timed(vt, emu.generate(dataclasses.replace(chat(2), **values))))
        assert emu.load() == AdapterLoad(in_flight=0, queued=0) and vt.now == 0.0  # before any physics
        return info.value

    err = asyncio.run(main())
    assert not err.retryable and err.status == 400 and reason in str(err)


def test_edge_sampling_values_are_served():
    async def main() -> list[tuple[float, GenerationEvent]]:
        vt = VirtualTime()
        edge = dataclasses.replace(chat(2), top_p=1.0, temperature=0.0, seed=2**63 - 1,
                                   stop=("§", "¶", "†", "‡"))  # not in the filler: nothing to cut
        (events,) = await vt.finish(timed(vt, adapter(vt).generate(edge)))
        return events

    assert asyncio.run(main())[-1][1] == Finished("length", 100, 2)


def test_an_emulation_reports_the_prompt_tokens_the_plane_counted():
    """The plane counts with the model's tokenizer; an emulation has none, so it reports that count
    (2,000 emoji are 6,000 tokens, not the 501 its own estimate would say)."""
    counted = GenerationRequest(request_id="r", model="m", api="completion", prompt="\U0001f99c" * 2000,
                                counted_prompt_tokens=6000)
    assert estimate_prompt_tokens(counted) == 6000
    assert estimate_prompt_tokens(dataclasses.replace(counted, counted_prompt_tokens=None)) == 2000 // 4 + 1
