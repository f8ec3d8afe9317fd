"""How closely the simulator reproduces a live run: the same requests, simulated and measured.

After a live replay, the simulator is run on the requests the plane actually served, with the
shapes they actually had: each request arrives when it was sent, with the prompt tokens and
completion tokens its usage chunk reported (the real model may stop before ``max_tokens``, and a
chat template adds tokens to the prompt; neither is physics). Requests that did not complete live
keep their planned shapes. Over the requests completed in both runs:

    ttft, e2e        p50 and p90, simulated / measured
    per-token time   (e2e - ttft) / (completion tokens - 1), p50 and p90, for answers of 2+ tokens

A ratio above 1 means the simulator is slower than the real plane, below 1 faster.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from inferplane.replay.live import LiveRun
from inferplane.replay.simulator import SimulationResult
from inferplane.replay.workload import ReplayRequest


def measured_shapes(run: LiveRun) -> tuple[ReplayRequest, ...]:
    """The workload as it was sent: arrival = send time, sizes from the usage chunks."""
    first = run.requests[0].request.arrival_s if run.requests else 0.0
    out = []
    for live in run.requests:
        req = live.request
        changes: dict = {"arrival_s": first + live.sent_s}
        if live.prompt_tokens and live.completion_tokens:
            changes.update(input_tokens=live.prompt_tokens, output_tokens=live.completion_tokens,
                           max_tokens=max(req.max_tokens, live.completion_tokens))
        out.append(replace(req, **changes))
    out.sort(key=lambda r: (r.arrival_s, r.index))
    return tuple(replace(r, index=i) for i, r in enumerate(out))


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q, method="inverted_cdf")) if values else None


def compare(run: LiveRun, simulated: SimulationResult, shapes: tuple[ReplayRequest, ...]) -> dict:
    """Percentiles of both runs over the requests completed in both, and simulated / measured."""
    measured = {m.request.request_id: m for m in run.requests}
    sim_by_id = {shapes[o.index].request_id: (o, shapes[o.index]) for o in simulated.outcomes}
    pairs = []
    for rid, m in measured.items():
        o, shape = sim_by_id.get(rid, (None, None))
        if o is None or o.status != "completed" or m.e2e_s is None or m.status != 200:
            continue
        pairs.append((m, o, shape))
    series: dict[str, tuple[list[float], list[float]]] = {"ttft_s": ([], []), "e2e_s": ([], []),
                                                          "per_token_s": ([], [])}
    for m, o, shape in pairs:
        ttft = m.ttft_s if m.ttft_s is not None else m.e2e_s
        series["ttft_s"][0].append(o.ttft_s)
        series["ttft_s"][1].append(ttft)
        series["e2e_s"][0].append(o.e2e_s)
        series["e2e_s"][1].append(m.e2e_s)
        if (m.completion_tokens or 0) >= 2:
            series["per_token_s"][0].append((o.e2e_s - o.ttft_s) / (shape.output_tokens - 1))
            series["per_token_s"][1].append((m.e2e_s - ttft) / (m.completion_tokens - 1))
    out: dict = {"requests_compared": len(pairs), "metrics": {}}
    for name, (sim, real) in series.items():
        for q in (50, 90):
            s, r = _pct(sim, q), _pct(real, q)
            out["metrics"][f"{name.removesuffix('_s')}_p{q}"] = {
                "simulated_s": s, "measured_s": r,
                "simulated_over_measured": (s / r) if s is not None and r else None}
    return out
