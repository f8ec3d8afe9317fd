"""`inferplane report AUDIT_DIR [--since ISO] [--out DIR] [--html] [--config CONFIG] [--no-plots]`:
what the audit log says happened: placements, spillover and its reasons, latency percentiles by substrate
and SLA class, SLA attainment, cost by tenant and substrate, boundaries crossed, prediction residuals
by substrate (observed / predicted TTFT and TPOT); and the same over time as PNG plots in ``--out``
(``--html``: one self-contained page with the plots inside).

SLA attainment needs deadlines: the rows carry them when the ingress recorded them; otherwise
``--config`` gives them by SLA class. The numbers are ``inferplane.telemetry.report``'s.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from inferplane.cli.table import render_table

if TYPE_CHECKING:
    from inferplane.telemetry.report import Summary

PLOTS = ("placements", "spillover", "latency", "sla", "cost", "boundaries", "residuals")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="summarise an audit log, with plots", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audit_dir", help="the audit directory (date=YYYY-MM-DD/*.parquet)")
    p.add_argument("--since", help="only requests received at or after this ISO date or time (UTC unless it "
                                   "says otherwise), e.g. 2025-06-01 or 2025-06-01T12:00:00+02:00")
    p.add_argument("--out", default="inferplane-report", help="directory for the plots (default: %(default)s)")
    p.add_argument("--html", action="store_true", help="also write OUT/report.html with the plots inside")
    p.add_argument("--config", help="a config whose SLA classes give deadlines the rows do not carry")
    p.add_argument("--no-plots", action="store_true", help="print the summary only")
    p.set_defaults(func=cmd)


def parse_since(text: str) -> datetime:
    """An ISO date or date-time; UTC unless it names an offset."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r} is not an ISO date or time (e.g. 2025-06-01T12:00:00Z)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def deadlines_from_config(path: str) -> dict[str, tuple[float, float]]:
    from inferplane.config import build, load_config

    policy = build(load_config(path)).policy
    return {name: (c.ttft_deadline_s, c.e2e_deadline_s) for name, c in policy.sla_classes.items()}


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _usd(x: float) -> str:
    """Dollars to the nano-dollar for small amounts (a request's egress is often < $0.000001)."""
    digits = f"{abs(x):.4f}" if abs(x) >= 1 else (f"{abs(x):.9f}".rstrip("0").rstrip(".") or "0")
    return ("-" if x < 0 else "") + "$" + digits


def _sec(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def render_summary(s: Summary, source: str) -> str:
    from inferplane.telemetry.report import PERCENTILES

    if s.requests == 0:
        return f"{source}: no audit rows"
    lines = [
        f"inferplane report · {source} · {s.requests} requests · {_when(s.first)} → {_when(s.last)} UTC",
        "",
        f"requests   {s.placed} placed ({s.ok} ok, {s.failed} failed) · {s.refused} refused",
    ]
    if s.refused_by_code:
        lines.append("refused    " + ", ".join(f"{n} {code}" for code, n in s.refused_by_code.items()))
    lines += ["", (f"spillover  {s.spillovers} of {s.placed} placements ({_pct(s.spillover_rate)}) · "
                   f"extra cost over the primary {_usd(s.spillover_extra_cost_usd)}")]
    if s.spillover_by_reason:
        rows = [[r, str(n), _pct(n / s.spillovers)] for r, n in s.spillover_by_reason.items()]
        lines += ["", render_table(["spillover reason", "count", "share"], rows, "lrr")]
    if s.boundaries:
        rows = [[b, str(n), _pct(n / s.spillovers)] for b, n in s.boundaries.items()]
        lines += ["", render_table(["boundary crossed", "count", "share"], rows, "lrr")]
    if s.latency:
        head = ["substrate", "sla class", "n"]
        head += [f"ttft p{round(q * 100)}" for q in PERCENTILES] + [f"e2e p{round(q * 100)}" for q in PERCENTILES]
        rows = [[g["substrate"], g["sla_class"] or "-", str(g["n"])] + [_sec(v) for v in g["ttft"]]
                + [_sec(v) for v in g["e2e"]] for g in s.latency]
        lines += ["", "latency of successful requests, seconds from receipt",
                  render_table(head, rows, "llr" + "r" * 2 * len(PERCENTILES))]
    if s.sla:
        rows = [[g["sla_class"], f"{g['ttft_deadline_s']:g} / {g['e2e_deadline_s']:g}", str(g["n"]), str(g["met"]),
                 _pct(g["attainment"])] for g in s.sla]
        lines += ["", ("SLA attainment: answered within both deadlines, of placed requests and those the plane "
                       "could not serve (429/5xx)"),
                  render_table(["sla class", "deadlines s (ttft / e2e)", "requests", "met", "attainment"], rows,
                               "llrrr")]
    elif s.sla_note:
        lines += ["", f"SLA attainment: {s.sla_note}"]
    if s.residuals:
        from inferplane.telemetry.report import RESIDUAL_PERCENTILES

        def ratio(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        head = ["substrate", "ttft n"] + [f"ttft p{round(q * 100)}" for q in RESIDUAL_PERCENTILES]
        head += ["tpot n"] + [f"tpot p{round(q * 100)}" for q in RESIDUAL_PERCENTILES]
        rows = [[g["substrate"], str(g["ttft_n"])] + [ratio(v) for v in g["ttft"]] + [str(g["tpot_n"])]
                + [ratio(v) for v in g["tpot"]] for g in s.residuals]
        lines += ["", "prediction residuals of successful requests: observed / predicted (1 = as predicted)",
                  render_table(head, rows, "l" + "r" * (len(head) - 1))]
    for key, groups in (("tenant", s.cost_by_tenant), ("substrate", s.cost_by_substrate)):
        rows = [[str(g[key]), str(g["requests"]), str(g["input_tokens"]), str(g["output_tokens"]),
                 f"{g['cost_usd']:.6f}", _pct(g["share"])] for g in groups]
        lines += ["", f"cost by {key} (total ${s.cost_usd:.6f})",
                  render_table([key, "requests", "input tokens", "output tokens", "cost USD", "share"], rows,
                               "lrrrrr")]
    return "\n".join(lines)



def write_html(summary_text: str, plots: list[Path], path: Path, title: str) -> None:
    """One self-contained page: the summary and every plot inlined as base64 PNG."""
    images = "\n".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode("ascii")}"><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in plots)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}}
pre{{background:#f6f8fa;padding:1rem;overflow-x:auto;font-size:.85rem}}
img{{max-width:100%;border:1px solid #ddd}}figure{{margin:1.5rem 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
<pre>{html.escape(summary_text)}</pre>
{images}
</body></html>
"""
    path.write_text(page, encoding="utf-8")


# -------------------------------------------------------------------------------------------------
# A recorded decision


class _RecordedSubstrate:
    """What ``explain.render`` reads of a substrate, as recorded with the decision."""

    def __init__(self, cand: dict) -> None:
        self.name = cand["name"]
        self.substrate_class = cand.get("substrate_class", "?")
        self.jurisdiction = cand.get("jurisdiction", "?")
        self.zone = cand.get("zone", "?")
        self.display_name = cand.get("display_name", self.name)


class _RecordedFleet:
    def __init__(self, record: dict) -> None:
        self._by_name = {c["name"]: _RecordedSubstrate(c) for c in record["candidates"]}

    def substrate(self, name: str) -> _RecordedSubstrate:
        return self._by_name.get(name) or _RecordedSubstrate({"name": name})


def render_recorded_decision(audit_dir: str | Path, placement_or_request_id: str) -> str:
    """A recorded decision shown as ``inferplane explain`` shows a fresh one, with what happened.
    Takes a placement id or a request id (the ``x-inferplane-placement-id`` and
    ``x-inferplane-request-id`` headers of every answer); a request refused before placement (no
    key, a body that does not parse) has a row without a decision, and is shown as its outcome."""
    import pyarrow.dataset as ds

    from inferplane.cli.explain import render
    from inferplane.telemetry.audit import decision_from_record, read_audit

    if not Path(audit_dir).expanduser().is_dir():
        raise ValueError(f"audit directory {audit_dir} does not exist (the config's telemetry.audit_dir)")
    wanted = placement_or_request_id
    rows = read_audit(Path(audit_dir).expanduser(),
                      where=(ds.field("placement_id") == wanted) | (ds.field("request_id") == wanted)).to_pylist()
    if not rows:
        raise ValueError(f"no audit row with placement id or request id {wanted} in {audit_dir}")
    row = rows[-1]
    if row["decision_json"] is None:
        return (f"request {row['request_id']} · recorded {_when(row['time'])} UTC by {row['ingress_id']}\n"
                f"outcome  {row['status_code']} {row['error_code'] or ''} · refused before placement "
                "(no decision was made)")
    record = json.loads(row["decision_json"])
    decision = decision_from_record(record)
    age = row["snapshot_age_s"]
    note = (f"recorded {_when(row['time'])} UTC by {row['ingress_id']} · signals of snapshot "
            f"v{row['snapshot_version']}" + ("" if age is None else f", {age:.2f} s old"))
    text = render(decision, _RecordedFleet(record), note)  # type: ignore[arg-type]
    outcome = [f"outcome  {row['status_code']}" + (f" {row['error_code']}" if row["error_code"] else "")
               + f" · {row['attempts']} attempt{'s' if row['attempts'] != 1 else ''}"
               + ("" if row["ttft_s"] is None else f" · ttft {row['ttft_s']:.3f} s")
               + ("" if row["e2e_s"] is None else f", e2e {row['e2e_s']:.3f} s")
               + ("" if row["input_tokens"] is None else
                  f" · {row['input_tokens']} in / {row['output_tokens'] or 0} out tokens")]
    if row.get("held_s"):
        outcome.append(f"         waited {row['held_s']:.3f} s in the hold queue: {row.get('held_reason') or 'no slot free'}")
    if row["cost_usd"] is not None:
        outcome.append(f"         cost {_usd(row['cost_usd'])} (tokens {_usd(row['cost_tokens_usd'])}, "
                       f"hardware {_usd(row['cost_gpu_usd'])}, egress {_usd(row['cost_egress_usd'])})")
    if row["spillover"]:
        extra = row["spillover_extra_cost_actual_usd"]
        versus = "" if extra is None else (
            f" · {_usd(abs(extra))} {'more' if extra >= 0 else 'less'} than the same work on {row['primary_substrate']}")
        outcome.append(f"         spillover crossed: {row['boundary']}{versus}")
    return text + "\n" + "\n".join(outcome)


# -------------------------------------------------------------------------------------------------


def cmd(args: argparse.Namespace) -> int:
    from inferplane.telemetry.audit import read_audit
    from inferplane.telemetry.report import summarise, write_plots

    directory = Path(args.audit_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"no audit directory at {directory}")
    since = parse_since(args.since) if args.since else None
    deadlines = deadlines_from_config(args.config) if args.config else None
    table = read_audit(directory, since)
    summary = summarise(table, deadlines)
    text = render_summary(summary, str(directory))
    print(text)
    if table.num_rows == 0 or args.no_plots:
        return 0
    out = Path(args.out)
    plots = write_plots(table, out, deadlines)
    print(f"\nplots: {', '.join(str(p) for p in plots)}")
    if args.html:
        page = out / "report.html"
        write_html(text, plots, page, f"inferplane report · {directory}")
        print(f"html: {page}")
    return 0
