"""Request bodies of the OpenAI API endpoints the ingress serves, as pydantic models.

Checked against the OpenAI OpenAPI subset in ``../shared/data/openapi``. Every field that changes
placement or generation is typed and bounded here, and is either applied or refused: never
silently dropped. A parameter that only some substrates honour is named in ``required_features``,
which placement turns into a constraint (the ``unsupported_parameter`` filter): a request no
eligible substrate can honour is refused 400 naming the parameter, before dispatch. Unknown fields
are still accepted (``extra="allow"``), as OpenAI-compatible servers do, so that new SDK versions
keep working; they reach no substrate (``payload.substrate_payload`` copies typed fields only).
Documented fields that change nothing the plane serves (``user``, ``metadata``, ``store``,
``service_tier``) are among them.

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
    best_of             1                                  only one candidate is generated
    logprobs            chat: a boolean; completions:      OpenAI
                        an integer in [0, 5]
    top_logprobs        [0, 20], only with logprobs        OpenAI; vLLM's default max_logprobs
    logit_bias          token-id string -> [-100, 100],    OpenAI (vLLM clamps to the same range)
                        at most 300 entries
    prompt              a string, a list of one string,    one prompt per request: a batch of
                        token ids, or a list of one list   several is refused, naming `prompt`
                        of token ids
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_TOKENS_LIMIT = 1_000_000
TEMPERATURE_MAX = 2.0
PENALTY_LIMIT = 2.0
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
"""Chat ``top_logprobs``: OpenAI's bound, and vLLM's default ``max_logprobs``."""
MAX_COMPLETION_LOGPROBS = 5
"""Completions ``logprobs``: OpenAI's bound."""
LOGIT_BIAS_LIMIT = 100.0
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_TOOLS = 128
TOKEN_ID_MAX = 2**31 - 1


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


def _checked_logit_bias(bias: dict[str, float]) -> dict[str, float]:
    if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise PydanticCustomError("too_many_logit_bias_entries", "at most {limit} tokens may be biased, got {count}",
                                  {"limit": MAX_LOGIT_BIAS_ENTRIES, "count": len(bias)})
    for key in bias:
        if not (key.isascii() and key.isdigit() and int(key) <= TOKEN_ID_MAX):
            raise PydanticCustomError("logit_bias_key", "keys must be token ids (non-negative integers as "
                                      "strings), got \"{key}\"", {"key": key[:20]})
    return bias


def _no_batch(value: object) -> object:
    """A list of several prompts is a batch; one choice is served per request, so it is refused
    with its own error (not pydantic's union of mismatches)."""
    if isinstance(value, list) and len(value) > 1 and all(isinstance(v, (str, list)) for v in value):
        raise PydanticCustomError(
            "prompt_batch", "one prompt per request is served; got a batch of {count} (send one request "
            "per prompt)", {"count": len(value)})
    return value


def _unwrapped(value: object) -> object:
    """A list of one prompt is that prompt: a string or a list of token ids."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        return value[0]
    return value


def _single_choice(value: int) -> int:
    if value != 1:
        raise PydanticCustomError("best_of_unsupported", "only best_of=1 is served (one candidate is "
                                  "generated per request), got {value}", {"value": value})
    return value


StopSequences = Annotated[list[str], BeforeValidator(_stop_as_list), AfterValidator(_checked_stops)]
Temperature = Annotated[float, Field(ge=0, le=TEMPERATURE_MAX, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-PENALTY_LIMIT, le=PENALTY_LIMIT, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
TokenId = Annotated[int, Field(ge=0, le=TOKEN_ID_MAX)]
LogitBias = Annotated[
    dict[str, Annotated[float, Field(ge=-LOGIT_BIAS_LIMIT, le=LOGIT_BIAS_LIMIT, allow_inf_nan=False)]],
    AfterValidator(_checked_logit_bias)]
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
JsonObject = dict[str, JsonValue]
"""A JSON Schema, or a function's parameters: an arbitrary JSON object, passed on as is."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ContentPart(_Body):
    type: str = Field(description="`text`, `image_url`, ...")
    text: str | None = Field(default=None, description="The text of a `text` part.")


class FunctionCall(_Body):
    name: FunctionName = Field(description="The function the model called.")
    arguments: str = Field(description="Its arguments, a JSON text.")


class ToolCall(_Body):
    id: Annotated[str, Field(max_length=256)] = Field(description="The call's id.")
    type: Literal["function"] = "function"
    function: FunctionCall = Field(description="The call.")


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant turn's tool calls.")
    tool_call_id: str | None = Field(default=None, description="A tool turn: the call it answers.")


class StreamOptions(_Body):
    include_usage: bool | None = None


class TextFormat(_Body):
    type: Literal["text"]


class JsonObjectFormat(_Body):
    type: Literal["json_object"]


class JsonSchemaSpec(_Body):
    name: FunctionName = Field(description="The schema's name.")
    description: str | None = None
    schema_: JsonObject | None = Field(default=None, alias="schema", description="The JSON Schema.")
    strict: bool | None = None


class JsonSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec = Field(description="The schema the answer must match.")


def _format_type(value: object) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"={kind}" if isinstance(kind, str) else None


# Tags that cannot be mistaken for field names in an error's location (``errors._field_path``).
ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("=text")] | Annotated[JsonObjectFormat, Tag("=json_object")]
    | Annotated[JsonSchemaFormat, Tag("=json_schema")],
    Discriminator(_format_type, custom_error_type="response_format_type",
                  custom_error_message="type must be one of text, json_object, json_schema")]


class FunctionDefinition(_Body):
    name: FunctionName = Field(description="The function's name.")
    description: str | None = None
    parameters: JsonObject | None = Field(default=None, description="Its arguments' JSON Schema.")
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: FunctionName


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


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
    logit_bias: LogitBias | None = Field(default=None, description="Token id (a string) -> bias in [-100, 100].")
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: MaxTokens | None = Field(default=None, description="Output token limit (deprecated name).")
    max_completion_tokens: MaxTokens | None = Field(default=None, description="Output token limit.")
    logprobs: bool | None = Field(default=None, description="Return the log probability of each output token.")
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = Field(
        default=None, description=f"Alternatives per token, [0, {MAX_TOP_LOGPROBS}]; needs `logprobs`.")
    response_format: ResponseFormat | None = Field(default=None, description="text, json_object or json_schema.")
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = Field(
        default=None, description="Functions the model may call.")
    tool_choice: ToolChoice | None = Field(default=None, description="none, auto, required or a named function.")
    parallel_tool_calls: bool | None = Field(default=None, description="Allow several calls in one turn.")

    @model_validator(mode="after")
    def _coherent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise _field_error("top_logprobs", "top_logprobs requires logprobs to be true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise _field_error("tool_choice", "tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools:
            name = self.tool_choice.function.name
            if all(t.function.name != name for t in self.tools):
                raise _field_error("tool_choice", f"tool_choice names `{name}`, which is not among the tools")
        return self


class CompletionRequest(_Sampling):
    prompt: Annotated[
        str | list[TokenId] | Annotated[list[str], Field(max_length=1)]
        | Annotated[list[list[TokenId]], Field(max_length=1)],
        BeforeValidator(_no_batch), AfterValidator(_unwrapped)] = Field(
        description="A string, a list of token ids, or a list of one of either.")
    max_tokens: MaxTokens | None = Field(default=None, description="Output token limit.")
    echo: bool | None = Field(default=None, description="Return the prompt before the completion.")
    suffix: str | None = Field(default=None, description="Text after the completion (insertion).")
    best_of: Annotated[int, AfterValidator(_single_choice)] | None = Field(
        default=None, description="Only 1 is served.")
    logprobs: Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = Field(
        default=None, description=f"Alternatives per token, [0, {MAX_COMPLETION_LOGPROBS}]; 0: the sampled "
        "token's only.")

    @model_validator(mode="after")
    def _one_token_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise _field_error("prompt", "prompt cannot be an empty list")
        return self

    @property
    def prompt_text(self) -> str | None:
        """The prompt when it is text; None when it is token ids."""
        return self.prompt if isinstance(self.prompt, str) else None

    @property
    def prompt_token_ids(self) -> tuple[int, ...] | None:
        """The prompt when it is token ids; None when it is text."""
        return None if isinstance(self.prompt, str) else tuple(self.prompt)


def _field_error(field: str, message: str) -> PydanticCustomError:
    # The field's name travels in the error's context: a model validator's errors have no location.
    return PydanticCustomError("invalid_parameter", "{message}", {"field": field, "message": message})


# -- what a request asks of its substrate --------------------------------------------------------

PARAMETERS = ("logprobs", "top_logprobs", "response_format", "logit_bias", "tools", "echo", "suffix",
              "seed", "stop", "presence_penalty", "frequency_penalty")
"""The parameters that substrates honour or not (``config.schema.HonourableParameter`` lists the
same names): a request setting one may be placed only where it is honoured."""


def required_features(api: str, body: ChatCompletionRequest | CompletionRequest) -> frozenset[str]:
    """The parameters of ``body`` its substrate must honour (names from ``PARAMETERS``): those set
    to a value that changes the answer. Empty for most requests, so placement's check is one test."""
    out = []
    if body.seed is not None:
        out.append("seed")
    if body.stop:
        out.append("stop")
    if body.presence_penalty:
        out.append("presence_penalty")
    if body.frequency_penalty:
        out.append("frequency_penalty")
    if body.logit_bias:
        out.append("logit_bias")
    if api == "chat":
        if body.logprobs:
            out.append("logprobs")
            if body.top_logprobs:
                out.append("top_logprobs")
        if body.response_format is not None and body.response_format.type != "text":
            out.append("response_format")
        if body.tools:
            out.append("tools")
    else:
        if body.logprobs is not None:
            out.append("logprobs")
            if body.logprobs:
                out.append("top_logprobs")
        if body.echo:
            out.append("echo")
        if body.suffix:
            out.append("suffix")
    return frozenset(out)
