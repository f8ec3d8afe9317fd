"""What an audit log says happened, as numbers and as plots over time (``inferplane report``).

``summarise`` computes, from ``read_audit``'s table: placements, failures and refusals by code;
spillover rate, reasons, boundaries crossed and the extra cost over the primary; latency
percentiles of successful requests by substrate and SLA class (exact, linear interpolation between
ranks; seconds from receipt); SLA attainment by class; cost by tenant and by substrate.
``write_plots`` draws the same over time as PNG files (matplotlib, Agg backend).

The residual view: per substrate, observed over predicted TTFT and time per output token (the
rows' ``ttft_residual`` and ``tpot_residual``, ``telemetry.drift``): how many, median and p90
(``RESIDUAL_PERCENTILES``); and, as a plot, the median per time bucket per substrate on a log axis
with the drift band (``telemetry.drift.DriftSettings.band``). Rows without them (older files,
failures) are skipped.

SLA attainment of a class = requests answered 200 within both deadlines / requests counted, where
the requests counted are those placed on a substrate and those the plane could not serve (429 and
5xx without a substrate); requests refused by policy or malformed (other 4xx) do not count.
Deadlines come from the rows (``ttft_deadline_s``, ``e2e_deadline_s``) or, where the rows lack
them, from a ``{sla_class: (ttft_deadline_s, e2e_deadline_s)}`` mapping (the config's classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

PERCENTILES = (0.5, 0.9, 0.99)
RESIDUAL_PERCENTILES = (0.5, 0.9)
UNSERVED_STATUSES = frozenset({429, 500, 502, 503, 504})
# Plot time buckets: (seconds, pyarrow multiple, pyarrow unit); the first giving <= 120 buckets.
BUCKETS = ((1, 1, "second"), (10, 10, "second"), (60, 1, "minute"), (300, 5, "minute"),
           (900, 15, "minute"), (3600, 1, "hour"), (21600, 6, "hour"), (86400, 1, "day"))


@dataclass
class Summary:
    requests: int = 0
    first: datetime | None = None
    last: datetime | None = None
    placed: int = 0
    ok: int = 0
    failed: int = 0
    refused: int = 0
    refused_by_code: dict[str, int] = field(default_factory=dict)
    spillovers: int = 0
    spillover_by_reason: dict[str, int] = field(default_factory=dict)
    spillover_extra_cost_usd: float = 0.0
    boundaries: dict[str, int] = field(default_factory=dict)
    latency: list[dict] = field(default_factory=list)
    """Per (substrate, sla_class) of successful requests: n, ttft and e2e at PERCENTILES."""
    sla: list[dict] = field(default_factory=list)
    """Per SLA class: deadlines, n (counted requests), met, attainment."""
    sla_note: str = ""
    cost_by_tenant: list[dict] = field(default_factory=list)
    cost_by_substrate: list[dict] = field(default_factory=list)
    cost_usd: float = 0.0
    residuals: list[dict] = field(default_factory=list)
    """Per substrate with residuals: ttft_n, ttft (median, p90), tpot_n, tpot (median, p90)."""

    @property
    def spillover_rate(self) -> float:
        return self.spillovers / self.placed if self.placed else 0.0


def _counts(column: pa.Array) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in pc.value_counts(column.drop_null()).to_pylist():
        out[str(item["values"])] = item["counts"]
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _quantiles(values: pa.Array) -> list[float | None]:
    values = values.drop_null()
    if len(values) == 0:
        return [None] * len(PERCENTILES)
    return pc.quantile(values, q=list(PERCENTILES), interpolation="linear").to_pylist()


def _with_deadlines(table: pa.Table, deadlines: dict[str, tuple[float, float]] | None) -> pa.Table:
    """Fill the deadline columns the rows lack from ``deadlines`` (by SLA class)."""
    if not deadlines:
        return table
    classes = table.column("sla_class").to_pylist()
    for i, col in enumerate(("ttft_deadline_s", "e2e_deadline_s")):
        given = table.column(col).to_pylist()
        filled = [g if g is not None else deadlines.get(c, (None, None))[i] for g, c in zip(given, classes)]
        table = table.set_column(table.schema.get_field_index(col), col, pa.array(filled, pa.float64()))
    return table


def _met(table: pa.Table) -> pa.ChunkedArray:
    """Per row: answered 200 within both deadlines (null where the deadlines are unknown)."""
    ok = pc.equal(table.column("status_code"), 200)
    ttft_ok = pc.less_equal(table.column("ttft_s"), table.column("ttft_deadline_s"))
    e2e_ok = pc.less_equal(table.column("e2e_s"), table.column("e2e_deadline_s"))
    met = pc.and_kleene(ok, pc.and_kleene(pc.fill_null(ttft_ok, False), pc.fill_null(e2e_ok, False)))
    known = pc.and_(pc.is_valid(table.column("ttft_deadline_s")), pc.is_valid(table.column("e2e_deadline_s")))
    return pc.if_else(known, met, pa.scalar(None, pa.bool_()))


def _sla_counted(table: pa.Table) -> pa.ChunkedArray:
    """Rows that count for attainment: placed ones, and ones the plane could not serve."""
    placed = pc.is_valid(table.column("substrate"))
    unserved = pc.and_(pc.is_valid(table.column("sla_class")),
                       pc.is_in(table.column("status_code"), pa.array(sorted(UNSERVED_STATUSES), pa.int16())))
    return pc.or_(placed, unserved)


def summarise(table: pa.Table, deadlines: dict[str, tuple[float, float]] | None = None) -> Summary:
    s = Summary(requests=table.num_rows)
    if table.num_rows == 0:
        return s
    table = _with_deadlines(table, deadlines)
    times = table.column("time")
    s.first, s.last = pc.min(times).as_py(), pc.max(times).as_py()
    placed_mask = pc.is_valid(table.column("substrate"))
    placed = table.filter(placed_mask)
    refused = table.filter(pc.invert(placed_mask))
    s.placed = placed.num_rows
    s.ok = pc.sum(pc.equal(placed.column("status_code"), 200)).as_py() or 0
    s.failed = s.placed - s.ok
    s.refused = refused.num_rows
    s.refused_by_code = _counts(pc.coalesce(refused.column("rejection_code"), refused.column("error_code"),
                                            pa.scalar("unknown")))

    spilled = placed.filter(placed.column("spillover"))
    s.spillovers = spilled.num_rows
    s.spillover_by_reason = _counts(spilled.column("spillover_reason"))
    s.spillover_extra_cost_usd = pc.sum(spilled.column("spillover_extra_cost_actual_usd")).as_py() or 0.0
    s.boundaries = _counts(spilled.column("boundary"))

    ok = placed.filter(pc.equal(placed.column("status_code"), 200))
    keys = sorted({(r["substrate"], r["sla_class"] or "")
                   for r in ok.group_by(["substrate", "sla_class"]).aggregate([]).to_pylist()})
    for substrate, sla in keys:
        group = ok.filter(pc.and_(pc.equal(ok.column("substrate"), substrate),
                                  pc.equal(pc.fill_null(ok.column("sla_class"), ""), sla)))
        s.latency.append({"substrate": substrate, "sla_class": sla, "n": group.num_rows,
                          "ttft": _quantiles(group.column("ttft_s")), "e2e": _quantiles(group.column("e2e_s"))})

    counted = table.filter(_sla_counted(table))
    met = _met(counted)
    with_deadline = counted.append_column("met", met).filter(pc.is_valid(met))
    for sla in sorted(pc.unique(with_deadline.column("sla_class").drop_null()).to_pylist()):
        group = with_deadline.filter(pc.equal(with_deadline.column("sla_class"), sla))
        n = group.num_rows
        hits = pc.sum(group.column("met")).as_py() or 0
        s.sla.append({"sla_class": sla, "ttft_deadline_s": group.column("ttft_deadline_s")[0].as_py(),
                      "e2e_deadline_s": group.column("e2e_deadline_s")[0].as_py(), "n": n, "met": hits,
                      "attainment": hits / n if n else 0.0})
    if counted.num_rows and not s.sla:
        s.sla_note = "no SLA deadlines recorded in the rows; pass --config to give them"

    s.cost_usd = pc.sum(placed.column("cost_usd")).as_py() or 0.0
    s.cost_by_tenant = _cost_groups(placed, "tenant", s.cost_usd)
    s.cost_by_substrate = _cost_groups(placed, "substrate", s.cost_usd)
    s.residuals = residual_summary(placed)
    return s


def residual_summary(placed: pa.Table) -> list[dict]:
    """Per substrate (sorted): the count, median and p90 of ``ttft_residual`` and ``tpot_residual``
    over the rows that have them; substrates with neither are left out."""
    out = []
    for substrate in sorted(pc.unique(placed.column("substrate").drop_null()).to_pylist()):
        group = placed.filter(pc.equal(placed.column("substrate"), substrate))
        entry: dict = {"substrate": substrate}
        for col, key in (("ttft_residual", "ttft"), ("tpot_residual", "tpot")):
            values = group.column(col).drop_null()
            entry[f"{key}_n"] = len(values)
            entry[key] = ([None] * len(RESIDUAL_PERCENTILES) if len(values) == 0 else
                          pc.quantile(values, q=list(RESIDUAL_PERCENTILES), interpolation="linear").to_pylist())
        if entry["ttft_n"] or entry["tpot_n"]:
            out.append(entry)
    return out


def residual_medians(table: pa.Table, column: str) -> dict[str, list[tuple[datetime, float]]]:
    """Per substrate, per time bucket (``table`` has a ``bucket`` column): the median of ``column``
    over the rows that have it, in time order."""
    rows = table.filter(pc.is_valid(table.column(column)))
    if rows.num_rows == 0:
        return {}
    grouped = rows.group_by(["bucket", "substrate"]).aggregate(
        [(column, "approximate_median")]).sort_by("bucket").to_pylist()
    out: dict[str, list[tuple[datetime, float]]] = {}
    for r in grouped:
        out.setdefault(r["substrate"], []).append((r["bucket"], r[f"{column}_approximate_median"]))
    return dict(sorted(out.items()))


def _cost_groups(placed: pa.Table, key: str, total: float) -> list[dict]:
    grouped = placed.group_by(key).aggregate([
        ("request_id", "count"), ("input_tokens", "sum"), ("output_tokens", "sum"), ("cost_usd", "sum")])
    rows = [{key: r[key], "requests": r["request_id_count"], "input_tokens": r["input_tokens_sum"] or 0,
             "output_tokens": r["output_tokens_sum"] or 0, "cost_usd": r["cost_usd_sum"] or 0.0}
            for r in grouped.to_pylist()]
    for r in rows:
        r["share"] = r["cost_usd"] / total if total else 0.0
    return sorted(rows, key=lambda r: (-r["cost_usd"], str(r[key])))





# -------------------------------------------------------------------------------------------------
# Plots over time


def _bucketed(table: pa.Table) -> tuple[pa.Table, int, list[datetime]]:
    """``table`` with a ``bucket`` column (its time floored to the bucket width), the width in
    seconds, and every bucket from the first to the last (so gaps plot as zeros)."""
    span = (pc.max(table.column("time")).as_py() - pc.min(table.column("time")).as_py()).total_seconds()
    seconds, multiple, unit = next((b for b in BUCKETS if span / b[0] <= 120), BUCKETS[-1])
    bucket = pc.floor_temporal(table.column("time"), multiple=multiple, unit=unit)
    first, last = pc.min(bucket).as_py(), pc.max(bucket).as_py()
    n = int((last - first).total_seconds() // seconds) + 1
    return table.append_column("bucket", bucket), seconds, [first + timedelta(seconds=i * seconds) for i in range(n)]


def _series(table: pa.Table, key: str, axis: list[datetime], width_s: int,
            value: str | None = None) -> dict[str, list[float]]:
    """Per value of ``key``, per bucket of ``axis``: the row count (or the sum of ``value``)."""
    agg = ("request_id", "count") if value is None else (value, "sum")
    col = f"{agg[0]}_{agg[1]}"
    out: dict[str, list[float]] = {}
    for r in table.group_by(["bucket", key]).aggregate([agg]).to_pylist():
        i = int((r["bucket"] - axis[0]).total_seconds() // width_s)
        out.setdefault(str(r[key]), [0.0] * len(axis))[i] = r[col] or 0.0
    return dict(sorted(out.items()))


def write_plots(table: pa.Table, out: Path, deadlines: dict[str, tuple[float, float]] | None = None) -> list[Path]:
    """PNG plots over time into ``out``; the paths written (plots with nothing to show are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    if table.num_rows == 0:
        return []
    out.mkdir(parents=True, exist_ok=True)
    table = _with_deadlines(table, deadlines)
    table, width_s, axis = _bucketed(table)
    per = "minute" if width_s < 3600 else "hour"
    scale = (60.0 if per == "minute" else 3600.0) / width_s
    written: list[Path] = []

    def figure(name: str, title: str, rows: int = 1):
        fig, axes = plt.subplots(rows, 1, figsize=(10, 3.2 * rows), squeeze=False, sharex=True)
        fig.suptitle(title)
        for ax in axes[:, 0]:
            locator = AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
            ax.grid(alpha=0.3)
        return fig, axes[:, 0]

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    placed = table.filter(pc.is_valid(table.column("substrate")))
    refused = table.filter(pc.is_null(table.column("substrate")))

    fig, (ax,) = figure("placements", f"placements per {per} by substrate")
    if placed.num_rows:
        series = _series(placed, "substrate", axis, width_s)
        ax.stackplot(axis, [[v * scale for v in s] for s in series.values()], labels=list(series), step="post")
    if refused.num_rows:
        rs = _series(refused.append_column("all", pa.array(["refused"] * refused.num_rows)), "all", axis, width_s)
        ax.plot(axis, [v * scale for v in rs["refused"]], "k--", label="refused", drawstyle="steps-post")
    ax.set_ylabel(f"requests / {per}")
    ax.legend(loc="upper left", fontsize="small")
    save(fig, "placements")

    if placed.num_rows:
        fig, (ax1, ax2) = figure("spillover", "spillover", rows=2)
        by_flag = _series(placed.append_column("flag", pc.cast(placed.column("spillover"), pa.string())), "flag",
                          axis, width_s)
        none = [0.0] * len(axis)
        spilled_n, kept_n = by_flag.get("true", none), by_flag.get("false", none)
        rate = [100.0 * a / (a + b) if a + b else float("nan") for a, b in zip(spilled_n, kept_n)]
        ax1.plot(axis, rate, drawstyle="steps-post", marker=".")
        ax1.set_ylabel("% of placements")
        spilled = placed.filter(placed.column("spillover"))
        if spilled.num_rows:
            reasons = _series(spilled, "spillover_reason", axis, width_s)
            ax2.stackplot(axis, [[v * scale for v in s] for s in reasons.values()], labels=list(reasons), step="post")
            ax2.legend(loc="upper left", fontsize="small")
        ax2.set_ylabel(f"spillovers / {per}")
        save(fig, "spillover")

    ok = placed.filter(pc.equal(placed.column("status_code"), 200))
    if ok.num_rows:
        fig, (ax1, ax2) = figure("latency", "latency of successful requests by substrate (p50 solid, p95 dashed)",
                                 rows=2)
        for ax, col, label in ((ax1, "ttft_s", "time to first token, s"), (ax2, "e2e_s", "end to end, s")):
            grouped = ok.group_by(["bucket", "substrate"]).aggregate(
                [(col, "tdigest", pc.TDigestOptions(q=[0.5, 0.95]))]).sort_by("bucket").to_pylist()
            for i, sub in enumerate(sorted({r["substrate"] for r in grouped})):
                pts = [(r["bucket"], r[f"{col}_tdigest"]) for r in grouped if r["substrate"] == sub]
                pts = [(b, q) for b, q in pts if q and not any(math.isnan(x) for x in q)]
                if not pts:
                    continue
                color = f"C{i}"
                ax.plot([b for b, _ in pts], [q[0] for _, q in pts], color=color, label=sub, marker=".")
                ax.plot([b for b, _ in pts], [q[1] for _, q in pts], color=color, linestyle="--")
            ax.set_ylabel(label)
            ax.legend(loc="upper left", fontsize="small")
        save(fig, "latency")

    counted = table.filter(_sla_counted(table))
    met = _met(counted)
    with_deadline = counted.append_column("met_int", pc.cast(met, pa.int64())).filter(pc.is_valid(met))
    if with_deadline.num_rows:
        fig, (ax,) = figure("sla", "SLA attainment by class (answered within both deadlines)")
        grouped = with_deadline.group_by(["bucket", "sla_class"]).aggregate(
            [("met_int", "sum"), ("met_int", "count")]).sort_by("bucket").to_pylist()
        for sla in sorted({r["sla_class"] for r in grouped}):
            pts = [(r["bucket"], 100.0 * r["met_int_sum"] / r["met_int_count"]) for r in grouped
                   if r["sla_class"] == sla]
            ax.plot([b for b, _ in pts], [v for _, v in pts], marker=".", label=sla)
        ax.set_ylim(0, 105)
        ax.set_ylabel("% attained")
        ax.legend(loc="lower left", fontsize="small")
        save(fig, "sla")

    if placed.num_rows:
        fig, (ax1, ax2) = figure("cost", "cumulative cost, USD", rows=2)
        for ax, key in ((ax1, "tenant"), (ax2, "substrate")):
            for name, values in _series(placed, key, axis, width_s, "cost_usd").items():
                running, acc = [], 0.0
                for v in values:
                    acc += v
                    running.append(acc)
                ax.plot(axis, running, label=name, drawstyle="steps-post")
            ax.set_ylabel(f"USD by {key}")
            ax.legend(loc="upper left", fontsize="small")
        save(fig, "cost")

    series_by_kind = {col: residual_medians(placed, col) for col in ("ttft_residual", "tpot_residual")}
    if any(series_by_kind.values()):
        from inferplane.telemetry.drift import DriftSettings

        low, high = DriftSettings().band
        fig, axes = figure("residuals", "prediction residuals by substrate: median of observed / predicted "
                           f"per {width_s} s (drift band dotted)", rows=2)
        for ax, (col, series) in zip(axes, series_by_kind.items()):
            for sub, pts in series.items():
                ax.plot([b for b, _ in pts], [v for _, v in pts], marker=".", label=sub)
            ax.axhline(1.0, color="k", linewidth=0.8)
            for bound in (low, high):
                ax.axhline(bound, color="k", linestyle=":", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_ylabel(("TTFT" if col == "ttft_residual" else "TPOT") + " observed / predicted")
            if series:
                ax.legend(loc="upper left", fontsize="small")
        save(fig, "residuals")

    crossed = placed.filter(pc.and_(placed.column("spillover"), pc.not_equal(placed.column("boundary"), "none")))
    if crossed.num_rows:
        fig, (ax,) = figure("boundaries", f"boundaries crossed by spillover, per {per}")
        series = _series(crossed, "boundary", axis, width_s)
        ax.stackplot(axis, [[v * scale for v in s] for s in series.values()], labels=list(series), step="post")
        ax.set_ylabel(f"spillovers / {per}")
        ax.legend(loc="upper left", fontsize="small")
        save(fig, "boundaries")
    return written
