"""Trace loaders on the real files in ../shared/data/traces (row counts, units, order), and the
workload rule that turns rows into tenants' requests."""

from __future__ import annotations

import datetime as dt
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferplane.placement.policy import PlacementPolicy
from inferplane.replay.trace import (
    TraceError,
    TraceRow,
    detect_format,
    load_trace,
    parse_azure_timestamp,
)
from inferplane.replay.workload import (
    Burst,
    MaxTokens,
    TenantShare,
    WorkloadError,
    WorkloadSpec,
    build_workload,
    drop_tenants,
    parse_tenants,
    unit_draw,
)
from tests.builders import fleet, substrate

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
AZURE_CONV = TRACES / "AzureLLMInferenceTrace_conv.csv"
AZURE_CODE = TRACES / "AzureLLMInferenceTrace_code.csv"
MOONCAKE_SYNTH = TRACES / "mooncake_synthetic_trace.jsonl"
MOONCAKE_CONV = TRACES / "mooncake_conversation_trace.jsonl"


@pytest.mark.parametrize(
    ("path", "rows", "span_min", "span_max", "input_p50", "output_p50"),
    [
        # Counts, spans and medians as shared/data/README.md measured them.
        (AZURE_CONV, 19_366, 57 * 60, 59 * 60, 1_020, 129),
        (AZURE_CODE, 8_819, 56 * 60, 58 * 60, 1_469, 13),
        (MOONCAKE_SYNTH, 3_993, 16 * 60, 18 * 60, 11_587, 69),
        (MOONCAKE_CONV, 12_031, 58 * 60, 60 * 60, 6_909, 350),
    ],
    ids=["azure-conv", "azure-code", "mooncake-synthetic", "mooncake-conversation"],
)
def test_real_trace_rows_and_units(path, rows, span_min, span_max, input_p50, output_p50):
    trace = load_trace(path)
    assert len(trace) == rows
    assert trace[0].arrival_s == 0.0
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(trace, trace[1:]))
    # Seconds, not milliseconds or minutes: the span is the README's, in seconds.
    assert span_min <= trace[-1].arrival_s <= span_max
    assert statistics.median(r.input_tokens for r in trace) == pytest.approx(input_p50, abs=1)
    assert statistics.median(r.output_tokens for r in trace) == pytest.approx(output_p50, abs=1)
    assert [r.index for r in trace] == sorted(r.index for r in trace)


def test_azure_first_rows_are_read_exactly():
    # The file's first data rows: 18:15:46.6805900 (374, 44) and 18:15:50.9951690 (396, 109).
    first, second = load_trace(AZURE_CONV, limit=2)
    assert (first.input_tokens, first.output_tokens) == (374, 44)
    assert (second.input_tokens, second.output_tokens) == (396, 109)
    assert second.arrival_s == pytest.approx(50.995169 - 46.68059, abs=1e-6)


def test_azure_timestamp_keeps_microseconds_and_is_utc():
    stamp = parse_azure_timestamp("2023-11-16 18:15:46.6805900")
    assert stamp == dt.datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=dt.timezone.utc)
    assert parse_azure_timestamp("2023-11-16 18:15:46") == dt.datetime(2023, 11, 16, 18, 15, 46,
                                                                        tzinfo=dt.timezone.utc)


def test_mooncake_milliseconds_become_seconds():
    rows = load_trace(MOONCAKE_CONV)
    # The conversation trace is quantised to ~3 s buckets, in ms in the file: every arrival is a
    # whole number of milliseconds, and consecutive distinct arrivals are seconds apart.
    distinct = sorted({r.arrival_s for r in rows})
    assert all(abs(a * 1000 - round(a * 1000)) < 1e-6 for a in distinct)
    gaps = [b - a for a, b in zip(distinct, distinct[1:])]
    assert 1.0 < statistics.median(gaps) < 10.0


def test_limit_keeps_the_first_rows(tmp_path):
    rows = load_trace(AZURE_CONV, limit=100)
    assert len(rows) == 100
    assert rows == load_trace(AZURE_CONV)[:100]
    with pytest.raises(TraceError, match="at least 1"):
        load_trace(AZURE_CONV, limit=0)


def test_parquet_round_trip_with_tenants(tmp_path):
    path = tmp_path / "trace.parquet"
    table = pa.table({"arrival_s": [100.0, 100.5, 102.0], "input_tokens": [10, 20, 30],
                      "output_tokens": [1, 2, 3], "tenant": ["a", "b", "a"]})
    pq.write_table(table, path)
    rows = load_trace(path)
    assert detect_format(path) == "parquet"
    assert [r.arrival_s for r in rows] == [0.0, 0.5, 2.0]
    assert [r.tenant for r in rows] == ["a", "b", "a"]
    assert rows[2] == TraceRow(2, 2.0, 30, 3, "a", None)


def test_bad_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,in,out\n1,2,3\n", encoding="utf-8")
    with pytest.raises(TraceError, match="not the Azure trace header"):
        load_trace(bad)
    broken = tmp_path / "broken.csv"
    broken.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,x,3\n", encoding="utf-8")
    with pytest.raises(TraceError, match=r"broken.csv:2"):
        load_trace(broken)
    with pytest.raises(TraceError, match="cannot tell the trace format"):
        detect_format(tmp_path / "trace.txt")
    pq.write_table(pa.table({"arrival_s": [1.0]}), tmp_path / "t.parquet")
    with pytest.raises(TraceError, match="missing columns"):
        load_trace(tmp_path / "t.parquet")


# -- the workload rule -----------------------------------------------------------------------------


def _policy() -> PlacementPolicy:
    built = (fleet(substrate("s"))
             .sla("interactive").sla("batch", ttft_ms=30_000, e2e_ms=300_000)
             .tenant("eu", allowed=["EU"], allowed_sla=["interactive", "batch"])
             .tenant("world", sla="batch")
             .build())
    return built.policy


def _rows(n: int, gap_s: float = 1.0) -> tuple[TraceRow, ...]:
    return tuple(TraceRow(i, i * gap_s, 100 + i, 1 + (i % 300)) for i in range(n))


def test_tenant_shares_follow_the_mix_and_classes_the_rule():
    spec = WorkloadSpec("m", (TenantShare("eu", 0.3, (("interactive", 0.75), ("batch", 0.25))),
                              TenantShare("world", 0.7)), seed=3)
    reqs = build_workload(_rows(10_000), spec, _policy())
    eu = [r for r in reqs if r.tenant == "eu"]
    assert len(eu) / len(reqs) == pytest.approx(0.3, abs=0.02)
    assert sum(r.sla_class == "batch" for r in eu) / len(eu) == pytest.approx(0.25, abs=0.03)
    # A tenant given no class mix sends everything in its default class.
    assert {r.sla_class for r in reqs if r.tenant == "world"} == {"batch"}


def test_assignment_depends_on_the_row_not_on_the_limit():
    spec = WorkloadSpec("m", (TenantShare("eu", 1.0), TenantShare("world", 1.0)), seed=11)
    long = build_workload(_rows(500), spec, _policy())
    short = build_workload(_rows(50), spec, _policy())
    assert [r.tenant for r in short] == [r.tenant for r in long[:50]]
    other_seed = build_workload(_rows(500), WorkloadSpec("m", spec.tenants, seed=12), _policy())
    assert [r.tenant for r in other_seed] != [r.tenant for r in long]
    assert unit_draw(1, 2, 0, "tenant") == unit_draw(1, 2, 0, "tenant") != unit_draw(1, 3, 0, "tenant")


@pytest.mark.parametrize(
    ("rule", "output", "expected"),
    [(MaxTokens("trace"), 129, (129, 129)), (MaxTokens("round_up", 256), 129, (256, 129)),
     (MaxTokens("round_up", 256), 256, (256, 256)), (MaxTokens("round_up", 256), 257, (512, 257)),
     (MaxTokens("fixed", 100), 129, (100, 100)), (MaxTokens("trace"), 0, (1, 1))],
)
def test_max_tokens_rules(rule, output, expected):
    assert rule.apply(output) == expected


def test_time_scale_stretches_and_rate_scale_copies():
    policy = _policy()
    rows = _rows(1000)
    base = WorkloadSpec("m", (TenantShare("world", 1.0),))
    plain = build_workload(rows, base, policy)
    half_time = build_workload(rows, WorkloadSpec("m", base.tenants, time_scale=0.5), policy)
    assert [r.arrival_s for r in half_time] == [0.5 * r.arrival_s for r in plain]
    doubled = build_workload(rows, WorkloadSpec("m", base.tenants, rate_scale=2.0), policy)
    assert len(doubled) == 2 * len(rows)
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(doubled, doubled[1:]))
    # A copy lands between its row and the next one, keeping the trace's shape.
    copies = [r for r in doubled if r.copy == 1 and r.trace_index < 999]
    assert all(r.trace_index <= r.arrival_s <= r.trace_index + 1 for r in copies)
    thinned = build_workload(rows, WorkloadSpec("m", base.tenants, rate_scale=0.5), policy)
    assert len(thinned) == pytest.approx(500, abs=50)
    assert WorkloadSpec("m", base.tenants, time_scale=0.5, rate_scale=2).load_factor == 4.0


def test_tenant_spec_parsing_and_errors():
    base = (TenantShare("eu", 0.5, (("batch", 1.0),)),)
    assert parse_tenants("eu:0.3, world:0.7", base) == (
        TenantShare("eu", 0.3, (("batch", 1.0),)), TenantShare("world", 0.7))
    with pytest.raises(WorkloadError, match="NAME:SHARE"):
        parse_tenants("eu=0.3")
    with pytest.raises(WorkloadError, match="not a number"):
        parse_tenants("eu:lots")
    with pytest.raises(WorkloadError, match="not in the config"):
        build_workload(_rows(3), WorkloadSpec("m", (TenantShare("nobody", 1.0),)), _policy())
    with pytest.raises(WorkloadError, match="rate scale"):
        WorkloadSpec("m", (TenantShare("eu", 1.0),), rate_scale=0)


# -- bursts: one tenant sends a multiple of its own rate for a while ------------------------------------


def _key(r):
    return (r.request_id, r.trace_index, r.copy, r.arrival_s, r.tenant, r.sla_class, r.input_tokens,
            r.output_tokens, r.max_tokens)


def test_a_burst_adds_only_the_bursting_tenants_copies_inside_its_window():
    mix = (("interactive", 0.5), ("batch", 0.5))
    quiet = WorkloadSpec("m", (TenantShare("eu", 0.3, mix), TenantShare("world", 0.7)), seed=5)
    noisy = WorkloadSpec("m", (TenantShare("eu", 0.3, mix, (Burst(200.0, 100.0, 4.0),)), TenantShare("world", 0.7)),
                         seed=5)
    policy = _policy()
    base = build_workload(_rows(1000), quiet, policy)
    burst = build_workload(_rows(1000), noisy, policy)
    # Every request of the quiet workload is in the noisy one, unchanged; what is added is eu's.
    originals = [r for r in burst if r.burst_copy == 0]
    assert [_key(r) for r in originals] == [_key(r) for r in base]
    extra = [r for r in burst if r.burst_copy > 0]
    assert extra and {r.tenant for r in extra} == {"eu"}
    # Rate multiplier 4: three copies of each eu request that arrives in [200, 300), none elsewhere.
    in_window = [r for r in base if r.tenant == "eu" and 200.0 <= r.arrival_s < 300.0]
    assert len(extra) == 3 * len(in_window)
    assert {(r.trace_index, r.burst_copy) for r in extra} == {(r.trace_index, j) for r in in_window for j in (1, 2, 3)}
    # Copies land between their row and the next one (rows are 1 s apart here), in arrival order.
    assert all(r.trace_index <= r.arrival_s < r.trace_index + 1 for r in extra)
    assert [r.index for r in burst] == list(range(len(burst)))
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(burst, burst[1:]))
    assert len({r.request_id for r in burst}) == len(burst)
    # Burst copies draw their class from the tenant's mix like any request of it.
    assert 0.35 < sum(r.sla_class == "batch" for r in extra) / len(extra) < 0.65
    assert build_workload(_rows(1000), noisy, policy) == burst  # seeded


def test_a_fractional_burst_and_time_scale():
    # x2.5 on world (70 % of 2,000 rows): 1.5 extra copies per request in the window on average.
    # Windows are in scaled time: at time scale 0.5, [100, 300) s covers rows 200 to 599.
    spec = WorkloadSpec("m", (TenantShare("eu", 0.3), TenantShare("world", 0.7, (), (Burst(100.0, 200.0, 2.5),))),
                        seed=2, time_scale=0.5)
    reqs = build_workload(_rows(2000), spec, _policy())
    base = [r for r in reqs if r.burst_copy == 0 and r.tenant == "world" and 100.0 <= r.arrival_s < 300.0]
    extra = [r for r in reqs if r.burst_copy > 0]
    assert {r.trace_index for r in extra} <= set(range(200, 600))
    assert len(extra) / len(base) == pytest.approx(1.5, abs=0.1)
    assert all(r.burst_copy in (1, 2) for r in extra)


def test_burst_errors_and_parsing_keeps_bursts():
    with pytest.raises(WorkloadError, match="overlap"):
        TenantShare("eu", 1.0, (), (Burst(0.0, 100.0, 2.0), Burst(50.0, 10.0, 2.0)))
    with pytest.raises(WorkloadError, match="rate multiplier"):
        Burst(0.0, 10.0, 0.5)
    with pytest.raises(WorkloadError, match="lasts"):
        Burst(0.0, 0.0, 2.0)
    bursts = (Burst(10.0, 5.0, 3.0),)
    assert parse_tenants("eu:0.5,world:0.5", (TenantShare("eu", 1.0, (), bursts),))[0].bursts == bursts


def test_dropping_a_tenant_keeps_every_other_request():
    spec = WorkloadSpec("m", (TenantShare("eu", 0.3), TenantShare("world", 0.7, (), (Burst(0.0, 50.0, 3.0),))),
                        seed=4)
    reqs = build_workload(_rows(300), spec, _policy())
    without = drop_tenants(reqs, ["world"])
    assert [_key(r) for r in without] == [_key(r) for r in reqs if r.tenant == "eu"]
    assert [r.index for r in without] == list(range(len(without)))
    with pytest.raises(WorkloadError, match="no request is left"):
        drop_tenants(reqs, ["eu", "world"])
