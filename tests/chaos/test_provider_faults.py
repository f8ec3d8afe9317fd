"""A provider API that answers 429 with Retry-After, then 500s, then hangs, then recovers: the
real ``openai_compatible`` adapter against the scripted fake provider on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.fake_provider import Phase
from tests.chaos.traffic import Ask, closed_loop

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

MODEL = "mistral-small"
PRIMARY = "provider-fr-fake"
SCRIPT = ((Phase.OK, 2.0), (Phase.RATE_LIMITED, 3.0), (Phase.SERVER_ERROR, 4.0), (Phase.HANG, 5.0))


def _spillovers(plane) -> Counter:
    out = Counter()
    text = httpx.get(plane.metrics_url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "inferplane_spillovers_total" and s.labels.get("from_substrate", s.labels.get("from")) == PRIMARY:
                out[s.labels.get("reason")] += s.value
    return out


def test_provider_rate_limited_then_failing_then_hanging(chaos_plane, fake_provider, report):
    """Expectation: a 429 with Retry-After opens the provider's circuit until then; 500s and a
    hang (cut by the adapter's 2 s timeout) keep it open, each failed probe doubling the cool-down;
    meanwhile every request is answered from a fallback the tenant may use (the EU tenant only
    from Germany, the global tenant from anywhere), each marked and recorded as a spillover; once
    the provider answers again, half-open probes succeed, the circuit closes and traffic returns.
    The provider only ever sees the key from the environment."""
    plane, provider = chaos_plane, fake_provider
    fig = report.scenario("4 provider 429 -> 500 -> hang")
    spill_before = _spillovers(plane)
    provider.set_phase(Phase.OK)
    timeline: list[tuple[float, str, str]] = []  # (t, phase, circuit)
    state = {}
    stop = threading.Event()

    def script() -> None:
        t0 = time.monotonic()
        try:
            for phase, seconds in SCRIPT:
                provider.set_phase(phase)
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    timeline.append((time.monotonic() - t0, phase.value, plane.circuit(PRIMARY)))
                    time.sleep(0.25)
            provider.set_phase(Phase.OK)
            state["recovered_at"] = time.monotonic()
            end = time.monotonic() + 40.0
            while time.monotonic() < end:
                circuit = plane.circuit(PRIMARY)
                timeline.append((time.monotonic() - t0, "ok", circuit))
                if circuit == "closed" and state.get("primary_back"):
                    state["closed_after"] = time.monotonic() - state["recovered_at"]
                    break
                time.sleep(0.25)
        finally:
            provider.set_phase(Phase.OK)
            time.sleep(1.0)
            stop.set()

    def on_reply(r) -> None:
        if "recovered_at" in state and r.substrate == PRIMARY and r.sent_at > state["recovered_at"]:
            state["primary_back"] = True

    def ask(i: int) -> Ask:
        return Ask(tenant="eu-bank" if i % 2 else "global-app", model=MODEL, stream=i % 3 == 0, max_tokens=6)

    start_wall = time.time()
    runner = threading.Thread(target=script)
    runner.start()
    replies = asyncio.run(closed_loop(plane.url, ask, concurrency=4, max_requests=5000, max_seconds=80.0,
                                      on_reply=on_reply, stop=stop, pause_after_capacity_s=0.2))
    runner.join()
    lo = datetime.fromtimestamp(start_wall, UTC)
    rows = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = [r for r in plane.rows() if r["time"] >= lo and r["model"] == MODEL]
        if len(rows) >= len(replies):
            break
        time.sleep(0.5)
    spilled_rows = [r for r in rows if r["spillover"]]
    spill_after = _spillovers(plane)
    phases_seen = {phase for _, phase, circuit in timeline if circuit == "open"}

    fig.add_replies(replies)
    fig.recovery_s, fig.recovery_what = state.get("closed_after"), "provider back to circuit closed"
    fig.boundary_violations = len(plane.boundaries.violations(replies, rows))
    fig.audit_missing = max(0, len(replies) - len(rows))
    fig.note = (f"provider saw {dict(provider.requests)}; circuit open during {sorted(phases_seen)}; "
                f"{len(spilled_rows)} spillovers recorded "
                f"({dict(Counter(r['spillover_reason'] for r in spilled_rows))})")

    assert provider.bad_auth == 0, "the provider got a request without the key from the environment"
    for phase in (Phase.RATE_LIMITED, Phase.SERVER_ERROR, Phase.HANG):
        assert provider.requests[phase.value] >= 1, f"no request reached the provider while {phase.value}"
    assert "rate_limited" in phases_seen, timeline
    assert state.get("closed_after") is not None, f"the circuit never closed again: {timeline[-6:]}"
    # Answered, or refused for capacity when the EU fallback was full: never a substrate error.
    for r in replies:
        assert r.answered or (r.status == 429 and r.error_code == "capacity" and r.retry_after), r.outcome
    refused = [r for r in replies if not r.answered]
    assert all(r.ask.tenant == "eu-bank" for r in refused), "the global tenant had room on other fallbacks"
    assert plane.boundaries.violations(replies, rows) == []
    off_primary = [r for r in replies if r.answered and r.substrate != PRIMARY]
    assert off_primary, "traffic never moved"
    for r in off_primary:
        assert r.spillover and r.spillover_reason in ("primary_failed", "primary_unhealthy"), r
        if r.ask.tenant == "eu-bank":
            assert r.substrate == "sovereign-de-emulated"
    assert len(rows) == len(replies)
    assert {r["placement_id"] for r in spilled_rows if r["status_code"] == 200} == {r.placement_id for r in off_primary}
    assert sum(spill_after.values()) - sum(spill_before.values()) >= len(off_primary)
