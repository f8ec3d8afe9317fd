"""What the write-ahead audit journal adds to the request path, side by side with the two
request-path costs the README's profile names (``place()`` ~5 %, building the audit row ~8 %).

    .venv/bin/python -m tests.benchmarks.journal_cost

``Journal.write(record)`` is what the request path pays: redact the record with the writer's
config, encode it as one JSON line (decision and candidates included), one ``os.write``. The row
(``audit_row``) is built later, off the request path. Built on the test fixtures
(``tests.test_audit``), so it lives with the tests; pytest does not collect it.
"""
import tempfile
import time

from inferplane.placement import place
from inferplane.telemetry.audit import audit_row, redacted
from inferplane.telemetry.journal import Journal, record_line
from tests.builders import request, signals, snapshot
from tests.test_audit import INGRESS_REGION, INGRESS_ZONE, decide, plane, record_for

N, ROUNDS = 5000, 7
built = plane()
placed = record_for(built, decide(built))
spilled = record_for(built, decide(built, busy=("gpu", "sov", "de-west", "eu-api")))
typed = record_for(built, decide(built, model="sk-client-typed-this"), model="sk-client-typed-this")
snap = snapshot(built, {"gpu": signals(in_flight=1, kv=0.1)}, version=7)
preq = request(request_id="req-1", tenant="t", model="m", sla_class="interactive", input_tokens=1000,
               max_output_tokens=200, ingress_region=INGRESS_REGION, ingress_zone=INGRESS_ZONE)


def per_call_us(fn, n: int = N) -> float:
    """The least per-call time of ``ROUNDS`` rounds: on a shared machine noise only ever adds."""
    samples = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return min(samples)


with tempfile.TemporaryDirectory() as d:
    results = {}
    for fsync in (False, True):
        j = Journal(d, f"bench-{int(fsync)}", fleet=built.fleet, policy=built.policy, fsync=fsync)
        count = [0]

        def write(j=j, record=placed):
            j.write(record)
            count[0] += 1
            if count[0] % 2000 == 0:
                j.written(())  # rotate as the audit flush would (every ~2 s of traffic)

        if fsync:
            results["Journal.write, fsync=True"] = per_call_us(write, 200)
        else:
            results["redacted (nothing to redact)"] = per_call_us(lambda: redacted(placed, built.fleet, built.policy))
            results["record_line (encode)"] = per_call_us(lambda: record_line(placed))
            results["Journal.write (request path)"] = per_call_us(write)
            results["Journal.write, a spillover"] = per_call_us(lambda: write(record=spilled))
            results["Journal.write, an unknown model"] = per_call_us(lambda: write(record=typed))
            j.written(())
    assert j.failed_writes == 0
    results["audit_row (~8 % of the request path)"] = per_call_us(lambda: audit_row(placed, built.fleet, built.policy))
    results["place() (~5 % of the request path)"] = per_call_us(lambda: place(preq, snap, built.policy))
    print(f"line bytes: {len(record_line(placed))} placed, {len(record_line(spilled))} spillover; "
          f"decision_json alone: {len(audit_row(placed, built.fleet, built.policy)['decision_json'])}")
    for k, v in results.items():
        print(f"{k:45s} {v:9.2f} us")
    jr = results["Journal.write (request path)"]
    print(f"journal / audit_row = {jr / results['audit_row (~8 % of the request path)']:.3f}"
          f"  -> ~{8 * jr / results['audit_row (~8 % of the request path)']:.2f} % of the request path")
    print(f"journal / place()   = {jr / results['place() (~5 % of the request path)']:.3f}"
          f"  -> ~{5 * jr / results['place() (~5 % of the request path)']:.2f} % of the request path")
