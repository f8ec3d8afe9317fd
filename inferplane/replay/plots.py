"""PNG plots of a replay (matplotlib, Agg backend: no display needed).

    latency_cdf.png      CDFs of time to first token and end-to-end latency, one line per router
    sla_and_cost.png     SLA attainment and cost side by side, per router, with the bound marked
    substrate_load.png   slots held + requests waiting per substrate over time, one panel per router
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferplane.replay.simulator import SimulationResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: dict, results: tuple[SimulationResult, ...], directory: str | Path) -> list[str]:
    """Write the three PNGs into ``directory`` (created if missing); returns their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    paths = [_latency_cdf(plt, results, out), _sla_and_cost(plt, report, out), _substrate_load(plt, results, out)]
    return [str(p) for p in paths]


def _latency_cdf(plt, results: tuple[SimulationResult, ...], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for result in results:
        done = [o for o in result.outcomes if o.status == "completed"]
        for ax, values in ((axes[0], [o.ttft_s for o in done]), (axes[1], [o.e2e_s for o in done])):
            if not values:
                continue
            xs = np.sort(np.asarray(values))
            ys = np.arange(1, xs.size + 1) / len(result.outcomes)
            ax.step(xs, ys, where="post", label=result.router)
    for ax, title in ((axes[0], "time to first token"), (axes[1], "end-to-end latency")):
        ax.set_xscale("log")
        ax.set_xlabel("seconds (log)")
        ax.set_ylabel("fraction of all requests completed within")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / "latency_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sla_and_cost(plt, report: dict, out: Path) -> Path:
    runs = report["runs"]
    names = [r["router"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(names))
    left.bar(x, [100 * r["sla_attainment"] for r in runs], color="tab:blue")
    right.bar(x, [r["usage_cost_usd"] for r in runs], color="tab:orange", label="usage")
    right.bar(x, [r["fixed_cost_usd"] for r in runs], bottom=[r["usage_cost_usd"] for r in runs],
              color="tab:gray", alpha=0.5, label="reserved hardware")
    bound = report.get("bound")
    if bound:
        left.axhline(100 * bound["sla_attainment"], color="black", linestyle="--", label="bound")
        right.axhline(bound["cost_usd"], color="black", linestyle="--", label="bound: least cost at best SLA")
        left.legend(loc="lower right", fontsize=8)
    right.legend(loc="upper right", fontsize=8)
    for ax, label in ((left, "SLA attainment, %"), (right, "cost, USD")):
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    left.set_ylim(0, 100)
    left.set_title("deadlines met")
    right.set_title("cost")
    fig.tight_layout()
    path = out / "sla_and_cost.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _substrate_load(plt, results: tuple[SimulationResult, ...], out: Path) -> Path:
    n = max(1, len(results))
    fig, axes = plt.subplots(n, 1, figsize=(12, 2.4 * n), sharex=True, squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        if result.load:
            t = np.asarray([s.t_s for s in result.load])
            for i, name in enumerate(result.substrates):
                held = np.asarray([s.running[i] + s.waiting[i] for s in result.load])
                ax.plot(t, held, label=name, linewidth=1)
        ax.set_title(result.router, fontsize=9, loc="left")
        ax.set_ylabel("held + waiting")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("simulated seconds")
    fig.tight_layout()
    path = out / "substrate_load.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
