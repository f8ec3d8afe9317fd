"""`inferplane bench engine`: placement speed against a baseline measured side by side, and what
counting a prompt's tokens with the model's tokenizer costs beside them."""

from __future__ import annotations

import argparse
import json

from inferplane.cli.table import render_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks that print ratios against a baseline", description=__doc__)
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    e = bsub.add_parser("engine", help="place() and token counting against parsing a 1 KB OpenAI chat body")
    e.add_argument("--sizes", default="16,64,256", help="fleet sizes, comma-separated")
    e.add_argument("--rounds", type=int, default=30)
    e.add_argument("--json", dest="json_out", help="also write the results to this file")
    e.set_defaults(func=cmd_engine)
    o = bsub.add_parser("overhead", help="the plane against a plain Ray Serve app over the same backends")
    o.add_argument("--concurrency", default="1,16,64", help="comma-separated (default 1,16,64)")
    o.add_argument("--requests", type=int, default=1200, help="requests per target per concurrency")
    o.add_argument("--rounds", type=int, default=2, help="alternations of plain and plane")
    o.add_argument("--ingress-replicas", type=int, default=1)
    o.add_argument("--json", dest="json_out", help="also write the results to this file")
    o.set_defaults(func=cmd_overhead)
    v = bsub.add_parser("vllm", help="the same vLLM CPU engine served plainly and through the plane")
    v.add_argument("--concurrency", type=int, default=16)
    v.add_argument("--requests", type=int, default=48, help="streamed requests per target per round")
    v.add_argument("--max-tokens", type=int, default=64)
    v.add_argument("--rounds", type=int, default=2)
    v.add_argument("--json", dest="json_out", help="also write the results to this file")
    v.set_defaults(func=cmd_vllm)


def cmd_engine(args: argparse.Namespace) -> int:
    from inferplane.benchmarks.engine import measure, measure_per_request

    sizes = tuple(int(s) for s in args.sizes.split(","))
    results = measure(sizes, rounds=args.rounds)
    rows = [
        [str(r["substrates"]), f"{r['place_median_us']:.1f}", f"{r['place_p90_us']:.1f}",
         f"{r['parse_median_us']:.1f}", f"{r['parse_p90_us']:.1f}", f"{r['ratio']:.2f}",
         f"{r['with_dispatches_median_us']:.2f}"]
        for r in results
    ]
    print(f"place() vs pydantic parse of a {results[0]['body_bytes']}-byte chat body (median of "
          f"{args.rounds} interleaved rounds; every substrate eligible and scored); with_dispatches: "
          "one ingress view per dispatch")
    print(render_table(["substrates", "place µs", "place p90", "parse µs", "parse p90", "ratio",
                        "with_dispatches µs"], rows, "rrrrrrr"))
    per_request = measure_per_request(rounds=args.rounds, substrates=sizes[0])
    print(f"per request, beside the parse (median of {args.rounds} interleaved rounds); "
          f"tokenizer: {per_request['tokenizer']}")
    print(render_table(["per request", "tokens", "µs", "p90 µs", "vs parse"],
                       [[r["what"], "" if r["tokens"] is None else str(r["tokens"]), f"{r['median_us']:.1f}",
                         f"{r['p90_us']:.1f}", f"{r['vs_parse']:.2f}"] for r in per_request["rows"]], "lrrrr"))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump({"placement": results, "per_request": per_request}, fh, indent=2)
    first = results[0]
    print(f"engine_vs_parse_ratio={first['ratio']:.2f}")
    return 0


def cmd_overhead(args: argparse.Namespace) -> int:
    from inferplane.benchmarks.overhead import measure_overhead

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print(f"plain Ray Serve vs inferplane over 4 zero-latency emulated backends, {args.ingress_replicas} ingress "
          f"replica(s) each, {args.requests} requests per target per concurrency in {args.rounds} alternating "
          "rounds, loopback; ok/s and latencies count successful responses only", flush=True)
    rows = measure_overhead(concurrencies, args.requests, args.rounds, ingress_replicas=args.ingress_replicas,
                            echo=lambda line: print(line, flush=True))
    table = [[str(r["concurrency"]), f"{r['plain']['rps']:.1f}", f"{r['plane']['rps']:.1f}",
              f"{r['plain']['p50_ms']:.1f}", f"{r['plane']['p50_ms']:.1f}", f"{r['plain']['p99_ms']:.1f}",
              f"{r['plane']['p99_ms']:.1f}", f"{r['throughput_ratio']:.3f}", f"{r['p50_ratio']:.3f}",
              str(r["plain"]["errors"]), str(r["plane"]["errors"])] for r in rows]
    print(render_table(["conc", "plain ok/s", "plane ok/s", "plain p50 ms", "plane p50 ms", "plain p99 ms",
                        "plane p99 ms", "rps ratio", "p50 ratio", "plain errors", "plane errors"], table,
                       "r" * 11))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
    print(f"throughput_ratio={rows[-1]['throughput_ratio']:.3f}")
    return 0


def cmd_vllm(args: argparse.Namespace) -> int:
    from inferplane.benchmarks.vllm_bench import measure_vllm

    print(f"SmolLM2-135M-Instruct on one vLLM CPU engine: plain Serve endpoint vs inferplane, "
          f"{args.requests} streamed requests x {args.max_tokens} tokens at concurrency {args.concurrency}, "
          f"{args.rounds} alternating rounds", flush=True)
    r = measure_vllm(args.concurrency, args.requests, args.max_tokens, args.rounds,
                     echo=lambda line: print(line, flush=True))
    rows = [[t, f"{r[t]['tokens_per_s']:.1f}", f"{r[t]['ttft_p50_ms']:.0f}", f"{r[t]['ttft_p90_ms']:.0f}",
             str(r[t]["errors"])] for t in ("plain", "plane")]
    print(render_table(["path", "output tok/s", "ttft p50 ms", "ttft p90 ms", "errors"], rows, "lrrrr"))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(r, fh, indent=2)
    print(f"ttft_p50_ratio={r['ttft_p50_ratio']:.3f}")
    print(f"tokens_per_s_ratio={r['tokens_per_s_ratio']:.3f}")
    return 0
