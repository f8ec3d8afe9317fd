"""OpenAI response bodies and stream chunks, built as plain dicts (then JSON-encoded once).

They are built from the substrate's events (``deployments.substrate``): ``delta`` events carry the
generated text, the ``done`` event the finish reason and the engine's token counts.
"""

from __future__ import annotations

from typing import Literal

Api = Literal["chat", "completion"]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(api: Api, rid: str, created: int, model: str, deltas: list[dict], done: dict) -> dict:
    """A non-streamed answer: every ``delta`` event of the generation, then its ``done`` event."""
    text = "".join(d["text"] for d in deltas)
    finish_reason = done["finish_reason"]
    if api == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish_reason, "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": _usage(done["prompt_tokens"], done["completion_tokens"])}


def role_chunk(api: Api, rid: str, created: int, model: str) -> dict:
    """A chat stream's first chunk: the assistant's role, no content yet."""
    return chunk(api, rid, created, model, "", first=True)


def delta_chunk(api: Api, rid: str, created: int, model: str, delta: dict) -> dict:
    """The chunk carrying one ``delta`` event."""
    return chunk(api, rid, created, model, delta["text"])


def finish_chunk(api: Api, rid: str, created: int, model: str, done: dict) -> dict:
    """The chunk carrying the ``done`` event's finish reason."""
    return chunk(api, rid, created, model, None if api == "chat" else "", finish_reason=done["finish_reason"])


def chunk(api: Api, rid: str, created: int, model: str, text: str | None,
          finish_reason: str | None = None, first: bool = False) -> dict:
    if api == "chat":
        delta: dict = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


def usage_chunk(api: Api, rid: str, created: int, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    obj = "chat.completion.chunk" if api == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": _usage(prompt_tokens, completion_tokens)}
