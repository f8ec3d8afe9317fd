"""Request bodies of the OpenAI API endpoints the ingress serves, as pydantic models.

Checked against the OpenAI OpenAPI subset in ``../shared/data/openapi``. Fields that change
placement or generation are typed and bounded; other documented fields are accepted and passed on
or ignored (``extra="allow"``), as OpenAI-compatible servers do, so that new SDK versions keep
working.

The sampling bounds are the tighter of the OpenAI API's and vLLM 0.32's (its OpenAI server's
request models and ``SamplingParams._verify_args``), so that a parameter an engine would refuse is
refused here, as a 400 naming the parameter, before it reaches any substrate:

    temperature         [0, 2], finite                     both
    top_p               (0, 1], finite                     OpenAI allows 0, vLLM does not
    presence_penalty,
    frequency_penalty   [-2, 2], finite                    both
    seed                a signed 64-bit integer            both (vLLM's engine transport cannot
                                                           carry a larger one)
    stop                at most 4 sequences, none empty    both (VLLM_MAX_STOP_STRINGS is 4)
    max_tokens,
    max_completion_tokens  >= 1                            vLLM (OpenAI allows 0 on completions)
    n                   1                                  only one choice is served
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

MAX_TOKENS_LIMIT = 1_000_000
TEMPERATURE_MAX = 2.0
PENALTY_LIMIT = 2.0
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1
MAX_STOP_SEQUENCES = 4


def _stop_as_list(value: object) -> object:
    """One stop string is a list of one."""
    return [value] if isinstance(value, str) else value


def _checked_stops(stops: list[str]) -> list[str]:
    """At most ``MAX_STOP_SEQUENCES``, none empty (an empty stop string would match everywhere;
    vLLM refuses it). The error is the field's own, so the client is told ``param: stop``."""
    if len(stops) > MAX_STOP_SEQUENCES:
        raise PydanticCustomError(
            "too_many_stop_sequences", "at most {limit} stop sequences are allowed, got {count}",
            {"limit": MAX_STOP_SEQUENCES, "count": len(stops)})
    if any(not s for s in stops):
        raise PydanticCustomError("empty_stop_sequence", "a stop sequence cannot be an empty string")
    return stops


StopSequences = Annotated[list[str], BeforeValidator(_stop_as_list), AfterValidator(_checked_stops)]
Temperature = Annotated[float, Field(ge=0, le=TEMPERATURE_MAX, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-PENALTY_LIMIT, le=PENALTY_LIMIT, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ContentPart(_Body):
    type: str = Field(description="`text`, `image_url`, ...")
    text: str | None = Field(default=None, description="The text of a `text` part.")


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Sampling(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = Field(default=None, description="Sampling temperature, [0, 2].")
    top_p: TopP | None = Field(default=None, description="Nucleus sampling mass, (0, 1].")
    n: Annotated[int, Field(ge=1, le=1)] | None = Field(default=None, description="Only 1 is supported.")
    stop: StopSequences | None = Field(
        default=None, description=f"Up to {MAX_STOP_SEQUENCES} non-empty stop sequences; one string is "
        "read as a list of one.")
    seed: Seed | None = Field(default=None, description="Sampling seed, a signed 64-bit integer.")
    presence_penalty: Penalty | None = Field(default=None, description="[-2, 2].")
    frequency_penalty: Penalty | None = Field(default=None, description="[-2, 2].")
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: MaxTokens | None = Field(default=None, description="Output token limit (deprecated name).")
    max_completion_tokens: MaxTokens | None = Field(default=None, description="Output token limit.")


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: MaxTokens | None = Field(default=None, description="Output token limit.")
    echo: bool | None = None
    suffix: str | None = None
