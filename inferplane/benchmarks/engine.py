"""`place()` against the cost every ingress pays anyway: parsing a ~1 KB OpenAI chat body.

Both are timed in the same process, interleaved round by round, so machine noise hits both alike.
The fleet is synthetic (every substrate serves the model, the tenant may use them all, signals are
fresh): the worst case, in which every substrate passes every filter and is scored.

``with_dispatches`` is timed beside them: every ingress replica calls it once per dispatch.
The snapshot is built for the policy, as an ingress replica builds every snapshot it places on
(``ReplicaState.publish``).

``measure_per_request`` sets the tokenizer's cost beside them: the ingress counts every prompt with
the model's tokenizer (``inferplane.api.tokens``, chat template and encoding), here SmolLM2's as
``inferplane models prepare`` makes it, for the same 1 KB chat and for a ~4k-token one.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from inferplane.api.openai_schema import ChatCompletionRequest
from inferplane.api.tokens import TokenCounter, TokenizerUnavailable, estimate_chat_tokens, load_tokenizer
from inferplane.config.build import BuiltConfig, build
from inferplane.config.references import check_references
from inferplane.config.schema import InferplaneConfig, TokenizerSpec
from inferplane.placement import PlacementRequest, Reading, SubstrateSignals, place
from inferplane.placement.snapshot import FleetSnapshot

CLASSES = ("gpu_cluster", "inference_silicon", "giant_context", "provider_api", "sovereign_onprem")
JURISDICTIONS = ("DE", "FR", "IE", "US", "JP")
MODEL = "bench-model"


def synthetic_fleet(n: int, seed: int = 0) -> BuiltConfig:
    """A valid config of ``n`` substrates (a mix of classes, kinds, regions), built."""
    rng = random.Random(seed)
    substrates = []
    for i in range(n):
        kind = "vllm" if i % 3 == 0 else "emulated"
        s = {
            "name": f"s{i:03d}",
            "class": CLASSES[i % len(CLASSES)],
            "kind": kind,
            "models": [{"name": MODEL, "context_window_tokens": 32768}],
            "topology": {"region": f"r{i % 4}", "zone": f"r{i % 4}-z{i % 3}"},
            "jurisdiction": JURISDICTIONS[i % len(JURISDICTIONS)],
            "capacity": {"tier": "reserved" if i % 2 == 0 else "burst",
                         "max_concurrent_requests": rng.choice((8, 16, 64, 256)), "max_queued_requests": 8},
            "cost": {"usd_per_1m_input_tokens": rng.uniform(0, 1), "usd_per_1m_output_tokens": rng.uniform(0, 2),
                     "usd_per_gpu_hour": rng.uniform(0, 4), "gpus_per_replica": 1, "egress_usd_per_gb": 0.05},
            "latency": {"base_ttft_ms": rng.uniform(20, 400), "network_rtt_ms": rng.uniform(1, 120),
                        "prefill_tokens_per_s": rng.uniform(1000, 40000), "decode_tokens_per_s": rng.uniform(20, 600),
                        "decode_slowdown_at_full_batch": 2.0},
        }
        if kind == "vllm":
            s["vllm"] = {"engine": {"model_path": "/models/bench", "max_model_len": 32768}}
        else:
            s["emulated"] = {"emulates": "benchmark substrate",
                             "physics": {"ttft_ms": 50, "prefill_tokens_per_s": 5000, "decode_tokens_per_s": 100,
                                         "max_concurrency": 16}}
        substrates.append(s)
    doc = {
        "schema_version": 1,
        "sla_classes": [{"name": "interactive", "ttft_deadline_ms": 1500, "e2e_deadline_ms": 20000}],
        "substrates": substrates,
        "models": [{"name": MODEL, "primary_substrate": "s000"}],
        "tenants": [{"name": "bench", "api_keys_sha256": ["0" * 64], "allowed_jurisdictions": ["*"],
                     "default_sla_class": "interactive"}],
        "ingress": {"topology": {"region": "r0", "zone": "r0-z0"}},
        "policy": {"spillover": {"mode": "scored"}},
    }
    cfg = InferplaneConfig.model_validate(doc)
    problems = check_references(cfg)
    if problems:
        raise ValueError(f"synthetic fleet is invalid: {problems[0]}")
    return build(cfg)


def live_snapshot(built: BuiltConfig, now_s: float, seed: int = 0) -> FleetSnapshot:
    rng = random.Random(seed)
    signals = []
    for spec in built.fleet.substrates:
        at = now_s - rng.uniform(0, 0.5)
        signals.append(SubstrateSignals(
            in_flight=Reading(rng.randint(0, spec.max_concurrent - 1), at),
            queued=Reading(0.0, at),
            kv_cache_usage=Reading(rng.random(), at) if spec.kind == "vllm" else None,
            gpu_memory_used_ratio=Reading(rng.random(), at) if spec.kind == "vllm" else None,
            recent_ttft_s=Reading(rng.uniform(0.05, 0.5), at),
        ))
    return FleetSnapshot(version=1, taken_at_s=now_s, fleet=built.fleet, signals=tuple(signals), policy=built.policy)


def chat_body(user: str | None = None) -> bytes:
    """A typical ~1 KB chat request body (``user``: another user message in the same body)."""
    system = "You are a careful assistant for a bank's internal help desk. Answer briefly and cite the policy."
    if user is None:
        user = ("Our team is moving the quarterly risk report pipeline to the new cluster. " * 10).strip()
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "max_tokens": 256, "temperature": 0.2, "top_p": 0.95, "stream": True,
        "stream_options": {"include_usage": True}, "user": "analyst-4711",
    }
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Timing:
    median_us: float
    p90_us: float


def _rounds(fn: Callable[[int], None], inner: int) -> float:
    t0 = time.perf_counter_ns()
    fn(inner)
    return (time.perf_counter_ns() - t0) / inner / 1000.0


def measure(sizes: tuple[int, ...] = (16, 64, 256), rounds: int = 30, inner: int = 200) -> list[dict]:
    body = chat_body()
    now = 1_000_000.0

    def parse(k: int) -> None:
        for _ in range(k):
            ChatCompletionRequest.model_validate_json(body)

    results = []
    for n in sizes:
        built = synthetic_fleet(n)
        snap = live_snapshot(built, now)
        requests = [
            PlacementRequest(f"req-{i}", "bench", MODEL, "interactive", 900, 256, now, "r0", "r0-z0")
            for i in range(inner)
        ]
        policy = built.policy

        def run_place(k: int) -> None:
            for r in requests[:k]:
                place(r, snap, policy)

        # An ingress replica's view after each dispatch: one substrate's count moves, as in
        # ``deployments/ingress.py`` (the view is derived from the published snapshot each time).
        names = [s.name for s in built.fleet.substrates]
        reported = {name: 0 for name in names}
        dispatches = [{**reported, names[i % n]: 1 + i % 3} for i in range(inner)]

        def run_dispatch(k: int) -> None:
            for current in dispatches[:k]:
                snap.with_dispatches(reported, current)

        run_place(inner), parse(inner), run_dispatch(inner)  # warm-up
        place_us, parse_us, dispatch_us = [], [], []
        scale = max(1, inner * 16 // n)  # keep a round's duration similar across fleet sizes
        for _ in range(rounds):
            parse_us.append(_rounds(parse, inner))
            place_us.append(_rounds(run_place, min(inner, scale)))
            dispatch_us.append(_rounds(run_dispatch, min(inner, scale)))
        p = _summary(place_us)
        q = _summary(parse_us)
        w = _summary(dispatch_us)
        results.append({
            "substrates": n, "body_bytes": len(body),
            "place_median_us": p.median_us, "place_p90_us": p.p90_us,
            "parse_median_us": q.median_us, "parse_p90_us": q.p90_us,
            "with_dispatches_median_us": w.median_us, "with_dispatches_p90_us": w.p90_us,
            "ratio": p.median_us / q.median_us,
        })
    return results


def _summary(values: list[float]) -> Timing:
    ordered = sorted(values)
    return Timing(statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))])


BENCH_TOKENIZER = "builtin:smollm2-135m-instruct"
_PROSE = ("the", "quarterly", "risk", "report", "pipeline", "moves", "to", "a", "new", "cluster", "in", "Frankfurt",
          "and", "every", "team", "must", "check", "its", "jobs,", "budgets", "or", "alerts", "before", "Friday.",
          "Latency", "rose", "by", "percent", "when", "nodes", "were", "drained;", "see", "ticket", "for", "details.")


def long_prompt(words: int = 2400, seed: int = 0) -> str:
    """Prose-like text of ``words`` words with numbers between them (~4k SmolLM2 tokens at 2,400)."""
    rng = random.Random(seed)
    parts = []
    for i in range(words):
        parts.append(str(rng.randint(0, 99_999)) if i % 9 == 8 else rng.choice(_PROSE))
    return " ".join(parts)


def measure_per_request(rounds: int = 30, substrates: int = 16) -> dict:
    """What the ingress pays per request, interleaved round by round: the pydantic parse of the
    1 KB chat body, ``place()`` on ``substrates`` substrates, and the prompt-token count of that body
    and of a ~4k-token chat (``TokenCounter.prompt_tokens`` on the parsed body), beside the old
    estimate. ``tokenizer``: which tokenizer counted, or why none could (then no count rows)."""
    now = 1_000_000.0
    short_raw, long_raw = chat_body(), chat_body(long_prompt())
    short, long = (ChatCompletionRequest.model_validate_json(b) for b in (short_raw, long_raw))
    built = synthetic_fleet(substrates)
    snap = live_snapshot(built, now)
    placed = PlacementRequest("req-0", "bench", MODEL, "interactive", 900, 256, now, "r0", "r0-z0")
    try:
        tokenizer = load_tokenizer(TokenizerSpec(hf=BENCH_TOKENIZER))
    except TokenizerUnavailable as exc:
        tokenizer, source = None, f"unavailable ({exc})"
    else:
        source = tokenizer.source
    counter = TokenCounter({MODEL: tokenizer}, {MODEL: MODEL}) if tokenizer else None

    def loop(fn: Callable[[], object]) -> Callable[[int], None]:
        def run(k: int) -> None:
            for _ in range(k):
                fn()
        return run

    # (label, tokens it counts or None, the timed call, calls per round)
    rows: list[tuple[str, int | None, Callable[[int], None], int]] = [
        (f"parse: {len(short_raw)}-byte chat body", None,
         loop(lambda: ChatCompletionRequest.model_validate_json(short_raw)), 200),
        (f"place(): {substrates} substrates", None, loop(lambda: place(placed, snap, built.policy)), 200),
    ]
    if counter is not None:
        rows += [
            (f"count: {len(short_raw)}-byte chat", counter.prompt_tokens(short), loop(lambda: counter.prompt_tokens(short)), 50),
            (f"count: {len(long_raw) // 1000}-KB chat", counter.prompt_tokens(long), loop(lambda: counter.prompt_tokens(long)), 3),
        ]
    rows.append((f"estimate: {len(long_raw) // 1000}-KB chat (fallback)", estimate_chat_tokens(long),
                 loop(lambda: estimate_chat_tokens(long)), 200))
    for _, _, run, inner in rows:  # warm-up
        run(inner)
    timings: list[list[float]] = [[] for _ in rows]
    for _ in range(rounds):
        for i, (_, _, run, inner) in enumerate(rows):
            timings[i].append(_rounds(run, inner))
    parse_median = statistics.median(timings[0])
    out = []
    for (label, tokens, _, _), values in zip(rows, timings):
        t = _summary(values)
        out.append({"what": label, "tokens": tokens, "median_us": t.median_us, "p90_us": t.p90_us,
                    "vs_parse": t.median_us / parse_median})
    return {"tokenizer": source, "rows": out}
