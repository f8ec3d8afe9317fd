"""Request bodies of the OpenAI API endpoints the ingress serves, as pydantic models.

Checked against the OpenAI OpenAPI subset in ``../shared/data/openapi``. Fields that change
placement or generation are typed and bounded; other documented fields are accepted and passed on
or ignored (``extra="allow"``), as OpenAI-compatible servers do, so that new SDK versions keep
working.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS_LIMIT = 1_000_000


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
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = Field(default=None, description="Only 1 is supported.")
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)] | None = None
    echo: bool | None = None
    suffix: str | None = None
