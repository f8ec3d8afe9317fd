"""Trace loaders: a public request trace becomes a tuple of ``TraceRow``, in arrival order.

Units, for every format: ``arrival_s`` is seconds since the trace's first request (so the first
row is at 0.0), ``input_tokens`` and ``output_tokens`` are token counts as the trace reports them.
Nothing is invented here: tenants, SLA classes and scaling are applied later (``workload``).

Formats:

``azure``     Azure LLM inference trace 2023 (Splitwise, ISCA'24), CSV with a header
              ``TIMESTAMP,ContextTokens,GeneratedTokens``; ``TIMESTAMP`` is UTC wall time
              ``YYYY-MM-DD HH:MM:SS.fffffff`` (up to 7 fractional digits, parsed exactly to the
              microsecond). ``arrival_s = TIMESTAMP - first TIMESTAMP``.
``mooncake``  Mooncake FAST'25 traces, JSON lines ``{"timestamp": ms from start, "input_length",
              "output_length", "hash_ids"}``. ``arrival_s = (timestamp - first timestamp) / 1000``.
              ``hash_ids`` are kept (``TraceRow.prefix_blocks``): one id per 512-token block of the
              prompt (``MOONCAKE_BLOCK_TOKENS``; the last block may be partial), chained as a prefix
              cache keys blocks, so equal ids mean equal prefixes (the replay's prefix caches,
              ``substrate_sim``, and the plane's belief, ``placement.prefix``, key on them).
``parquet``   Columns ``arrival_s`` (float seconds, any origin), ``input_tokens``,
              ``output_tokens`` (integers), optionally ``tenant`` and ``sla_class`` (strings), which
              then take precedence over the seeded assignment.

``limit`` keeps the first N rows in file order (the traces are sorted by time; the loader checks
it and sorts stably when a file is not).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("azure", "mooncake", "parquet")
MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` block in the Mooncake traces (FAST'25 artifact)."""


class TraceError(ValueError):
    """A trace file that cannot be read as the format it was given in; names file and row."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request of a trace. ``arrival_s`` in seconds since the first request."""

    index: int
    """Position in the file (0-based, data rows only): stable across runs, seeds the assignment."""
    arrival_s: float
    input_tokens: int
    output_tokens: int
    tenant: str | None = None
    """Only when the trace itself names one (parquet)."""
    sla_class: str | None = None
    prefix_blocks: tuple[int, ...] = ()
    """The prompt's chained prefix-cache block ids, first block first (Mooncake's ``hash_ids``, one
    per ``MOONCAKE_BLOCK_TOKENS`` tokens); () when the trace has none (Azure, parquet)."""


def detect_format(path: str | Path) -> str:
    """``azure`` for ``.csv``, ``mooncake`` for ``.jsonl``/``.json``, ``parquet`` for ``.parquet``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "azure"
    if suffix in (".jsonl", ".json"):
        return "mooncake"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise TraceError(f"{path}: cannot tell the trace format from `{suffix}`; pass --format "
                     f"({', '.join(FORMATS)})")


def load_trace(path: str | Path, fmt: str | None = None, limit: int | None = None) -> tuple[TraceRow, ...]:
    """The rows of ``path`` in ``fmt`` (detected from the suffix when None), first ``limit`` only."""
    fmt = fmt or detect_format(path)
    if limit is not None and limit < 1:
        raise TraceError(f"--limit must be at least 1, got {limit}")
    if not Path(path).is_file():
        raise TraceError(f"{path}: trace file not found")
    if fmt == "azure":
        return load_azure(path, limit)
    if fmt == "mooncake":
        return load_mooncake(path, limit)
    if fmt == "parquet":
        return load_parquet(path, limit)
    raise TraceError(f"unknown trace format `{fmt}`; expected one of {', '.join(FORMATS)}")


def parse_azure_timestamp(text: str) -> dt.datetime:
    """``2023-11-16 18:15:46.6805900`` -> an aware UTC datetime, fraction truncated to the
    microsecond (the 7th digit is 100 ns, below anything the simulator resolves)."""
    stamp, _, fraction = text.strip().partition(".")
    base = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    if fraction:
        if not fraction.isdigit():
            raise ValueError(f"bad fractional seconds in {text!r}")
        base += dt.timedelta(microseconds=int(fraction[:6].ljust(6, "0")))
    return base


def load_azure(path: str | Path, limit: int | None = None) -> tuple[TraceRow, ...]:
    rows: list[tuple[dt.datetime, int, int]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        expected = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
        if header != expected:
            raise TraceError(f"{path}: header {header} is not the Azure trace header {expected}")
        for line_no, rec in enumerate(reader, start=2):
            if limit is not None and len(rows) >= limit:
                break
            try:
                rows.append((parse_azure_timestamp(rec[0]), int(rec[1]), int(rec[2])))
            except (ValueError, IndexError) as exc:
                raise TraceError(f"{path}:{line_no}: not an Azure trace row ({exc})") from None
    if not rows:
        raise TraceError(f"{path}: no data rows")
    t0 = min(r[0] for r in rows)
    return _ordered([TraceRow(i, (t - t0).total_seconds(), inp, out) for i, (t, inp, out) in enumerate(rows)])


def load_mooncake(path: str | Path, limit: int | None = None) -> tuple[TraceRow, ...]:
    raw: list[tuple[float, int, int, tuple[int, ...]]] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if limit is not None and len(raw) >= limit:
                break
            try:
                obj = json.loads(line)
                raw.append((float(obj["timestamp"]), int(obj["input_length"]), int(obj["output_length"]),
                            tuple(int(h) for h in obj.get("hash_ids") or ())))
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceError(f"{path}:{line_no}: not a Mooncake trace line ({exc})") from None
    if not raw:
        raise TraceError(f"{path}: no data rows")
    t0 = min(r[0] for r in raw)
    return _ordered([TraceRow(i, (t - t0) / 1000.0, inp, out, prefix_blocks=blocks)
                     for i, (t, inp, out, blocks) in enumerate(raw)])


def load_parquet(path: str | Path, limit: int | None = None) -> tuple[TraceRow, ...]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = set(table.column_names)
    missing = {"arrival_s", "input_tokens", "output_tokens"} - names
    if missing:
        raise TraceError(f"{path}: missing columns {sorted(missing)}; a parquet trace needs arrival_s, "
                         "input_tokens, output_tokens (and optionally tenant, sla_class)")
    if limit is not None:
        table = table.slice(0, limit)
    cols = {n: table.column(n).to_pylist() for n in names & {"arrival_s", "input_tokens", "output_tokens",
                                                             "tenant", "sla_class"}}
    n = table.num_rows
    if n == 0:
        raise TraceError(f"{path}: no data rows")
    t0 = min(float(a) for a in cols["arrival_s"])
    tenants = cols.get("tenant", [None] * n)
    classes = cols.get("sla_class", [None] * n)
    return _ordered([
        TraceRow(i, float(cols["arrival_s"][i]) - t0, int(cols["input_tokens"][i]), int(cols["output_tokens"][i]),
                 tenants[i], classes[i])
        for i in range(n)
    ])


def _ordered(rows: list[TraceRow]) -> tuple[TraceRow, ...]:
    for row in rows:
        if row.input_tokens < 0 or row.output_tokens < 0:
            raise TraceError(f"row {row.index}: negative token count")
    if any(b.arrival_s < a.arrival_s for a, b in zip(rows, rows[1:])):
        rows = sorted(rows, key=lambda r: (r.arrival_s, r.index))
    return tuple(rows)
