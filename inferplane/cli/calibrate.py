"""`inferplane calibrate CONFIG --substrate NAME`: measure a vLLM substrate's real engine on this
host and print the ``latency`` block that makes the plane's predictions (and replays) match it.

    inferplane calibrate configs/local.yaml --substrate local-vllm

Starts the substrate's engine in this process (no Ray; ~20 s on CPU), measures prefill at several
prompt lengths and decode at 1..K concurrent streams, fits the latency model of
``substrate_adapters.physics`` and prints each measurement beside the model's prediction.
"""

from __future__ import annotations

import argparse
import json

import yaml

from inferplane.cli.table import render_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit a vLLM substrate's latency profile to its real engine",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="an inferplane config")
    p.add_argument("--substrate", required=True, help="the vllm substrate to measure")
    p.add_argument("--repeats", type=int, default=3, help="repetitions per prompt length (default 3)")
    p.add_argument("--decode-tokens", type=int, default=64, help="output tokens per decode stream (default 64)")
    p.add_argument("--json", dest="json_out", help="also write the calibration to this file")
    p.set_defaults(func=cmd)


def render(c) -> str:
    prefill = render_table(
        ["prompt tokens", "ttft ms (measured)", "ttft ms (model)", "model / measured"],
        [[str(p.prompt_tokens), f"{p.ttft_s * 1000:.1f}", f"{p.model_s * 1000:.1f}", f"{p.model_s / p.ttft_s:.2f}"]
         for p in c.prefill], "rrrr")
    decode = render_table(
        ["streams", "tok/s per stream (measured)", "(model)", "model / measured", "tok/s in all"],
        [[str(d.streams), f"{d.tokens_per_s:.1f}", f"{d.model_tokens_per_s:.1f}",
          f"{d.model_tokens_per_s / d.tokens_per_s:.2f}", f"{d.aggregate_tokens_per_s:.1f}"] for d in c.decode],
        "rrrrr")
    declared = "  ".join(f"{k} {v:g}" for k, v in c.declared.items() if v is not None)
    block = yaml.safe_dump({"latency": c.latency_block()}, sort_keys=False, default_flow_style=None).strip()
    return "\n".join([
        f"calibration of {c.substrate} (K = {c.max_concurrent_requests} slots), {c.wall_s:.0f} s", "",
        prefill, "", decode, "",
        (f"prefill joining {c.max_concurrent_requests - 1} decoding streams: "
         f"{c.ttft_joining_full_batch_s * 1000:.0f} ms against {c.ttft_alone_s * 1000:.0f} ms alone "
         f"(x{c.ttft_joining_full_batch_s / c.ttft_alone_s:.2f}; the model does not slow prefill with the batch)"),
        (f"two prompts sent together: the later first token x{c.prefill_pair_ratio:.2f} of one alone "
         f"-> prefill_concurrency {c.prefill_concurrency or 'unset (side by side)'}"),
        (f"decoding streams lost {c.decode_lost_s:.2f} s to a {c.long_prefill_s:.2f} s prefill "
         f"-> decode_share_during_prefill {c.decode_share_during_prefill:.2f}"),
        f"declared now: {declared}", "",
        "fitted (paste into the substrate):", block])


def cmd(args: argparse.Namespace) -> int:
    from inferplane.benchmarks.calibrate import calibrate

    c = calibrate(args.config, args.substrate, repeats=args.repeats, decode_tokens=args.decode_tokens)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(c.to_dict(), fh, indent=2)
    print(render(c))
    return 0
