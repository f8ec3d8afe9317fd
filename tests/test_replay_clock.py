"""The simulated clock: events run in (time, insertion order), however they were scheduled."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferplane.replay.clock import EventQueue

_times = st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0 + 1e-12, 2.0, 3.5]), max_size=12)


def _run(up_front: list[float], in_lane: list[float], later: list[float], *, lane: bool) -> list[tuple]:
    """Schedules ``up_front`` with ``at``, then ``in_lane`` (with ``at_each`` when ``lane``, else
    with ``at``); every event run schedules one of ``later`` 0.5 s on (events at equal times too)."""
    q = EventQueue(0.0)
    ran: list[tuple] = []
    spawned = iter(later)

    def event(now: float, name: str) -> None:
        ran.append((now, name))
        delay = next(spawned, None)
        if delay is not None:
            q.at(now + delay, event, f"after {name}")

    for k, t in enumerate(up_front):
        q.at(t, event, f"first {k}")
    if lane:
        q.at_each(event, ((t, (f"lane {k}",)) for k, t in enumerate(in_lane)))
    else:
        for k, t in enumerate(in_lane):
            q.at(t, event, f"lane {k}")
    assert len(q) == len(up_front) + len(in_lane)
    q.run()
    assert len(q) == 0 and q.events_run == len(ran)
    return ran


@given(_times, _times, st.lists(st.sampled_from([0.0, 0.5, 1.0]), max_size=12))
def test_events_scheduled_together_run_as_if_scheduled_one_by_one(up_front, in_lane, later):
    assert _run(up_front, in_lane, later, lane=True) == _run(up_front, in_lane, later, lane=False)


def test_at_each_refuses_the_past_and_a_running_queue():
    q = EventQueue(5.0)
    with pytest.raises(ValueError):
        q.at_each(lambda now: None, [(4.0, ())])
    q.at_each(lambda now: None, [(5.0 - 1e-12, ())])  # within the tolerance: runs at now
    q.run()
    assert q.now == 5.0
    with pytest.raises(RuntimeError):
        q.at_each(lambda now: None, [(6.0, ())])
