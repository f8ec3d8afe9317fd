"""The plane core on its own: a replica's placement state and the attempt loop, no Ray, no clock."""

from __future__ import annotations

import pytest

from inferplane.fleet_state import PublishedSnapshot
from inferplane.plane.attempts import AttemptLoop, Dispatch, FirstByteFailure, Refusal
from inferplane.plane.state import ReplicaState, Unavailable
from tests.builders import NOW, fleet, request, signals, substrate


def _two_pools():
    """``p``: the primary (2 slots); ``s``: a spillover target in the same jurisdiction."""
    return fleet(
        substrate("p").cls("gpu_cluster").jurisdiction("DE").capacity(2),
        substrate("s").cls("sovereign_onprem").jurisdiction("DE").capacity(8),
    ).model("m", primary="p").spillover(classes=["sovereign_onprem"]).build()


def _published(built, version=1, at=NOW, in_flight=None) -> PublishedSnapshot:
    in_flight = in_flight or {}
    sigs = tuple(signals(in_flight=in_flight.get(s.name, 0.0), now=at) for s in built.fleet.substrates)
    return PublishedSnapshot(version, at, built.policy.policy_hash, sigs)


def _state(built, **published) -> ReplicaState:
    state = ReplicaState(built.fleet, built.policy)
    report = state.take_report(NOW)
    assert state.publish(_published(built, **published), report)
    return state


def test_no_snapshot_or_a_stale_one_fails_closed():
    built = _two_pools()
    state = ReplicaState(built.fleet, built.policy)
    assert isinstance(state.view(NOW), Unavailable)
    state = _state(built)
    bound = built.policy.snapshot_staleness_bound_s
    assert not isinstance(state.view(NOW + bound), Unavailable)
    late = state.view(NOW + bound + 0.001)
    assert isinstance(late, Unavailable) and "failing closed" in late.message
    step = AttemptLoop(state, request(model="m", now=NOW + bound + 1)).start()
    assert isinstance(step, Refusal) and (step.status, step.code) == (503, "placement_unavailable")


def test_own_dispatches_count_until_released_exactly_once():
    built = _two_pools()
    state = _state(built)
    leases = [state.lease("p") for _ in range(2)]
    assert state.view(NOW).signals[0].in_flight.value == 2
    # The primary is full in this replica's view before any sync says so: the next one spills.
    step = AttemptLoop(state, request(model="m")).start()
    assert isinstance(step, Dispatch) and step.substrate == "s" and step.decision.spillover
    leases[0].release()
    leases[0].release()  # idempotent: a second release changes nothing
    assert state.in_flight() == {"p": 1, "s": 1}
    assert state.view(NOW).signals[0].in_flight.value == 1


def test_a_sync_replaces_the_reported_counts_not_adds_to_them():
    built = _two_pools()
    state = ReplicaState(built.fleet, built.policy)
    lease = state.lease("p")
    report = state.take_report(NOW)
    assert report.in_flight == {"p": 1}
    # The authority's snapshot already includes this replica's one request, plus one of another.
    assert state.publish(_published(built, in_flight={"p": 2.0}), report)
    assert state.view(NOW).signals[0].in_flight.value == 2
    lease.release()
    assert state.view(NOW).signals[0].in_flight.value == 1


def test_a_snapshot_of_another_config_is_refused():
    built = _two_pools()
    state = ReplicaState(built.fleet, built.policy)
    other = PublishedSnapshot(1, NOW, "another-config", _published(built).signals)
    assert not state.publish(other, state.take_report(NOW))
    assert state.snapshot is None


def test_a_failed_sync_loses_no_outcome_or_spend():
    built = _two_pools()
    state = _state(built)
    loop = AttemptLoop(state, request(model="m"))
    assert isinstance(loop.start(), Dispatch)
    loop.finished(True, NOW + 0.5, 10, NOW + 1.0)
    state.add_spend("t", 0.25)
    first = state.take_report(NOW + 1)
    assert len(first.outcomes) == 1 and first.spend_usd == {"t": 0.25}
    state.restore(first)  # the sync did not reach the authority
    state.add_spend("t", 0.5)
    second = state.take_report(NOW + 2)
    assert second.outcomes == first.outcomes and second.spend_usd == {"t": 0.75}
    assert state.take_report(NOW + 3).outcomes == []


def test_a_retry_is_placed_at_its_own_time_excluding_what_failed():
    built = _two_pools()
    state = _state(built)
    loop = AttemptLoop(state, request(model="m", now=NOW))
    first = loop.start()
    assert isinstance(first, Dispatch) and first.substrate == "p"
    retry = loop.failed(FirstByteFailure("unavailable", "503 from p", True, retry_after_s=2.0), NOW + 0.7)
    assert isinstance(retry, Dispatch) and retry.substrate == "s"
    assert retry.decision.attempt == 2 and retry.dispatched_at_s == NOW + 0.7
    assert loop.request.arrived_at_s == NOW + 0.7 and loop.request.exclude == frozenset({"p"})
    assert state.in_flight() == {"p": 0, "s": 1}
    (outcome,) = state.take_report(NOW + 1).outcomes
    assert (outcome.substrate, outcome.ok, outcome.retry_after_s) == ("p", False, 2.0)
    # Both failed: refused, never placed outside the candidate set.
    final = loop.failed(FirstByteFailure("unavailable", "503 from s", True), NOW + 1.0)
    assert isinstance(final, Refusal) and final.status == 503 and final.decision.attempt == 3
    assert state.in_flight() == {"p": 0, "s": 0}


def test_a_request_the_substrate_refuses_is_400_and_never_held_against_it():
    built = _two_pools()
    state = _state(built)
    loop = AttemptLoop(state, request(model="m"))
    loop.start()
    step = loop.failed(FirstByteFailure("SubstrateRejectedRequest", "stop: empty string", False), NOW + 0.1)
    assert isinstance(step, Refusal) and (step.status, step.code) == (400, "substrate_rejected_request")
    assert state.take_report(NOW + 1).outcomes == []  # nothing against the substrate's health
    assert state.in_flight() == {"p": 0}


def test_finished_reports_ttft_from_dispatch_and_abandoned_reports_nothing():
    built = _two_pools()
    state = _state(built)
    loop = AttemptLoop(state, request(model="m", now=NOW))
    loop.start()
    loop.finished(True, NOW + 0.25, 11, NOW + 1.25)
    (o,) = state.take_report(NOW + 2).outcomes
    assert o.ttft_s == pytest.approx(0.25) and o.tpot_s == pytest.approx(0.1)
    other = AttemptLoop(state, request(request_id="req-2", model="m", now=NOW))
    other.start()
    other.abandoned()
    other.abandoned()  # nothing in flight any more: a no-op
    assert state.take_report(NOW + 3).outcomes == [] and state.in_flight() == {"p": 0}
    with pytest.raises(RuntimeError):
        other.finished(True, NOW, 1, NOW)


def _synced_pair(built, limit_name: str):
    """Two replicas syncing with one authority, the substrate ``limit_name`` reporting idle."""
    from inferplane.fleet_state import FleetState, SubstrateReport

    authority = FleetState(built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s)
    for s in built.fleet.substrates:
        authority.report_substrate(s.name, "r0", SubstrateReport(in_flight=0), NOW)
    replicas = {rid: ReplicaState(built.fleet, built.policy, replica_id=rid) for rid in ("ingress-a", "ingress-b")}

    def sync(now: float) -> None:
        reports = {rid: state.take_report(now) for rid, state in replicas.items()}
        for rid, report in reports.items():
            authority.report_ingress(rid, report.in_flight, report.outcomes, now)
        for rid, state in replicas.items():  # both hear of both
            assert state.publish(authority.snapshot(now), reports[rid])

    return replicas, sync


@pytest.mark.parametrize("free", [1, 2, 5, 8])
def test_two_replicas_between_syncs_never_overshoot_a_pool(free: int):
    """Each replica fills only its share of the free slots until the next sync; together they fill
    the pool exactly, never more, whatever the remainder."""
    built = fleet(substrate("p").cls("gpu_cluster").jurisdiction("DE").capacity(free)).model("m", primary="p").build()
    replicas, sync = _synced_pair(built, "p")
    sync(NOW)
    sync(NOW + 0.1)
    placed = 0
    for state in replicas.values():
        while isinstance(AttemptLoop(state, request(model="m", request_id=f"r{placed}",
                                                    now=NOW + 0.15)).start(), Dispatch):
            placed += 1
    assert placed == free
    # After the next sync each sees the pool full; releasing one frees it for a single replica.
    sync(NOW + 0.2)
    assert all(isinstance(AttemptLoop(s, request(model="m", now=NOW + 0.25)).start(), Refusal)
               for s in replicas.values())


@pytest.mark.parametrize(("free", "waiting", "expected"), [
    (5, {}, {"a": 3, "b": 2}),                                      # nobody waits: evenly, remainder by rank
    (4, {"b": {80: 3}}, {"a": 1, "b": 3}),                          # b's waiting requests first
    (4, {"a": {20: 4}, "b": {80: 3}}, {"a": 1, "b": 3}),            # higher priority first, whoever holds it
    (3, {"a": {80: 2}, "b": {80: 4}}, {"a": 1, "b": 2}),            # one priority wants more: by what each holds
    (0, {"a": {80: 2}}, {"a": 0, "b": 0}),
])
def test_free_slots_go_to_the_highest_priority_waiting_first(free, waiting, expected):
    from inferplane.fleet_state import share_of_free_slots

    for version in range(4):  # every version splits the same total; the remainder rotates
        share = share_of_free_slots(free, ("a", "b"), waiting, version)
        assert sum(share.values()) == free
        if version == 0:
            assert share == expected


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9), st.lists(st.tuples(st.sampled_from(["sync", "place", "finish"]), st.integers(0, 2)),
                                   min_size=1, max_size=120))
def test_any_interleaving_of_syncs_and_dispatches_stays_within_the_pool(limit: int, ops):
    """Three replicas joining, placing, finishing and syncing in any order never hold more than the
    pool admits in total: each admits only within its grant, grants never sum past the limit, and
    a replica that joins gets none while another may still be placing without one."""
    from inferplane.fleet_state import FleetState, SubstrateReport

    built = fleet(substrate("p").cls("gpu_cluster").jurisdiction("DE").capacity(limit)).model("m", primary="p").build()
    authority = FleetState(built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s)
    authority.report_substrate("p", "r0", SubstrateReport(in_flight=0), NOW)
    replicas = [ReplicaState(built.fleet, built.policy, replica_id=f"ingress-{i}") for i in range(3)]
    held: list[list] = [[], [], []]
    now = NOW
    for op, i in ops:
        now += 0.01
        state = replicas[i]
        if op == "sync":
            report = state.take_report(now)
            authority.report_ingress(state.replica_id, report.in_flight, report.outcomes, now)
            state.publish(authority.snapshot(now), report)
        elif op == "place" and state.snapshot is not None:
            step = AttemptLoop(state, request(model="m", request_id=f"r{now}", now=now)).start()
            if isinstance(step, Dispatch):
                held[i].append(step)
        elif op == "finish" and held[i]:
            held[i].pop(0).lease.release()
        assert sum(map(len, held)) <= limit


def test_a_grant_holds_back_admission_but_not_the_prediction():
    """Two replicas on a pool of 4 + 8 queued: each is granted 6. The view's counts stay the real
    ones (the other replica's grant is not load: a prediction made on it would see a queue that is
    not there); only admission ends at the grant."""
    built = fleet(substrate("p").cls("gpu_cluster").jurisdiction("DE").capacity(4, queued=8)).model(
        "m", primary="p").build()
    replicas, sync = _synced_pair(built, "p")
    sync(NOW)
    sync(NOW + 0.1)
    state = replicas["ingress-a"]
    assert state.view(NOW + 0.1).signals[0].in_flight.value == 0
    placed = []
    while isinstance(step := AttemptLoop(state, request(model="m", request_id=f"r{len(placed)}",
                                                         now=NOW + 0.15)).start(), Dispatch):
        if len(placed) < 4:  # below the 4 running slots: no queue to predict
            assert step.decision.predicted_ttft_s < 0.5, "predicted on the real count, not on grants"
        placed.append(step)
    assert len(placed) == 6
    assert step.decision.rejection_code.value == "held_back"
    assert "holds its grant of 6 slot(s)" in step.decision.rejection_message


def test_the_replica_places_with_the_output_lengths_the_authority_learned():
    built = _two_pools()
    state = ReplicaState(built.fleet, built.policy)
    published = PublishedSnapshot(1, NOW, built.policy.policy_hash, _published(built).signals,
                                  expected_output_tokens={("t", "m"): 20.0})
    assert state.publish(published, state.take_report(NOW))
    assert state.snapshot.expected_output_tokens == {("t", "m"): 20.0}
    learned = AttemptLoop(state, request(model="m", max_output_tokens=2000)).start()
    fresh = ReplicaState(built.fleet, built.policy)
    assert fresh.publish(_published(built), fresh.take_report(NOW))
    unknown = AttemptLoop(fresh, request(model="m", max_output_tokens=2000)).start()
    assert learned.decision.predicted_e2e_s < unknown.decision.predicted_e2e_s


# -- holding for a new replica (sla_classes[].while_scaling_up) ----------------------------------


def _scaling_pools():
    """``p`` (2 slots, idle first token 0.2 s for 1,000 tokens) and ``s``; `interactive` holds while
    ``p`` scales up, `batch` spills; both have a 1.5 s first-token deadline."""
    return fleet(
        substrate("p").cls("gpu_cluster").jurisdiction("DE").capacity(2),
        substrate("s").cls("sovereign_onprem").jurisdiction("DE").capacity(8),
    ).model("m", primary="p").spillover(classes=["sovereign_onprem"]).tenant(allowed_sla=["interactive", "batch"]) \
        .sla("interactive", while_scaling_up="hold").sla("batch").build()


def _scaling_state(built, ready_at: float | None, p_in_flight: float = 2.0) -> ReplicaState:
    state = ReplicaState(built.fleet, built.policy)
    published = _published(built, in_flight={"p": p_in_flight})
    scaling_up = {} if ready_at is None else {"p": ready_at}
    published = PublishedSnapshot(published.version, published.taken_at_s, published.policy_hash,
                                  published.signals, scaling_up=scaling_up)
    assert state.publish(published, state.take_report(NOW))
    return state


def test_a_holding_class_waits_for_the_primarys_new_replica_and_the_decision_says_so():
    built = _scaling_pools()
    step = AttemptLoop(_scaling_state(built, NOW + 1.0), request(model="m", sla_class="interactive")).start()
    assert isinstance(step, Refusal) and step.status == 429  # held, not spilled: the queue keeps it
    held = {c.name: c.reason for c in step.decision.candidates if c.reason}
    assert "held for p's new replica, expected to admit in 1.0 s" in held["s"]
    # A class that spills, on the same state, spills as always.
    step = AttemptLoop(_scaling_state(built, NOW + 1.0), request(model="m", sla_class="batch")).start()
    assert isinstance(step, Dispatch) and step.substrate == "s" and step.decision.spillover


@pytest.mark.parametrize("ready_at, p_in_flight, expected", [
    (None, 2.0, "s"),          # nothing starting (or no start measured): spill
    (NOW + 1.4, 2.0, "s"),     # 1.4 s + 0.2 s idle first token > 1.5 s: the replica would be too late
    (NOW + 0.5, 1.0, "p"),     # room on the primary now: no hold, it goes there
])
def test_a_holding_class_spills_when_the_new_replica_cannot_help(ready_at, p_in_flight, expected):
    built = _scaling_pools()
    state = _scaling_state(built, ready_at, p_in_flight)
    step = AttemptLoop(state, request(model="m", sla_class="interactive")).start()
    assert isinstance(step, Dispatch) and step.substrate == expected
    assert not any("new replica" in (c.reason or "") for c in step.decision.candidates)


def test_the_hold_counts_from_the_requests_arrival_however_often_it_is_placed_again():
    built = _scaling_pools()
    state = _scaling_state(built, NOW + 1.0)
    loop = AttemptLoop(state, request(model="m", sla_class="interactive"))
    assert isinstance(loop.start(), Refusal)
    # 1.2 s after arrival the replica (late) could still answer by 1.4 s: it waits on.
    assert isinstance(loop.place_again(NOW + 1.2), Refusal)
    # 1.35 s after arrival it no longer can (1.55 s > 1.5 s): the request spills, in time elsewhere.
    step = loop.place_again(NOW + 1.35)
    assert isinstance(step, Dispatch) and step.substrate == "s"


def test_the_authority_publishes_when_a_starting_replica_should_admit():
    from inferplane.fleet_state import FleetState
    from inferplane.health import BreakerSettings

    built = _scaling_pools()
    authority = FleetState(built.fleet, built.policy.policy_hash, 5.0, BreakerSettings(), latency_window_s=5.0)
    authority.set_serve_replicas("p", 2, 1, frozenset(), NOW + 4.0)
    assert authority.snapshot(NOW).scaling_up == {"p": NOW + 4.0}
    authority.set_serve_replicas("p", 2, 0, frozenset(), NOW + 4.0)  # it started: nothing to wait for
    assert authority.snapshot(NOW + 0.1).scaling_up == {}


def test_a_held_request_goes_to_the_new_replica_when_it_reports():
    import dataclasses

    from inferplane.placement.signals import Capacity
    from inferplane.plane.queue import HoldQueue, Waiter

    built = _scaling_pools()
    state = _scaling_state(built, NOW + 1.0)
    resolved = []
    queue = HoldQueue(state, notify=lambda: None, resolved=resolved.append)
    loop = AttemptLoop(state, request(model="m", sla_class="interactive"))
    waiter = queue.submit(loop, loop.start(), NOW)
    assert isinstance(waiter, Waiter) and len(queue) == 1
    # The new replica reports: the next snapshot has a free slot on p, and nothing is starting.
    published = _published(built, version=2, at=NOW + 0.8, in_flight={"p": 2.0})
    capacity = dataclasses.replace(signals(in_flight=2.0, now=NOW + 0.8), capacity=Capacity(3, 0))
    published = PublishedSnapshot(2, NOW + 0.8, built.policy.policy_hash, (capacity, published.signals[1]))
    assert state.publish(published, state.take_report(NOW + 0.8))
    queue.pump(NOW + 0.8)
    assert resolved == [waiter] and isinstance(waiter.outcome, Dispatch) and waiter.outcome.substrate == "p"
