"""The hold queue and tenants' quotas on the plane core: no Ray, no clock (times are passed in)."""

from __future__ import annotations

import dataclasses

from hypothesis import example, given, settings
from hypothesis import strategies as st

from inferplane.fleet_state import FleetState, PublishedSnapshot
from inferplane.placement import place
from inferplane.plane.attempts import AttemptLoop, Dispatch, Refusal
from inferplane.plane.queue import HoldQueue, Waiter
from inferplane.plane.state import ReplicaState
from inferplane.placement.signals import Reading
from tests.builders import NOW, build_doc, fleet, request, signals, substrate
from tests.strategies import Scenario, scenarios
from tests.test_engine_equivalence import assert_same, reference

INTERACTIVE, BATCH = "interactive", "batch"


def _built(*, slots: int = 2, tenants=("a", "b"), shares=None, quotas=None, queue=None, us_pool: bool = False):
    """One DE pool ``p`` (gpu_cluster, ``slots`` slots; with ``us_pool`` also ``u`` in the US);
    tenants allowed in the EU, each with both classes: interactive (1.5 s, priority 80) and batch
    (45 s, priority 20)."""
    subs = [substrate("p").cls("gpu_cluster").jurisdiction("DE").capacity(slots)]
    if us_pool:
        subs.append(substrate("u").cls("gpu_cluster").jurisdiction("US").capacity(slots))
    b = fleet(*subs).model("m", primary="p")
    b.sla(INTERACTIVE, ttft_ms=1500, e2e_ms=20_000).sla(BATCH, ttft_ms=45_000, e2e_ms=120_000)
    for t in tenants:
        b.tenant(t, allowed=("EU",), sla=INTERACTIVE, allowed_sla=(INTERACTIVE, BATCH))
    doc = b.doc()
    for c in doc["sla_classes"]:
        c["priority"] = 80 if c["name"] == INTERACTIVE else 20
    for t in doc["tenants"]:
        if shares and t["name"] in shares:
            t["share"] = shares[t["name"]]
        if quotas and t["name"] in quotas:
            t["quotas"] = quotas[t["name"]]
    if queue:
        doc["policy"]["queue"] = queue
    return build_doc(doc)


def _published(built, version=1, at=NOW, in_flight=None, **extra) -> PublishedSnapshot:
    in_flight = in_flight or {}
    sigs = tuple(signals(in_flight=in_flight.get(s.name, 0.0), now=at) for s in built.fleet.substrates)
    return PublishedSnapshot(version, at, built.policy.policy_hash, sigs, **extra)


class Host:
    """What the ingress or the simulator does for a queue: counts notifications, keeps outcomes."""

    def __init__(self, built, state: ReplicaState | None = None) -> None:
        self.state = state or ReplicaState(built.fleet, built.policy)
        self.notified = 0
        self.resolved: list[Waiter] = []
        self.queue = HoldQueue(self.state, notify=self._notify, resolved=self.resolved.append)

    def _notify(self) -> None:
        self.notified += 1

    def publish(self, built, **published) -> None:
        report = self.state.take_report(NOW)
        assert self.state.publish(_published(built, **published), report)

    def submit(self, tenant="a", sla=INTERACTIVE, now=NOW, rid=None, tokens=1000):
        loop = AttemptLoop(self.state, request(request_id=rid or f"{tenant}-{now}-{sla}", tenant=tenant, model="m",
                                               sla_class=sla, now=now, input_tokens=tokens, max_output_tokens=100))
        return self.queue.submit(loop, loop.start(), now)


def _host(built, **published) -> Host:
    host = Host(built)
    host.publish(built, **published)
    return host


def _release(step: Dispatch) -> None:
    step.lease.release()


def test_a_full_pool_holds_the_request_and_serves_it_when_a_slot_frees():
    built = _built()
    host = _host(built)
    first = [host.submit(rid=f"r{i}") for i in range(2)]
    assert all(isinstance(s, Dispatch) for s in first)
    held = host.submit(rid="r2")
    assert isinstance(held, Waiter) and len(host.queue) == 1
    assert host.notified == 0
    host.queue.pump(NOW + 0.1)  # nothing freed: it stays
    assert held.outcome is None and not host.resolved
    _release(first[0])
    assert host.notified == 1  # the release asked for a pump; nothing polls
    host.queue.pump(NOW + 0.3)
    assert host.resolved == [held]
    assert isinstance(held.outcome, Dispatch) and held.outcome.substrate == "p"
    assert abs(held.waited_s - 0.3) < 1e-9 and len(host.queue) == 0


def test_higher_priority_overtakes_then_earliest_deadline_first():
    built = _built()
    host = _host(built)
    running = [host.submit(rid=f"r{i}") for i in range(2)]
    b1 = host.submit(sla=BATCH, now=NOW, rid="b1")
    b2 = host.submit(sla=BATCH, now=NOW + 0.05, rid="b2")
    i1 = host.submit(sla=INTERACTIVE, now=NOW + 0.1, rid="i1")
    assert all(isinstance(w, Waiter) for w in (b1, b2, i1))
    order = []
    for k, lease in enumerate(running):
        _release(lease)
        host.queue.pump(NOW + 0.2 + k * 0.01)
        order += [w.loop.request.request_id for w in host.resolved[len(order):]]
    assert order == ["i1", "b1"]
    _release(host.resolved[0].outcome)
    host.queue.pump(NOW + 0.5)
    assert [w.loop.request.request_id for w in host.resolved] == ["i1", "b1", "b2"]


def test_contending_tenants_are_served_by_their_shares_in_tokens():
    built = _built(tenants=("a", "b", "c"), shares={"a": 1.0, "b": 3.0})
    host = _host(built)
    running = [host.submit(tenant="c", rid=f"c{i}") for i in range(2)]
    for i in range(10):
        assert isinstance(host.submit(tenant="a", sla=BATCH, now=NOW + 0.001 * i, rid=f"a{i}"), Waiter)
        assert isinstance(host.submit(tenant="b", sla=BATCH, now=NOW + 0.001 * i, rid=f"b{i}"), Waiter)
    served = []
    slot = running[0]
    for k in range(8):
        _release(slot)
        host.queue.pump(NOW + 0.1 + 0.01 * k)
        w = host.resolved[-1]
        served.append(w.tenant)
        slot = w.outcome
    assert served.count("b") == 6 and served.count("a") == 2, served


def test_a_long_prompt_counts_for_more_than_a_short_one():
    built = _built(tenants=("a", "b", "c"))
    host = _host(built)
    running = [host.submit(tenant="c", rid=f"c{i}") for i in range(2)]
    for i in range(6):
        host.submit(tenant="a", sla=BATCH, now=NOW + 0.001 * i, rid=f"a{i}", tokens=8000)
        host.submit(tenant="b", sla=BATCH, now=NOW + 0.001 * i, rid=f"b{i}", tokens=1000)
    slot = running[0]
    for k in range(6):
        _release(slot)
        host.queue.pump(NOW + 0.1 + 0.01 * k)
        slot = host.resolved[-1].outcome
    # a's first request (earliest) costs 8,200 tokens: b's 1,200-token requests catch up first.
    assert [w.tenant for w in host.resolved] == ["a", "b", "b", "b", "b", "b"]


def test_a_request_gives_up_when_no_wait_can_meet_its_deadline():
    built = _built()
    host = _host(built)
    for i in range(2):
        host.submit(rid=f"r{i}")
    held = host.submit(rid="late")
    assert isinstance(held, Waiter)
    # 1.5 s deadline minus the pool's idle first token (100 ms base + 1,000 tokens at 10,000/s).
    assert abs(held.give_up_s - (NOW + 1.5 - 0.2)) < 1e-9
    assert host.queue.expire(held, NOW + 0.5) == held.give_up_s  # too early: look again then
    assert host.queue.expire(held, held.give_up_s) is None
    assert isinstance(held.outcome, Refusal)
    assert (held.outcome.status, held.outcome.code) == (429, "capacity")
    assert "no slot freed within 1.30s" in held.outcome.message
    assert held.outcome.retry_after_s >= 1.0 and len(host.queue) == 0
    # One that arrives too late to wait at all is refused at once.
    loop = AttemptLoop(host.state, request(request_id="old", tenant="a", model="m", now=NOW))
    step = host.queue.submit(loop, loop.start(), NOW + 1.4)
    assert isinstance(step, Refusal) and "no wait can meet the 1.5s first-token deadline" in step.message


def test_the_hope_once_a_slot_frees_is_this_prompts_scaled_by_the_learnt_ratio():
    """The give-up time is the deadline minus the best first-token time a freed slot gives: the
    declared idle time of this prompt (0.2 s here) times the ratio learnt there, not the size-blind
    median of what long prompts took (1.4 s); the median floors it only where no ratio was learnt."""
    built = _built()
    give_up = {}
    for name, ratio in (("ratio 1", 1.0), ("ratio 2", 2.0), ("no ratio", None)):
        host = Host(built)
        report = host.state.take_report(NOW)
        sigs = tuple(dataclasses.replace(
            signals(in_flight=0.0, ttft_s=1.4, tpot_s=0.01, now=NOW),
            ttft_ratio=None if ratio is None else Reading(ratio, NOW)) for _ in built.fleet.substrates)
        assert host.state.publish(PublishedSnapshot(1, NOW, built.policy.policy_hash, sigs), report)
        for i in range(2):
            assert isinstance(host.submit(rid=f"r{i}"), Dispatch)
        held = host.submit(rid="late")
        assert isinstance(held, Waiter), name
        give_up[name] = held.give_up_s - NOW
    assert abs(give_up["ratio 1"] - (1.5 - 0.2)) < 1e-9
    assert abs(give_up["ratio 2"] - (1.5 - 0.4)) < 1e-9
    assert abs(give_up["no ratio"] - (1.5 - 1.4)) < 1e-9


def test_refusals_a_wait_cannot_change_are_answered_at_once():
    built = _built(us_pool=True)
    host = _host(built)
    # Tenant us-only may run only in the US, where ``m``'s spillover is closed: 403 at once.
    doc = built.config.model_dump(mode="json", by_alias=True)
    doc["tenants"].append({"name": "us-only", "api_keys_sha256": ["f" * 64], "allowed_jurisdictions": ["US"],
                           "default_sla_class": INTERACTIVE})
    doc["models"][0]["spillover_substrates"] = []
    built2 = build_doc(doc)
    host2 = _host(built2)
    step = host2.submit(tenant="us-only")
    assert isinstance(step, Refusal) and step.status == 403 and len(host2.queue) == 0
    assert host.queue is not host2.queue


def test_hold_can_be_switched_off():
    built = _built(queue={"hold": False})
    host = _host(built)
    for i in range(2):
        host.submit(rid=f"r{i}")
    step = host.submit(rid="r2")
    assert isinstance(step, Refusal) and (step.status, step.code) == (429, "capacity")


def test_a_full_queue_sheds_the_lowest_priority_first():
    built = _built(queue={"max_waiting_requests": 2})
    host = _host(built)
    for i in range(2):
        host.submit(rid=f"r{i}")
    b1 = host.submit(sla=BATCH, now=NOW, rid="b1")
    b2 = host.submit(sla=BATCH, now=NOW + 0.01, rid="b2")
    i1 = host.submit(sla=INTERACTIVE, now=NOW + 0.02, rid="i1")
    assert isinstance(i1, Waiter)
    assert host.resolved == [b2]  # the latest deadline of the lowest priority
    assert (b2.outcome.status, b2.outcome.code) == (429, "shed") and b2.outcome.retry_after_s >= 1.0
    b3 = host.submit(sla=BATCH, now=NOW + 0.03, rid="b3")
    assert isinstance(b3, Refusal) and b3.code == "queue_full" and len(host.queue) == 2
    assert b1.outcome is None


def test_a_cancelled_waiter_leaves_without_an_outcome():
    built = _built()
    host = _host(built)
    running = [host.submit(rid=f"r{i}") for i in range(2)]
    gone = host.submit(rid="gone")
    stays = host.submit(rid="stays", now=NOW + 0.01)
    host.queue.cancel(gone)
    _release(running[0])
    host.queue.pump(NOW + 0.1)
    assert host.resolved == [stays] and gone.outcome is None


def test_a_tenant_at_its_cap_waits_for_its_own_requests():
    built = _built(slots=4, quotas={"a": [{"substrate_class": "gpu_cluster", "max_slots": 1}]})
    host = _host(built)
    first = host.submit(tenant="a", sla=BATCH, rid="a0")
    assert isinstance(first, Dispatch)
    capped = host.submit(tenant="a", sla=BATCH, rid="a1")
    assert isinstance(capped, Waiter)
    assert capped.loop.decision.rejection_code.value == "held_back"
    assert "tenant at its cap of 1 gpu_cluster slots" in capped.loop.decision.rejection_message
    assert isinstance(host.submit(tenant="b", rid="b0"), Dispatch)  # others are not capped
    _release(first)
    host.queue.pump(NOW + 0.1)
    assert host.resolved == [capped] and isinstance(capped.outcome, Dispatch)


def test_a_reclaiming_tenant_goes_first_and_does_not_give_up():
    built = _built(quotas={"a": [{"substrate_class": "gpu_cluster", "guaranteed_slots": 1, "lendable_slots": 1}]})
    host = _host(built)
    borrowed = [host.submit(tenant="b", rid=f"b{i}") for i in range(2)]  # a is idle: its slot is lent
    host.submit(tenant="b", sla=INTERACTIVE, now=NOW, rid="b-waits")
    a_waits = host.submit(tenant="a", sla=BATCH, now=NOW + 0.01, rid="a-reclaims")
    assert isinstance(a_waits, Waiter) and a_waits.reclaim_classes == {"gpu_cluster"}
    assert host.queue.reclaiming() == {"gpu_cluster": {"a": 1}}
    # Past its give-up time it keeps waiting: the slot it is guaranteed is coming back.
    assert host.queue.expire(a_waits, a_waits.give_up_s + 100) is not None and a_waits.outcome is None
    _release(borrowed[0])
    host.queue.pump(NOW + 0.1)
    # Batch from the reclaiming tenant before b's interactive request.
    assert host.resolved[0] is a_waits and isinstance(a_waits.outcome, Dispatch)
    assert host.queue.reclaiming() == {}


def test_guaranteed_slots_not_lendable_stay_free_for_their_tenant():
    """By default a guarantee is not lent: other tenants fill only the slots outside it, and the
    tenant's own arrival finds one at once. With ``lendable_slots`` others may borrow that many."""
    built = _built(slots=4, quotas={"a": [{"substrate_class": "gpu_cluster", "guaranteed_slots": 2}]})
    host = _host(built)
    others = [host.submit(tenant="b", rid=f"b{i}", sla=BATCH) for i in range(4)]
    assert [type(s).__name__ for s in others] == ["Dispatch", "Dispatch", "Waiter", "Waiter"]
    assert "kept for other tenants' guaranteed quotas" in others[2].loop.decision.rejection_message
    mine = host.submit(tenant="a", rid="a0")
    assert isinstance(mine, Dispatch)
    # a now holds 1 of its 2: one slot is still kept for it.
    assert isinstance(host.submit(tenant="a", rid="a1"), Dispatch)
    lent = _host(_built(slots=4, quotas={"a": [{"substrate_class": "gpu_cluster", "guaranteed_slots": 2,
                                                 "lendable_slots": 1}]}))
    assert [type(lent.submit(tenant="b", rid=f"b{i}", sla=BATCH)).__name__ for i in range(4)] == [
        "Dispatch", "Dispatch", "Dispatch", "Waiter"]


def test_a_reclaim_on_one_replica_holds_the_slot_against_borrowers_on_another():
    built = _built(quotas={"a": [{"substrate_class": "gpu_cluster", "guaranteed_slots": 1, "lendable_slots": 1}]})
    authority = FleetState(built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s)
    one, two = Host(built), Host(built)

    def sync(host: Host, iid: str, now: float) -> None:
        report = host.state.take_report(now)
        authority.report_ingress(iid, report.in_flight, report.outcomes, now,
                                 tenant_in_flight=report.tenant_in_flight, reclaiming=report.reclaiming)
        host.state.publish(authority.snapshot(now), report)

    authority.report_substrate("p", "r0", _report(0), NOW)
    sync(one, "one", NOW)
    sync(two, "two", NOW)
    borrowed = [two.submit(tenant="b", rid=f"b{i}") for i in range(2)]
    assert all(isinstance(s, Dispatch) for s in borrowed)
    sync(two, "two", NOW + 0.1)
    sync(one, "one", NOW + 0.1)
    a_waits = one.submit(tenant="a", sla=BATCH, now=NOW + 0.15, rid="a")
    assert isinstance(a_waits, Waiter)
    sync(one, "one", NOW + 0.2)
    sync(two, "two", NOW + 0.2)
    _release(borrowed[0])  # a slot frees on replica two, which holds no reclaim itself
    step = two.submit(tenant="b", now=NOW + 0.25, rid="b-again")
    assert isinstance(step, Waiter)
    assert step.loop.decision.rejection_code.value == "held_back"
    assert "kept for other tenants' guaranteed quotas" in step.loop.decision.rejection_message


def _report(in_flight: int):
    from inferplane.fleet_state import SubstrateReport

    return SubstrateReport(in_flight=in_flight)


@given(scenarios(), st.data())
def test_closed_substrates_are_rejected_by_the_specification_and_the_arithmetic_alike(sc: Scenario, data):
    names = [s.name for s in sc.built.fleet.substrates]
    closed = data.draw(st.lists(st.sampled_from(names), unique=True), label="closed")
    request = dataclasses.replace(sc.request, closed=tuple((n, f"closed {n}") for n in closed))
    sc = Scenario(sc.built, sc.snapshot, request)
    assert_same(place(request, sc.snapshot, sc.built.policy), reference(sc, sc.snapshot))


_ARRIVE = st.tuples(st.just("arrive"), st.sampled_from(["a", "b", "c"]), st.sampled_from([INTERACTIVE, BATCH]))
_OPS = st.lists(st.one_of(
    _ARRIVE, _ARRIVE, _ARRIVE,
    st.tuples(st.just("finish"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.floats(0.01, 3.0)),
), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(_OPS, st.sampled_from([0, 2]))
@example([("arrive", "b", INTERACTIVE)] * 3 + [("arrive", "a", INTERACTIVE), ("tick", 2.0)], 2)
@example([("arrive", "b", INTERACTIVE)] * 7 + [("arrive", "a", BATCH), ("tick", 0.5), ("finish", 0)], 2)
def test_waiting_never_crosses_policy_and_a_guaranteed_tenant_is_never_refused_for_capacity(ops, lendable):
    """Tenants a (EU only, guaranteed 2 of the 6 gpu_cluster slots: 3 in DE, 3 in the US), b and c
    (EU only): whatever the order of arrivals, finishes and time, nothing is dispatched to the US
    for them, and a's requests are never refused for capacity (nor shed, nor turned away by a full
    queue) while a holds fewer than its 2 slots, whether its idle slots are lent or kept."""
    built = _built(slots=3, tenants=("a", "b", "c"), us_pool=True,
                   quotas={"a": [{"substrate_class": "gpu_cluster", "guaranteed_slots": 2,
                                  "lendable_slots": lendable}]},
                   queue={"max_waiting_requests": 4})
    host = _host(built)
    now = NOW
    running: list[Dispatch] = []
    answered: list[tuple[str, Dispatch | Refusal, int]] = []  # tenant, answer, a's slots when answered

    def a_slots() -> int:
        return host.state.tenant_usage("a").get("gpu_cluster", 0)

    host.queue._resolved = lambda w: answered.append((w.tenant, w.outcome, a_slots()))
    seen = 0
    for k, op in enumerate(ops):
        if op[0] == "arrive":
            held_by_a = a_slots()
            step = host.submit(tenant=op[1], sla=op[2], now=now, rid=f"{op[1]}-{k}")
            if not isinstance(step, Waiter):
                answered.append((op[1], step, held_by_a))
        elif op[0] == "finish" and running:
            _release(running.pop(op[1] % len(running)))
        elif op[0] == "tick":
            now += op[1]
            host.publish(built, at=now)
            for fifo in list(host.queue._groups.values()):
                for waiter in list(fifo):
                    host.queue.expire(waiter, now)
        host.queue.pump(now)
        running += [o for _, o, _ in answered[seen:] if isinstance(o, Dispatch)]
        seen = len(answered)
    for tenant, outcome, held_by_a in answered:
        if isinstance(outcome, Dispatch):
            assert outcome.substrate == "p", outcome
        elif tenant == "a" and held_by_a < 2:
            assert outcome.code not in ("capacity", "queue_full", "shed", "held_back"), outcome


def test_a_slot_freed_on_one_replica_waits_for_a_higher_priority_request_at_another():
    """Two replicas each run one request on a 2-slot pool; replica one then holds a batch request,
    replica two an interactive one. When replica one's own request ends, its batch request does not
    take the slot: with the next syncs the authority grants it to replica two's interactive one."""
    built = _built(slots=2)
    authority = FleetState(built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s)
    one, two = Host(built, ReplicaState(built.fleet, built.policy, replica_id="one")), \
        Host(built, ReplicaState(built.fleet, built.policy, replica_id="two"))

    def sync(now: float) -> None:
        for h in (one, two):
            r = h.state.take_report(now)
            authority.report_ingress(h.state.replica_id, r.in_flight, r.outcomes, now, demand=r.demand)
            h.state.publish(authority.snapshot(now), r)
            h.queue.pump(now)

    authority.report_substrate("p", "r0", _report(0), NOW)
    sync(NOW)
    sync(NOW + 0.05)
    running = one.submit(tenant="a", sla=BATCH, now=NOW + 0.06, rid="running")
    other = two.submit(tenant="b", sla=BATCH, now=NOW + 0.06, rid="other")
    assert isinstance(running, Dispatch) and isinstance(other, Dispatch)
    sync(NOW + 0.1)
    batch = one.submit(tenant="a", sla=BATCH, now=NOW + 0.11, rid="batch")
    urgent = two.submit(tenant="b", sla=INTERACTIVE, now=NOW + 0.12, rid="urgent")
    assert isinstance(batch, Waiter) and isinstance(urgent, Waiter)
    sync(NOW + 0.2)
    sync(NOW + 0.25)  # each replica's waiting requests are known to the other after one round of syncs
    _release(running)
    one.queue.pump(NOW + 0.26)
    assert batch.outcome is None
    assert "higher-priority request(s) waiting at other ingress replicas" in batch.loop.decision.rejection_message
    sync(NOW + 0.3)
    assert isinstance(urgent.outcome, Dispatch) and batch.outcome is None
    assert authority.snapshot(NOW + 0.3).grants == {"one": {"p": 0}, "two": {"p": 2}}


def test_requests_refused_before_any_substrate_is_considered_are_answered_at_once():
    built = _built()
    host = _host(built)
    for sla, code in (("platinum", "unknown_sla_class"),):
        loop = AttemptLoop(host.state, request(request_id="x", tenant="a", model="m", sla_class=sla))
        step = host.queue.submit(loop, loop.start(), NOW)
        assert isinstance(step, Refusal) and step.code == code and len(host.queue) == 0
    loop = AttemptLoop(host.state, request(request_id="y", tenant="a", model="nope"))
    step = host.queue.submit(loop, loop.start(), NOW)
    assert isinstance(step, Refusal) and step.code == "unknown_model"


def test_a_retry_that_finds_no_slot_waits_with_the_deadline_of_its_arrival():
    """The substrate that took the request fails before its first byte; the only other one is full.
    The retry waits (it is not refused at once) and its deadline runs from the request's arrival."""
    built = _built(slots=1, us_pool=False)
    doc = built.config.model_dump(mode="json", by_alias=True)
    doc["substrates"].append({**doc["substrates"][0], "name": "q"})
    built = build_doc(doc)
    host = _host(built)
    first = host.submit(rid="first")
    other = host.submit(rid="other")
    assert isinstance(first, Dispatch) and isinstance(other, Dispatch) and first.substrate != other.substrate
    from inferplane.plane.attempts import FirstByteFailure

    loop = AttemptLoop(host.state, request(request_id="r", tenant="a", model="m", now=NOW))
    step = loop.start()
    assert isinstance(step, Refusal)  # both full: make room on one, and fail there
    _release(first)
    step = loop.start()
    assert isinstance(step, Dispatch)
    retry = loop.failed(FirstByteFailure("boom", "boom", True), NOW + 0.3)
    assert isinstance(retry, Refusal) and retry.code == "capacity"
    held = host.queue.submit(loop, retry, NOW + 0.3, arrived_at_s=NOW)
    assert isinstance(held, Waiter)
    assert abs(held.deadline_s - (NOW + 1.5)) < 1e-9
    _release(other)
    host.queue.pump(NOW + 0.4)
    assert isinstance(held.outcome, Dispatch) and held.outcome.substrate == other.substrate


def test_a_tenants_usage_follows_every_lease_release_and_sync():
    """``tenant_usage`` is kept between changes of the counts: each lease, release and adopted
    snapshot must show in the next read (here across two replicas and one authority)."""
    built = _built(slots=4, quotas={"a": [{"substrate_class": "gpu_cluster", "guaranteed_slots": 2}]})
    authority = FleetState(built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s)
    one, two = Host(built), Host(built)

    def sync(host: Host, iid: str, now: float) -> None:
        report = host.state.take_report(now)
        authority.report_ingress(iid, report.in_flight, report.outcomes, now,
                                 tenant_in_flight=report.tenant_in_flight, reclaiming=report.reclaiming)
        host.state.publish(authority.snapshot(now), report)

    def used(host: Host, tenant: str = "a") -> int:
        return host.state.tenant_usage(tenant).get("gpu_cluster", 0)

    authority.report_substrate("p", "r0", _report(0), NOW)
    sync(one, "one", NOW)
    sync(two, "two", NOW)
    assert used(one) == used(two) == 0
    first = one.submit(tenant="a", rid="a1")
    assert isinstance(first, Dispatch)
    assert (used(one), used(two)) == (1, 0)  # the lease shows on its replica at once
    second = one.submit(tenant="a", now=NOW + 0.01, rid="a2")
    assert (used(one), used(two), used(one, "b")) == (2, 0, 0)
    other = one.submit(tenant="b", now=NOW + 0.02, rid="b1")  # one tenant's lease, the other's usage kept
    assert isinstance(other, Dispatch)
    assert (used(one), used(one, "b")) == (2, 1)
    _release(other)
    assert (used(one), used(one, "b")) == (2, 0)
    sync(one, "one", NOW + 0.1)
    sync(two, "two", NOW + 0.1)
    assert (used(one), used(two)) == (2, 2)  # the other replica learns it from the snapshot
    _release(first)
    assert (used(one), used(two)) == (1, 2)
    _release(first)  # a lease is released once: a second release changes nothing
    assert used(one) == 1
    sync(one, "one", NOW + 0.2)
    sync(two, "two", NOW + 0.2)
    assert (used(one), used(two)) == (1, 1)
    _release(second)
    assert used(one) == 0
