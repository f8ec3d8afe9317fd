"""Calibrate a ``vllm`` substrate's latency profile against its real engine on this host.

The placement engine predicts, and the replay simulator runs, a vLLM substrate with the numbers
in its ``latency`` block (``substrate_adapters.physics``):

    ttft(n)      = base_ttft + n / prefill_tokens_per_s                      (one request alone)
    rate(k)      = decode_tokens_per_s / (1 + (slowdown - 1) * min(1, k / K)) (per stream, k running)

with K = ``capacity.max_concurrent_requests``. ``calibrate`` builds the substrate's own adapter
(``VllmEngineAdapter``: the same engine arguments as its Serve replica, in this process, no Ray)
and measures the engine directly:

1. **prefill**: prompts of several lengths n (random words, so that no prefix is cached), one at
   a time, ``max_tokens = 1``; the time to the first token t(n) is fitted to ``t = a + n * b`` by
   least squares on the relative error (weights ``1 / t**2``: attention makes real prefill
   slightly superlinear in n, and an unweighted fit would trade the short prompts' accuracy for the
   longest one's): ``base_ttft = a``, ``prefill_tokens_per_s = 1 / b``;
2. **decode**: k streams started together (k from 1 to K), short prompts, exactly ``L`` output
   tokens each (``min_tokens = max_tokens = L``); a stream's rate is ``(L - 1) / (last token -
   first token)``, averaged over the k streams. ``1 / rate(k)`` is linear in k under the model, so
   a least-squares fit of ``1 / rate = c + d * k`` gives ``decode_tokens_per_s = 1 / c`` and
   ``decode_slowdown_at_full_batch = 1 + d * K / c``;
3. **prefill lanes**: two prompts of the same length sent together, against one alone: the later
   first token over the lone one is ~2 when the engine prefills one prompt at a time (then
   ``prefill_concurrency = 1``), ~1 when it prefills them side by side (left unset);
4. **decode during prefill**: ``K / 4`` streams of ``2 L`` tokens, alone and then with one long
   prompt sent into them after a second; the streams' extra time over the prompt's prefill time
   is the decode they lost to it: ``decode_share_during_prefill = 1 - lost / prefill``;
5. **prefill under load** (reported, not modelled): the first-token time of one prompt joining
   ``K - 1`` decoding streams, over the same prompt alone: the model does not slow prefill with
   the batch, and this is how much that leaves out.

The report gives each measurement beside what the fitted model predicts for it, and the fitted
``latency`` block to paste into the config.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from dataclasses import asdict, dataclass, field

from inferplane.replay.prompts import prompt_text


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    prompt_tokens: int
    ttft_s: float
    """Median of the repetitions."""
    model_s: float


@dataclass(frozen=True, slots=True)
class DecodePoint:
    streams: int
    tokens_per_s: float
    """Per stream, mean over the streams."""
    model_tokens_per_s: float
    aggregate_tokens_per_s: float


@dataclass(frozen=True, slots=True)
class Calibration:
    substrate: str
    base_ttft_ms: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_slowdown_at_full_batch: float
    max_concurrent_requests: int
    prefill: tuple[PrefillPoint, ...]
    decode: tuple[DecodePoint, ...]
    ttft_alone_s: float
    ttft_joining_full_batch_s: float
    prefill_pair_ratio: float
    """Later first token of two prompts sent together / one prompt alone."""
    prefill_concurrency: int | None
    decode_share_during_prefill: float
    decode_lost_s: float
    """Extra time of the decoding streams with the long prompt sent into them."""
    long_prefill_s: float
    """That prompt's time to first token."""
    wall_s: float
    declared: dict = field(default_factory=dict)
    """The substrate's ``latency`` block as configured, for comparison."""

    def latency_block(self) -> dict:
        block = {
            "base_ttft_ms": round(self.base_ttft_ms),
            "prefill_tokens_per_s": round(self.prefill_tokens_per_s),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 1),
            "decode_slowdown_at_full_batch": round(self.decode_slowdown_at_full_batch, 2),
        }
        if self.prefill_concurrency is not None:
            block["prefill_concurrency"] = self.prefill_concurrency
        block["decode_share_during_prefill"] = round(self.decode_share_during_prefill, 2)
        return block

    def to_dict(self) -> dict:
        out = asdict(self)
        out["latency"] = self.latency_block()
        return out


def least_squares(xs: list[float], ys: list[float], weights: list[float] | None = None) -> tuple[float, float]:
    """(intercept, slope) of the line minimising ``sum w * (y - intercept - slope * x)**2``."""
    if len(xs) < 2 or len(set(xs)) < 2:
        raise ValueError("a line needs at least two distinct x values")
    ws = weights or [1.0] * len(xs)
    total = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs)) / total
    my = sum(w * y for w, y in zip(ws, ys)) / total
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
    slope = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys)) / sxx
    return my - slope * mx, slope


def fit_prefill(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(base_ttft_s, prefill_tokens_per_s) from (prompt tokens, ttft) points: ``t = a + n / rate``,
    fitted on the relative error."""
    a, b = least_squares([float(n) for n, _ in points], [t for _, t in points], [1.0 / t**2 for _, t in points])
    if b <= 0:
        raise ValueError("time to first token does not grow with the prompt; measure longer prompts")
    return max(0.0, a), 1.0 / b


def fit_decode(points: list[tuple[int, float]], max_concurrency: int) -> tuple[float, float]:
    """(decode_tokens_per_s, decode_slowdown_at_full_batch) from (streams, per-stream rate)
    points, k <= K: ``1 / rate = c + d * k``, rate_1 = 1 / c, slowdown = 1 + d * K / c (>= 1)."""
    c, d = least_squares([float(k) for k, _ in points], [1.0 / r for _, r in points])
    if c <= 0:
        raise ValueError("decode rates do not fit the batch model (intercept <= 0)")
    return 1.0 / c, max(1.0, 1.0 + d * max_concurrency / c)


def prefill_lanes(pair_ratio: float) -> int | None:
    """1 when two prompts sent together take nearer twice one's time than once (the engine
    prefills one at a time), else None (side by side)."""
    return 1 if pair_ratio >= 1.5 else None


def decode_share_from(lost_s: float, prefill_s: float) -> float:
    """``1 - lost / prefill``, clamped to [0, 1]: the fraction of decode kept during a prefill."""
    if prefill_s <= 0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - lost_s / prefill_s))


def _prompt(rng: random.Random, words: int) -> str:
    return prompt_text(f"calibrate-{rng.random()}", words)


async def _one(adapter, request_id: str, prompt: str, tokens: int, model: str) -> tuple[float, float, int, int]:
    """(time to first token, time to last token, prompt tokens, completion tokens) of one request."""
    from substrate_adapters.base import Finished, GenerationRequest, TextDelta

    request = GenerationRequest(request_id=request_id, model=model, api="completion", prompt=prompt,
                                max_tokens=tokens, min_tokens=tokens, temperature=1.0, seed=1)
    t0 = time.perf_counter()
    first = last = None
    prompt_tokens = completion = 0
    async for event in adapter.generate(request):
        now = time.perf_counter() - t0
        if isinstance(event, TextDelta):
            first = now if first is None else first
            last = now
        elif isinstance(event, Finished):
            prompt_tokens, completion = event.prompt_tokens, event.completion_tokens
            first = now if first is None else first
            last = now if last is None else last
    return first, last, prompt_tokens, completion


async def _measure(adapter, model: str, max_concurrency: int, prompt_words: tuple[int, ...], repeats: int,
                   decode_tokens: int, streams: tuple[int, ...], echo) -> dict:
    rng = random.Random(20261126)
    seq = iter(range(10**9))

    def rid() -> str:
        return f"calibrate-{next(seq)}"

    for _ in range(3):  # warm-up: first requests compile kernels and allocate
        await _one(adapter, rid(), _prompt(rng, 64), 8, model)
    prefill: list[tuple[int, float]] = []
    medians: list[tuple[int, float]] = []
    for words in prompt_words:
        runs = []
        for _ in range(repeats):
            first, _, n, _ = await _one(adapter, rid(), _prompt(rng, words), 1, model)
            runs.append((n, first))
            prefill.append((n, first))
        medians.append((round(statistics.median(n for n, _ in runs)), statistics.median(t for _, t in runs)))
        echo(f"  prefill  {medians[-1][0]:>5} tokens  ttft {medians[-1][1] * 1000:7.1f} ms")
    decode: list[tuple[int, float, float]] = []
    for k in streams:
        results = await asyncio.gather(*[
            _one(adapter, rid(), _prompt(rng, 24), decode_tokens, model) for _ in range(k)])
        rates = [(c - 1) / (last - first) for first, last, _, c in results if c > 1 and last > first]
        span = max(last for _, last, _, _ in results)
        decode.append((k, statistics.fmean(rates), sum(c for *_, c in results) / span))
        echo(f"  decode   {k:>3} streams  {decode[-1][1]:6.1f} tok/s per stream  "
             f"{decode[-1][2]:7.1f} tok/s in all")
    # Prefill while the batch is full of decoding streams, against the same prompt size alone.
    words = prompt_words[len(prompt_words) // 2]
    alone = [(await _one(adapter, rid(), _prompt(rng, words), 1, model))[0] for _ in range(repeats)]
    background = [asyncio.create_task(_one(adapter, rid(), _prompt(rng, 24), decode_tokens * 2, model))
                  for _ in range(max_concurrency - 1)]
    await asyncio.sleep(1.0)  # let the background streams reach decode
    joining = [(await _one(adapter, rid(), _prompt(rng, words), 1, model))[0] for _ in range(repeats)]
    await asyncio.gather(*background)
    echo(f"  prefill of {words} words alone {statistics.median(alone) * 1000:.0f} ms, joining "
         f"{max_concurrency - 1} decoding streams {statistics.median(joining) * 1000:.0f} ms")
    pairs = []
    for _ in range(repeats):
        both = await asyncio.gather(*[_one(adapter, rid(), _prompt(rng, words), 1, model) for _ in range(2)])
        pairs.append(max(first for first, *_ in both))
    pair_ratio = statistics.median(pairs) / statistics.median(alone)
    echo(f"  two prompts of {words} words together: the later first token x{pair_ratio:.2f} of one alone")
    k = max(1, max_concurrency // 4)

    async def streams_end() -> float:
        done = await asyncio.gather(*[_one(adapter, rid(), _prompt(rng, 24), 2 * decode_tokens, model)
                                      for _ in range(k)])
        return max(last for _, last, _, _ in done)

    async def long_prompt_later() -> float:
        await asyncio.sleep(1.0)
        return (await _one(adapter, rid(), _prompt(rng, prompt_words[-1]), 1, model))[0]

    quiet = await streams_end()
    disturbed, long_prefill = await asyncio.gather(streams_end(), long_prompt_later())
    lost = max(0.0, disturbed - quiet)
    echo(f"  {k} streams of {2 * decode_tokens} tokens: {quiet:.2f} s alone, {disturbed:.2f} s with a "
         f"{prompt_words[-1]}-word prompt ({long_prefill:.2f} s to its first token) sent into them")
    return {"prefill": prefill, "prefill_medians": medians, "decode": decode,
            "alone": statistics.median(alone), "joining": statistics.median(joining),
            "pair_ratio": pair_ratio, "lost": lost, "long_prefill": long_prefill}


def calibrate(config_path: str, substrate: str, *, prompt_words: tuple[int, ...] = (32, 512, 1024, 2048),
              repeats: int = 3, decode_tokens: int = 64, echo=print) -> Calibration:
    """Measure ``substrate`` (a ``vllm`` substrate of the config) and fit its latency profile."""
    from inferplane.cli.models import prepare_config_models
    from inferplane.config import build, load_config
    from inferplane.config.schema import SubstrateKind
    from substrate_adapters.vllm_engine import VllmEngineAdapter

    config = load_config(config_path)
    build(config)
    spec = next((s for s in config.substrates if s.name == substrate), None)
    if spec is None:
        raise ValueError(f"no substrate `{substrate}`; substrates: {', '.join(s.name for s in config.substrates)}")
    if spec.kind is not SubstrateKind.VLLM:
        raise ValueError(f"`{substrate}` is a {spec.kind.value} substrate; only vllm substrates run an engine here")
    window = min(m.context_window_tokens for m in spec.models)
    limit = min(window, spec.vllm.engine.max_model_len) - 16
    words = tuple(w for w in prompt_words if w < limit) or (32, limit // 2)
    max_concurrency = spec.capacity.max_concurrent_requests
    streams = tuple(sorted({1, 2, max(1, max_concurrency // 4), max(1, max_concurrency // 2), max_concurrency}))
    prepare_config_models(config_path, echo=lambda line: echo("  " + line))
    model = spec.models[0].upstream_name or spec.models[0].name
    t0 = time.perf_counter()
    echo(f"starting the engine of {substrate} in this process ...")

    async def run() -> dict:
        adapter = VllmEngineAdapter(spec.models, spec.vllm)
        try:
            return await _measure(adapter, model, max_concurrency, words, repeats, decode_tokens, streams, echo)
        finally:
            await adapter.aclose()
            del adapter  # shut down now, not in AsyncLLM.__del__ at interpreter exit (it raises there)
            gc.collect()

    raw = asyncio.run(run())
    base_s, prefill_rate = fit_prefill(raw["prefill"])
    decode_rate, slowdown = fit_decode([(k, r) for k, r, _ in raw["decode"]], max_concurrency)

    def rate_model(k: int) -> float:
        return decode_rate / (1 + (slowdown - 1) * min(1.0, k / max_concurrency))

    lat = spec.latency
    return Calibration(
        substrate=substrate, base_ttft_ms=base_s * 1000.0, prefill_tokens_per_s=prefill_rate,
        decode_tokens_per_s=decode_rate, decode_slowdown_at_full_batch=slowdown,
        max_concurrent_requests=max_concurrency,
        prefill=tuple(PrefillPoint(n, t, base_s + n / prefill_rate) for n, t in raw["prefill_medians"]),
        decode=tuple(DecodePoint(k, r, rate_model(k), agg) for k, r, agg in raw["decode"]),
        ttft_alone_s=raw["alone"], ttft_joining_full_batch_s=raw["joining"],
        prefill_pair_ratio=raw["pair_ratio"], prefill_concurrency=prefill_lanes(raw["pair_ratio"]),
        decode_share_during_prefill=decode_share_from(raw["lost"], raw["long_prefill"]),
        decode_lost_s=raw["lost"], long_prefill_s=raw["long_prefill"],
        wall_s=time.perf_counter() - t0,
        declared={"base_ttft_ms": lat.base_ttft_ms, "prefill_tokens_per_s": lat.prefill_tokens_per_s,
                  "decode_tokens_per_s": lat.decode_tokens_per_s,
                  "decode_slowdown_at_full_batch": lat.decode_slowdown_at_full_batch,
                  "prefill_concurrency": lat.prefill_concurrency,
                  "decode_share_during_prefill": lat.decode_share_during_prefill},
    )
