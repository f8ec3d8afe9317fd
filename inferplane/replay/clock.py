"""The simulated clock: a heap of timed callbacks. No wall clock anywhere in a replay.

``at(t, fn, *args)`` schedules ``fn(t, *args)``; ``run()`` pops events in (time, insertion order)
and advances ``now`` to each. Events at equal times run in the order they were scheduled, so a
replay is deterministic. Scheduling in the past is a bug and raises.

``at_each(fn, timed)`` schedules many events before the run, as many ``at`` calls in order would
(the same insertion order), but keeps them aside, sorted, instead of in the heap: a replay
schedules every arrival up front, and a heap holding them all makes every push and pop of the run
pay for their depth. ``run()`` takes the next event from the heap or from that lane, whichever
comes first in (time, insertion order), so the order is the one a single heap gives.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

_push = heapq.heappush


class EventQueue:
    __slots__ = ("_heap", "_lane", "_lane_next", "_seq", "now", "events_run", "_started")

    def __init__(self, start_s: float = 0.0) -> None:
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._lane: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        """Events scheduled by ``at_each``, sorted by (time, insertion order); ``_lane_next`` is the next."""
        self._lane_next = 0
        self._seq = 0
        self.now = start_s
        self.events_run = 0
        self._started = False

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        now = self.now
        if not t > now:
            if t < now - 1e-9:
                raise ValueError(f"event scheduled at {t:.6f}s, before now ({now:.6f}s)")
            t = now
        self._seq = seq = self._seq + 1
        _push(self._heap, (t, seq, fn, args))

    def at_each(self, fn: Callable[..., None], timed: Iterable[tuple[float, tuple[Any, ...]]]) -> None:
        """``at(t, fn, *args)`` for each ``(t, args)`` of ``timed``, in order; before ``run`` only."""
        if self._started:
            raise RuntimeError("at_each schedules before the run")
        now = self.now
        entries = []
        for t, args in timed:
            if not t > now:
                if t < now - 1e-9:
                    raise ValueError(f"event scheduled at {t:.6f}s, before now ({now:.6f}s)")
                t = now
            self._seq += 1
            entries.append((t, self._seq, fn, args))
        # (time, seq) decide the order alone, as in the heap: every seq is unique, so the tuples'
        # comparison never reaches the callbacks.
        self._lane = sorted(self._lane + entries)

    def __len__(self) -> int:
        return len(self._heap) + len(self._lane) - self._lane_next

    def run(self, on_step: Callable[[float], None] | None = None, step_every: int = 2048) -> None:
        """Run until no event is left; ``on_step(now)`` every ``step_every`` events (progress)."""
        self._started = True
        heap = self._heap
        pop = heapq.heappop
        lane = self._lane
        ahead = len(lane)
        i = self._lane_next
        # Counted in a local, written back at the end (nothing reads the count meanwhile).
        run = 0
        try:
            while True:
                if i < ahead and (not heap or lane[i] < heap[0]):
                    t, _, fn, args = lane[i]
                    i += 1
                elif heap:
                    t, _, fn, args = pop(heap)
                else:
                    break
                self.now = t
                fn(t, *args)
                run += 1
                if on_step is not None and (self.events_run + run) % step_every == 0:
                    on_step(t)
        finally:
            self.events_run += run
            self._lane_next = i
