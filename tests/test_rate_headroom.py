"""An ingress replica's own dispatches come off a provider's rate-limit headroom until a reading
observed after them arrives (``ReplicaState.lease``, ``FleetSnapshot.with_dispatches``).

The headroom readings reach a replica a heartbeat and a sync late; a burst placed between two
readings used to see the same remaining tokens for every request, so the replica over-spent them
and the provider answered 429, which opens the plane's circuit to it. Measured on the suite's
``sovereign-pool`` x Mooncake synthetic x4 (whole trace, mismatch on): the plane's 429s from
``provider-de`` fell from 884 to 11 and its deadlines met rose from 52.6 % to 59.9 %.
"""

from __future__ import annotations

from inferplane.fleet_state import PublishedSnapshot
from inferplane.plane.attempts import AttemptLoop, Dispatch, Refusal
from inferplane.plane.state import ReplicaState
from tests.builders import NOW, fleet, request, signals, substrate


def _api(tokens_left: float, requests_left: float = 100.0, observed: float = NOW):
    built = fleet(substrate("api").kind("openai_compatible").serves(window=32_768).capacity(64, rpm=600, tpm=60_000)).build()
    state = ReplicaState(built.fleet, built.policy)
    _publish(state, built, 1, tokens_left, requests_left, observed)
    return built, state


def _publish(state: ReplicaState, built, version: int, tokens_left: float, requests_left: float,
             observed: float) -> None:
    report = state.take_report(observed)
    sig = signals(in_flight=0.0, rl_requests=requests_left, rl_tokens=tokens_left, now=observed)
    assert state.publish(PublishedSnapshot(version, observed, built.policy.policy_hash, (sig,)), report)


def _send(state: ReplicaState, rid: str, at: float, input_tokens: int = 9_000) -> Dispatch | Refusal:
    return AttemptLoop(state, request(request_id=rid, now=at, input_tokens=input_tokens, max_output_tokens=1_000)).start()


def test_a_burst_between_two_readings_does_not_spend_the_same_tokens_twice() -> None:
    built, state = _api(tokens_left=25_000)
    assert isinstance(_send(state, "a", NOW + 0.01), Dispatch)  # 10,000 of 25,000
    assert isinstance(_send(state, "b", NOW + 0.02), Dispatch)  # 20,000
    third = _send(state, "c", NOW + 0.03)  # 30,000 > 25,000: refused here, not by the provider's 429
    assert isinstance(third, Refusal) and third.code == "rate_limited"
    assert "5000 tokens remaining < 10000" in " ".join(c.reason or "" for c in third.decision.candidates)


def test_a_reading_observed_after_a_dispatch_already_counts_it() -> None:
    built, state = _api(tokens_left=25_000)
    assert isinstance(_send(state, "a", NOW + 0.01), Dispatch)
    assert isinstance(_send(state, "b", NOW + 0.02), Dispatch)
    # The provider's next reading, observed after both, says 15,000 left (they and a refill in it):
    # only dispatches since that reading come off it.
    _publish(state, built, 2, 15_000, 98, NOW + 0.25)
    assert isinstance(_send(state, "c", NOW + 0.3), Dispatch)  # 10,000 of 15,000
    assert isinstance(_send(state, "d", NOW + 0.31), Refusal)  # 20,000 > 15,000


def test_requests_remaining_are_debited_too() -> None:
    built, state = _api(tokens_left=1e9, requests_left=2)
    assert isinstance(_send(state, "a", NOW + 0.01, input_tokens=10), Dispatch)
    assert isinstance(_send(state, "b", NOW + 0.02, input_tokens=10), Dispatch)
    third = _send(state, "c", NOW + 0.03, input_tokens=10)
    assert isinstance(third, Refusal) and third.code == "rate_limited"


def test_a_substrate_without_rate_limits_is_not_debited() -> None:
    built = fleet(substrate("pool").serves(window=32_768).capacity(64)).build()
    state = ReplicaState(built.fleet, built.policy)
    report = state.take_report(NOW)
    assert state.publish(PublishedSnapshot(1, NOW, built.policy.policy_hash, (signals(in_flight=0.0, now=NOW),)),
                         report)
    for i in range(5):
        assert isinstance(_send(state, f"r{i}", NOW + 0.01 * (i + 1)), Dispatch)
    view = state.view(NOW + 0.1)
    assert view.signals[0].rate_limit_tokens_remaining is None


def test_dispatches_are_not_held_past_a_minute_when_readings_stop_coming() -> None:
    """A provider that stops sending its headers leaves no reading to settle the replica's
    dispatches against; they are dropped once a per-minute window is past, so the count is bounded."""
    built, state = _api(tokens_left=1e9)
    for i in range(3):
        assert isinstance(_send(state, f"r{i}", NOW + 0.01 * (i + 1), input_tokens=10), Dispatch)
    later = NOW + 100.0
    report = state.take_report(later)
    assert state.publish(PublishedSnapshot(2, later, built.policy.policy_hash, (signals(in_flight=0.0, now=later),)),
                         report)
    assert isinstance(_send(state, "late", later + 0.01, input_tokens=10), Dispatch)
    state.view(later + 0.02)
    assert [tokens for _, tokens in state._rate_spent["api"]] == [1_010]  # only the dispatch of the last minute


def test_two_ingress_replicas_each_spend_half_of_a_reading() -> None:
    """Neither sees the other's dispatches before the provider's next reading, so each takes an
    equal share: together they never spend more than the provider said remains."""
    built = fleet(substrate("api").kind("openai_compatible").serves(window=32_768).capacity(64, rpm=600, tpm=60_000)).build()
    replicas = [ReplicaState(built.fleet, built.policy, replica_id=rid) for rid in ("a", "b")]
    sig = signals(in_flight=0.0, rl_requests=100, rl_tokens=25_000, now=NOW)
    for state in replicas:
        report = state.take_report(NOW)
        assert state.publish(PublishedSnapshot(1, NOW, built.policy.policy_hash, (sig,), ingress_ids=("a", "b")), report)
    for state in replicas:
        assert isinstance(_send(state, "first", NOW + 0.01), Dispatch)  # 10,000 of its 12,500
        second = _send(state, "second", NOW + 0.02)  # 20,000 > 12,500: 40,000 in all would be 429s
        assert isinstance(second, Refusal) and second.code == "rate_limited"
    view = replicas[0].view(NOW + 0.03)
    assert view.signals[0].rate_limit_tokens_remaining.value == 2_500
