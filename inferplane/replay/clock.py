"""The simulated clock: a heap of timed callbacks. No wall clock anywhere in a replay.

``at(t, fn, *args)`` schedules ``fn(t, *args)``; ``run()`` pops events in (time, insertion order)
and advances ``now`` to each. Events at equal times run in the order they were scheduled, so a
replay is deterministic. Scheduling in the past is a bug and raises.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

_push = heapq.heappush


class EventQueue:
    __slots__ = ("_heap", "_seq", "now", "events_run")

    def __init__(self, start_s: float = 0.0) -> None:
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.now = start_s
        self.events_run = 0

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        now = self.now
        if not t > now:
            if t < now - 1e-9:
                raise ValueError(f"event scheduled at {t:.6f}s, before now ({now:.6f}s)")
            t = now
        self._seq = seq = self._seq + 1
        _push(self._heap, (t, seq, fn, args))

    def __len__(self) -> int:
        return len(self._heap)

    def run(self, on_step: Callable[[float], None] | None = None, step_every: int = 2048) -> None:
        """Run until no event is left; ``on_step(now)`` every ``step_every`` events (progress)."""
        heap = self._heap
        pop = heapq.heappop
        if on_step is None:
            # Counted in a local, written back at the end (nothing reads the count meanwhile).
            run = 0
            try:
                while heap:
                    t, _, fn, args = pop(heap)
                    self.now = t
                    fn(t, *args)
                    run += 1
            finally:
                self.events_run += run
            return
        while heap:
            t, _, fn, args = pop(heap)
            self.now = t
            fn(t, *args)
            self.events_run += 1
            if self.events_run % step_every == 0:
                on_step(t)
