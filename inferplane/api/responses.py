"""OpenAI response bodies and stream chunks, built as plain dicts (then JSON-encoded once).

They are built from the substrate's events (``deployments.substrate``): ``delta`` events carry the
generated text, and where asked for its tokens' log probabilities (``logprobs``, with the
``text_offset`` of the delta) and the model's tool calls (``tool_calls``); the ``done`` event
carries the finish reason and the engine's token counts (with ``cached_prompt_tokens``, where the
substrate counted them: ``usage.prompt_tokens_details.cached_tokens``). Shapes, as OpenAI's:

    chat         choices[0].message {role, content, refusal, tool_calls?}; finish_reason
                 ``tool_calls`` when the model called; logprobs {content: [{token, logprob, bytes,
                 top_logprobs: [{token, logprob, bytes}]}], refusal}
    chat chunk   choices[0].delta {content | tool_calls: [{index, id, type, function{name,
                 arguments}}]}; logprobs of the delta's tokens, as above
    completion   choices[0].text; logprobs {tokens, token_logprobs, top_logprobs: [{token:
                 logprob}], text_offset} (a token's alternatives include itself, as vLLM's do)
"""

from __future__ import annotations

from typing import Literal

Api = Literal["chat", "completion"]


def _usage(prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int | None = None) -> dict:
    usage: dict = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                   "total_tokens": prompt_tokens + completion_tokens}
    if cached_prompt_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_prompt_tokens}
    return usage


def _chat_logprobs(entries: list[dict]) -> dict:
    return {"content": entries, "refusal": None}


def _completion_logprobs(deltas: list[dict]) -> dict:
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for d in deltas:
        offset = d.get("text_offset", 0)
        for e in d.get("logprobs") or ():
            tokens.append(e["token"])
            token_logprobs.append(e["logprob"])
            alternatives = {t["token"]: t["logprob"] for t in e["top_logprobs"]}
            if e["logprob"] is not None:
                alternatives.setdefault(e["token"], e["logprob"])
            top.append(alternatives or None)
            offsets.append(offset)
            offset += len(e["token"])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def completion_body(api: Api, rid: str, created: int, model: str, deltas: list[dict], done: dict) -> dict:
    """A non-streamed answer: every ``delta`` event of the generation, then its ``done`` event."""
    text = "".join(d["text"] for d in deltas)
    finish_reason = done["finish_reason"]
    with_logprobs = any("logprobs" in d for d in deltas)
    if api == "chat":
        message: dict = {"role": "assistant", "content": text, "refusal": None}
        calls = [c for d in deltas for c in d.get("tool_calls", ())]
        if calls:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
            message["content"] = text or None
        logprobs = _chat_logprobs([e for d in deltas for e in d.get("logprobs") or ()]) if with_logprobs else None
        choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": logprobs}
        obj = "chat.completion"
    else:
        logprobs = _completion_logprobs(deltas) if with_logprobs else None
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": _usage(done["prompt_tokens"], done["completion_tokens"], done.get("cached_prompt_tokens"))}


def role_chunk(api: Api, rid: str, created: int, model: str) -> dict:
    """A chat stream's first chunk: the assistant's role, no content yet."""
    return chunk(api, rid, created, model, "", first=True)


def delta_chunk(api: Api, rid: str, created: int, model: str, delta: dict) -> dict:
    """The chunk carrying one ``delta`` event: its text, tool calls and log probabilities."""
    out = chunk(api, rid, created, model, delta["text"])
    choice = out["choices"][0]
    if "logprobs" in delta:
        choice["logprobs"] = (_chat_logprobs(delta["logprobs"]) if api == "chat"
                              else _completion_logprobs([delta]))
    if api == "chat" and delta.get("tool_calls"):
        choice["delta"]["tool_calls"] = delta["tool_calls"]
        if not delta["text"]:
            del choice["delta"]["content"]
    return out


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


def usage_chunk(api: Api, rid: str, created: int, model: str, prompt_tokens: int, completion_tokens: int,
                cached_prompt_tokens: int | None = None) -> dict:
    obj = "chat.completion.chunk" if api == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": _usage(prompt_tokens, completion_tokens, cached_prompt_tokens)}
