"""Hypothesis strategies for placement: random fleets, tenants, signals and requests.

Every fleet goes through the real validation (``FleetBuilder.build``), so a property only ever sees
configs the loader would accept. Signals mix fresh, exactly-at-the-bound, stale and missing
readings; requests mix token sizes, exclusions and ingress zones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache

from hypothesis import strategies as st

from inferplane.config.build import BuiltConfig
from inferplane.placement.request import PlacementRequest
from inferplane.placement.signals import Capacity, CircuitState, Reading, SubstrateSignals
from inferplane.placement.snapshot import FleetSnapshot
from tests.builders import EU, MODEL, NOW, fleet, substrate

CLASSES = ("gpu_cluster", "inference_silicon", "giant_context", "provider_api", "sovereign_onprem")
KINDS = ("vllm", "openai_compatible", "emulated")
GROUPS = {"EU": EU, "DACH": ["AT", "CH", "DE"], "NORTH-AMERICA": ["CA", "US"]}
SUBSTRATE_JURISDICTIONS = ("DE", "FR", "IE", "CH", "US", "JP", "EU", "DACH", "NORTH-AMERICA")
TENANT_JURISDICTIONS = ("*", "EU", "DACH", "NORTH-AMERICA", "DE", "FR", "US", "JP", "CH")
ZONES = {
    "eu-central": ("eu-central-1a", "eu-central-1b"),
    "eu-west": ("eu-west-1a",),
    "us-east": ("us-east-1a", "us-east-1b"),
    "ap-northeast": ("ap-northeast-1a",),
}
SCORERS = ("predicted_latency", "queue_pressure", "memory_pressure", "cost", "locality", "reserved_tier",
           "prefix_locality")
OTHER_MODEL = "other-model"
ALIAS = "m-alias"
BOUNDS_MS = (500.0, 2000.0, 5000.0)


_ZONE_PAIRS = [(region, zone) for region, zs in ZONES.items() for zone in zs]
_zones = st.sampled_from(_ZONE_PAIRS)
_classes = st.sampled_from(CLASSES)
_kinds = st.sampled_from(KINDS)
_substrate_jurisdictions = st.sampled_from(SUBSTRATE_JURISDICTIONS)
_windows = st.sampled_from((2048, 4096, 8192, 32768, 131072))
CONCURRENCY = (1, 2, 4, 16, 64, 256)
# Numbers that only shape scores (zone, tier, latency profile, prices, limits) come from one seeded
# Random per substrate: a single Hypothesis draw instead of a dozen keeps 200 examples of a
# 12-substrate fleet fast, and the run stays reproducible (the seed is drawn, so Hypothesis
# replays it).
_rngs = st.randoms(use_true_random=True)


def zones() -> st.SearchStrategy[tuple[str, str]]:
    return _zones


@cache
def substrate_docs(name: str) -> st.SearchStrategy[dict]:
    """One substrate's config dict; it always serves ``m`` and sometimes ``other-model``."""
    return _substrate_doc(name)


@st.composite
def _substrate_doc(draw, name: str) -> dict:
    # What the filters look at is drawn by Hypothesis (and shrinks); the rest, which only shapes
    # scores, comes from the seeded Random.
    b = (substrate(name)
         .cls(draw(_classes))
         .kind(draw(_kinds))
         .jurisdiction(draw(_substrate_jurisdictions))
         .serves(MODEL, window=draw(_windows)))
    rng = draw(_rngs)
    b.zone(*rng.choice(_ZONE_PAIRS)).tier(rng.choice(("reserved", "burst")))
    if rng.random() < 0.3:
        b.serves(OTHER_MODEL, window=rng.choice((4096, 16384)))
    b.capacity(rng.choice(CONCURRENCY), queued=rng.choice((0, 0, 4, 32)),
               rpm=rng.choice((None, None, 600, 10_000)), tpm=rng.choice((None, None, 100_000, 10**6)))
    b.latency(base_ttft_ms=rng.uniform(0, 800), rtt_ms=rng.choice((0.0, rng.uniform(1, 200))),
              prefill=rng.uniform(100, 100_000), decode=rng.uniform(5, 1000),
              slowdown=rng.choice((1.0, rng.uniform(1.0, 4.0))),
              prefill_lanes=rng.choice((None, None, 1, 2, 4)))  # some wait for a prefill lane
    if rng.random() < 0.7:
        b.cost(input_per_1m=rng.choice((0.0, rng.uniform(0, 5))), output_per_1m=rng.uniform(0, 15),
               gpu_hour=rng.choice((0.0, rng.uniform(0, 10))), gpus=rng.randint(0, 8),
               egress_per_gb=rng.choice((0.0, 0.02, 0.09)))
    b.replicas(rng.randint(1, 4))
    return b.obj()


_tenant_tokens = st.one_of(
    st.just(["*"]),
    st.lists(st.sampled_from(TENANT_JURISDICTIONS), min_size=1, max_size=3, unique=True),
)


def tenant_tokens() -> st.SearchStrategy[list[str]]:
    """A tenant's allowed jurisdictions: `*`, groups, single countries, or a mix."""
    return _tenant_tokens


def _some_weight(w: dict[str, float]) -> dict[str, float]:
    return w if any(w.values()) else {**w, "queue_pressure": 0.05}


_weights = st.fixed_dictionaries(
    {n: st.integers(0, 20).map(lambda k: k * 0.05) for n in SCORERS}
).map(_some_weight)


def weights() -> st.SearchStrategy[dict[str, float]]:
    """Scorer weights in steps of 0.05, some zero, at least one positive."""
    return _weights


# Strategies are built once and reused: building one per draw costs more than the draw.
_one_in_four = st.integers(0, 3)
_ttft_deadlines_ms = st.sampled_from((300.0, 1500.0, 10_000.0))
_e2e_factors = st.sampled_from((2, 10, 50))
_tenant_counts = st.integers(1, 3)
_sla_names = st.sampled_from(("interactive", "batch"))
_modes = st.sampled_from(("on_need", "scored"))
_class_sets = st.lists(_classes, unique=True, min_size=1)
_bounds_ms = st.sampled_from(BOUNDS_MS)
_models = st.sampled_from((MODEL, ALIAS))


@cache
def _names(n: int) -> tuple[str, ...]:
    return tuple(f"s{i:02d}" for i in range(n))


@cache
def _one_of_names(names: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(names)


@cache
def _some_of_names(names: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(names), unique=True)


@cache
def _sizes(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


@st.composite
def fleets(draw, min_substrates: int = 1, max_substrates: int = 12) -> BuiltConfig:
    """A random valid fleet serving ``m`` (alias ``m-alias``) on every substrate, 1-3 tenants."""
    names = _names(draw(_sizes(min_substrates, max_substrates)))
    docs = [draw(substrate_docs(name)) for name in names]
    for i in range(1, len(docs)):
        if draw(_one_in_four) == 0:  # a twin of the previous substrate: ties must break by request id
            docs[i] = {**docs[i - 1], "name": names[i]}
    b = fleet(*docs)
    for group, countries in GROUPS.items():
        b.group(group, countries)
    primary = draw(_one_of_names(names))
    spill = None if draw(_one_in_four) else draw(_some_of_names(names))
    b.model(MODEL, primary=primary, aliases=[ALIAS], spillover=spill)
    others = tuple(d["name"] for d in docs if any(m["name"] == OTHER_MODEL for m in d["models"]))
    if others:
        b.model(OTHER_MODEL, primary=draw(_one_of_names(others)))
    ttft_ms = draw(_ttft_deadlines_ms)
    b.sla("interactive", ttft_ms=ttft_ms, e2e_ms=ttft_ms * draw(_e2e_factors))
    b.sla("batch", ttft_ms=120_000.0, e2e_ms=1_800_000.0)
    for i in range(draw(_tenant_counts)):
        b.tenant(f"tenant-{i}", allowed=draw(_tenant_tokens), sla=draw(_sla_names),
                 allowed_sla=["interactive", "batch"])
    b.weights(**draw(_weights))
    b.spillover(mode=draw(_modes), classes=draw(_class_sets))
    b.staleness_ms(draw(_bounds_ms))
    return b.build()


def reading_from(rng, value: float, bound_s: float, now: float = NOW) -> Reading | None:
    """A reading of ``value``: usually fresh (any age up to the bound), sometimes exactly at the
    bound (still fresh: the rule is "older than"), stale beyond it, or missing (None)."""
    roll = rng.random()
    if roll < 0.04:
        return None
    if roll < 0.07:
        age = bound_s
    elif roll < 0.12:
        age = bound_s * rng.uniform(1.001, 5.0)
    else:
        age = rng.choice((0.0, bound_s * rng.random()))
    return Reading(value, now - age)


def random_signals(rng, max_concurrent: int, bound_s: float, now: float = NOW) -> SubstrateSignals:
    """Live signals of a substrate admitting ``max_concurrent`` at once: load mostly below
    capacity and sometimes far beyond, ratios in [0, 1], rate-limit headroom now and then at 0,
    observed latencies, any circuit state; each reading fresh, at the bound, stale or missing."""

    def r(value: float) -> Reading | None:
        return reading_from(rng, value, bound_s, now)

    def maybe(p: float, value) -> Reading | None:
        """Optional signals: reported by only some substrates."""
        return r(value()) if rng.random() < p else None

    def load() -> float:
        roll = rng.random()
        if roll < 0.3:
            return 0.0
        if roll < 0.85:
            return float(rng.randint(0, max_concurrent))
        return float(rng.randint(0, 3 * max_concurrent + 2))

    signals = SubstrateSignals(
        in_flight=r(load()),
        queued=maybe(0.7, load),
        gpu_memory_used_ratio=maybe(0.5, rng.random),
        kv_cache_usage=r(rng.choice((0.0, rng.random(), 1.0))),
        rate_limit_requests_remaining=maybe(0.4, lambda: float(rng.choice((0, 1, *range(2, 1000, 37))))),
        rate_limit_tokens_remaining=maybe(0.4, lambda: float(rng.randint(0, 200_000))),
        recent_ttft_s=maybe(0.5, lambda: rng.uniform(0.0, 5.0)),
        recent_tpot_s=maybe(0.5, lambda: rng.uniform(0.0, 0.2)),
        error_rate=maybe(0.3, rng.random),
        circuit=rng.choice([CircuitState.CLOSED] * 8 + [CircuitState.HALF_OPEN, CircuitState.OPEN]),
    )
    # A live capacity (the replicas of a scaling substrate) now and then, drawn last so that the
    # draws above stay what they were: none live (0), fewer or more than the spec declares.
    if rng.random() < 0.3:
        signals = dataclasses.replace(signals, capacity=Capacity(
            rng.choice((0, rng.randint(1, max_concurrent), rng.randint(max_concurrent, 3 * max_concurrent))),
            rng.randint(0, 4)))
    # A learned observed / declared first-token ratio now and then (slower or faster than declared),
    # dated as the recent_ttft reading it comes with (``fleet_state``); drawn last, as above.
    if signals.recent_ttft_s is not None and rng.random() < 0.5:
        signals = dataclasses.replace(signals, ttft_ratio=Reading(
            rng.choice((rng.uniform(0.5, 1.0), 1.0, rng.uniform(1.0, 3.0))), signals.recent_ttft_s.observed_at_s))
    # An ingress replica's prefill-lane clock now and then: cleared already, or clearing within
    # seconds (read only where the substrate declares lanes); drawn last, as above.
    if rng.random() < 0.4:
        signals = dataclasses.replace(signals, prefill_clear_at_s=now + rng.choice(
            (-rng.uniform(0.0, 5.0), 0.0, rng.uniform(0.0, 0.5), rng.uniform(0.5, 10.0))))
    return signals


@cache
def substrate_signals(
    max_concurrent: int, bound_s: float, now: float = NOW
) -> st.SearchStrategy[SubstrateSignals]:
    """Random live signals of one substrate (see ``random_signals``)."""
    return _rngs.map(lambda rng: random_signals(rng, max_concurrent, bound_s, now))


_versions = st.integers(0, 10**6)
# Learned output lengths: often far below the requests' max output tokens (1 to 4,000), sometimes
# above it (the cap applies), fractional (a mean) or whole.
_output_lengths = st.one_of(st.floats(0.0, 64.0), st.floats(0.0, 6_000.0), st.integers(0, 4_000).map(float))


def expected_output_tokens(built: BuiltConfig) -> st.SearchStrategy[dict[tuple[str, str], float]]:
    """What the authority learned per (tenant, canonical model): some pairs, maybe none."""
    return _learned(tuple((t, m) for t in sorted(built.policy.tenants) for m in built.fleet.models))


@cache
def _learned(pairs: tuple[tuple[str, str], ...]) -> st.SearchStrategy[dict[tuple[str, str], float]]:
    return st.dictionaries(st.sampled_from(pairs), _output_lengths, max_size=len(pairs))


@st.composite
def snapshots(draw, built: BuiltConfig, now: float = NOW, learned: bool = False) -> FleetSnapshot:
    """Random signals for every substrate; with ``learned``, also learned output lengths."""
    bound = built.policy.signal_staleness_bound_s
    sigs: list[SubstrateSignals] = []
    for i, spec in enumerate(built.fleet.substrates):
        if i and _twins(spec, built.fleet.substrates[i - 1]) and draw(st.booleans()):
            sigs.append(sigs[-1])  # a twin reporting the same: a real tie on every score
        else:
            sigs.append(draw(substrate_signals(spec.max_concurrent, bound, now)))
    version = draw(_versions)
    return FleetSnapshot(version=version, taken_at_s=now, fleet=built.fleet, signals=tuple(sigs),
                         expected_output_tokens=draw(expected_output_tokens(built)) if learned else {})


def _twins(a, b) -> bool:
    """Same spec but for name and position."""
    return dataclasses.replace(a, index=0, name="") == dataclasses.replace(b, index=0, name="")


_request_ids = st.text("abcdef0123456789-", min_size=1, max_size=12)
# Mostly prompts that fit every window; one draw in four may be up to 150k tokens.
_input_tokens = st.one_of(
    st.integers(0, 4_000), st.integers(0, 4_000), st.integers(0, 4_000), st.integers(0, 150_000)
)
_output_tokens = st.integers(1, 4_000)
_hit_fractions = st.one_of(st.just(1.0), st.integers(1, 63).map(lambda k: k / 64), st.floats(1e-6, 1.0))
_ingress = st.one_of(st.just((None, None)), _zones)


@st.composite
def requests(draw, built: BuiltConfig, now: float = NOW) -> PlacementRequest:
    """A request for ``m`` (or its alias) by one of the fleet's tenants, in a class it may use."""
    tenant = draw(_one_of_names(tuple(sorted(built.policy.tenants))))
    names = tuple(s.name for s in built.fleet.substrates)
    retry = draw(_one_in_four) == 0  # one request in four is a retry that excludes some
    exclude = draw(_some_of_names(names)) if retry else []
    region, zone = draw(_ingress)
    # Half the requests predict a prefix-cache hit on some substrates (never on the others).
    hits = () if draw(_one_in_four) < 2 else tuple(
        (name, draw(_hit_fractions)) for name in draw(_some_of_names(names)))
    return PlacementRequest(
        request_id=draw(_request_ids),
        tenant=tenant,
        model=draw(_models),
        sla_class=draw(_one_of_names(tuple(sorted(built.policy.tenants[tenant].allowed_sla_classes)))),
        input_tokens=draw(_input_tokens),
        max_output_tokens=draw(_output_tokens),
        arrived_at_s=now,
        ingress_region=region,
        ingress_zone=zone,
        exclude=frozenset(exclude),
        attempt=len(exclude) + 1,
        prefix_hits=hits,
    )


@dataclass(frozen=True)
class Scenario:
    built: BuiltConfig
    snapshot: FleetSnapshot
    request: PlacementRequest

    def __repr__(self) -> str:
        """Short enough to read in a failure report: the request, then one line per substrate."""
        tenants = {t.name: t.allowed_jurisdictions for t in self.built.policy.tenants.values()}
        lines = [f"Scenario({self.request!r}", f"  tenants={tenants} mode={self.built.policy.spillover_mode}"]
        for spec, sig in zip(self.built.fleet.substrates, self.snapshot.signals):
            lines.append(f"  {spec.name} {spec.kind} {spec.substrate_class} {spec.jurisdiction} "
                         f"{spec.zone} cap={spec.max_concurrent}+{spec.max_queued} {sig!r}")
        return "\n".join(lines) + ")"


@st.composite
def scenarios(draw, max_substrates: int = 12, learned: bool = False) -> Scenario:
    """A fleet, a snapshot of it and a request: one full input to ``place``. With ``learned``, the
    snapshot also carries learned output lengths (which a test that rebuilds it must carry over)."""
    built = draw(fleets(max_substrates=max_substrates))
    snapshot, request = draw(snapshots(built, learned=learned)), draw(requests(built))
    if learned and draw(_one_in_four):  # mostly, a length learned for this very request's tenant and model
        key = (request.tenant, built.fleet.resolve_model(request.model).name)
        snapshot = FleetSnapshot(snapshot.version, snapshot.taken_at_s, snapshot.fleet, snapshot.signals,
                                 expected_output_tokens={**snapshot.expected_output_tokens,
                                                         key: draw(_output_lengths)})
    return Scenario(built, snapshot, request)
