"""What the write-ahead audit journal adds to the request path, side by side with the two
request-path costs the README's profile names (``place()`` ~5 %, building the audit row ~8 %).

    .venv/bin/python -m tests.benchmarks.journal_cost

Built on the test fixtures (``tests.test_audit``), so it lives with the tests; pytest does not
collect it.
"""
import json
import statistics
import tempfile
import time

from inferplane.placement import place
from inferplane.telemetry.audit import audit_row
from inferplane.telemetry.journal import Journal, journal_entry
from tests.builders import request, signals, snapshot
from tests.test_audit import INGRESS_REGION, INGRESS_ZONE, T0, decide, outcome, plane

N, ROUNDS = 5000, 7
built = plane()
decision = decide(built)
out = outcome()
sla = built.policy.sla_classes["interactive"]
snap = snapshot(built, {"gpu": signals(in_flight=1, kv=0.1)}, version=7)
preq = request(request_id="req-1", tenant="t", model="m", sla_class="interactive", input_tokens=1000,
               max_output_tokens=200, ingress_region=INGRESS_REGION, ingress_zone=INGRESS_ZONE)


def per_call_us(fn, n: int = N) -> float:
    samples = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def entry():
    return journal_entry(request_id="req-1", ingress_id="ingress-a", received_at_s=T0, tenant="t", model="m",
                         sla_class="interactive", decision=decision, outcome=out, fleet=built.fleet,
                         ingress_region=INGRESS_REGION, snapshot_age_s=0.1, sla=sla,
                         config_hash=built.policy.policy_hash)


def row():
    return audit_row(request_id="req-1", ingress_id="ingress-a", received_at_s=T0, tenant="t", model="m",
                     sla_class="interactive", decision=decision, outcome=out, fleet=built.fleet,
                     ingress_region=INGRESS_REGION, snapshot_age_s=0.1, sla=sla)


with tempfile.TemporaryDirectory() as d:
    results = {}
    for fsync in (False, True):
        j = Journal(d, f"bench-{int(fsync)}", fsync=fsync)
        e = entry()
        count = [0]

        def write(j=j, e=e):
            j.write(e)
            count[0] += 1
            if count[0] % 2000 == 0:
                j.written(())  # rotate as the audit flush would (every ~2 s of traffic)

        if fsync:
            results["journal write, fsync=True"] = per_call_us(write, 200)
        else:
            results["journal_entry (build)"] = per_call_us(entry)
            results["Journal.write (json + os.write)"] = per_call_us(write)
            results["entry + write (request path)"] = per_call_us(lambda: j.write(entry()))
            j.written(())
    results["audit_row (~8 % of the request path)"] = per_call_us(row)
    results["place() (~5 % of the request path)"] = per_call_us(lambda: place(preq, snap, built.policy))
    print(f"line bytes: {len(json.dumps(entry(), separators=(',', ':'))) + 1}")
    for k, v in results.items():
        print(f"{k:45s} {v:9.2f} us")
    jr = results["entry + write (request path)"]
    print(f"journal / audit_row = {jr / results['audit_row (~8 % of the request path)']:.3f}"
          f"  -> ~{8 * jr / results['audit_row (~8 % of the request path)']:.2f} % of the request path")
    print(f"journal / place()   = {jr / results['place() (~5 % of the request path)']:.3f}"
          f"  -> ~{5 * jr / results['place() (~5 % of the request path)']:.2f} % of the request path")
