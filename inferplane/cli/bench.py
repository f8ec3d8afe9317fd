"""`inferplane bench engine`: placement speed against a baseline measured side by side."""

from __future__ import annotations

import argparse
import json

from inferplane.cli.table import render_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks that print ratios against a baseline", description=__doc__)
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    e = bsub.add_parser("engine", help="place() against parsing a 1 KB OpenAI chat body")
    e.add_argument("--sizes", default="16,64,256", help="fleet sizes, comma-separated")
    e.add_argument("--rounds", type=int, default=30)
    e.add_argument("--json", dest="json_out", help="also write the results to this file")
    e.set_defaults(func=cmd_engine)


def cmd_engine(args: argparse.Namespace) -> int:
    from inferplane.benchmarks.engine import measure

    sizes = tuple(int(s) for s in args.sizes.split(","))
    results = measure(sizes, rounds=args.rounds)
    rows = [
        [str(r["substrates"]), f"{r['place_median_us']:.1f}", f"{r['place_p90_us']:.1f}",
         f"{r['parse_median_us']:.1f}", f"{r['parse_p90_us']:.1f}", f"{r['ratio']:.2f}"]
        for r in results
    ]
    print(f"place() vs pydantic parse of a {results[0]['body_bytes']}-byte chat body (median of "
          f"{args.rounds} interleaved rounds; every substrate eligible and scored)")
    print(render_table(["substrates", "place µs", "place p90", "parse µs", "parse p90", "ratio"], rows, "rrrrrr"))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    first = results[0]
    print(f"engine_vs_parse_ratio={first['ratio']:.2f}")
    return 0
