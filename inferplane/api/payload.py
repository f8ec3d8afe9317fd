"""What the ingress sends a substrate deployment: a parsed OpenAI body as a plain dict.

Only data crosses Serve, so the substrate deployment rebuilds a ``GenerationRequest`` from this
dict (``deployments.substrate.request_from_payload``). ``model`` is filled in per attempt: each
substrate knows the model by its own (upstream) name.

Every parameter that changes generation is carried (placement has already checked that the chosen
substrate honours it, ``openai_schema.required_features``); keys left unset are omitted:

    max_tokens, temperature, top_p, seed, stop    always (None when unset)
    presence_penalty, frequency_penalty           when set
    logit_bias                                    {token id (str): bias}
    logprobs                                      alternatives per token (chat: top_logprobs or 0
                                                  when logprobs is true; completions: logprobs)
    response_format                               the OpenAI object, json_object or json_schema
    tools, tool_choice, parallel_tool_calls       chat, the OpenAI objects
    prompt | prompt_token_ids, echo, suffix       completions
"""

from __future__ import annotations

from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest
from inferplane.api.tokens import chat_text


def substrate_payload(api: str, body: ChatCompletionRequest | CompletionRequest, max_tokens: int,
                      request_id: str, counted_prompt_tokens: int | None = None) -> dict:
    """``counted_prompt_tokens``: the plane's count of the prompt (``api.tokens``), which a
    substrate that cannot count (an emulation, a provider that reports no usage) reports as its own."""
    payload = {"request_id": request_id, "api": api, "max_tokens": max_tokens,
               "counted_prompt_tokens": counted_prompt_tokens,
               "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
               "stop": body.stop}
    if body.presence_penalty is not None:
        payload["presence_penalty"] = body.presence_penalty
    if body.frequency_penalty is not None:
        payload["frequency_penalty"] = body.frequency_penalty
    if body.logit_bias:
        payload["logit_bias"] = dict(body.logit_bias)
    if api == "chat":
        payload["messages"] = [_message(m) for m in body.messages]
        if body.logprobs:
            payload["logprobs"] = body.top_logprobs or 0
        if body.response_format is not None and body.response_format.type != "text":
            payload["response_format"] = body.response_format.model_dump(by_alias=True, exclude_none=True,
                                                                         exclude_unset=True)
        if body.tools:
            payload["tools"] = [t.model_dump(exclude_none=True, exclude_unset=True) for t in body.tools]
            if body.tool_choice is not None:
                tc = body.tool_choice
                payload["tool_choice"] = tc if isinstance(tc, str) else tc.function.name
            if body.parallel_tool_calls is not None:
                payload["parallel_tool_calls"] = body.parallel_tool_calls
    else:
        if isinstance(body.prompt, str):
            payload["prompt"] = body.prompt
        else:
            payload["prompt_token_ids"] = list(body.prompt)
        if body.logprobs is not None:
            payload["logprobs"] = body.logprobs
        if body.echo:
            payload["echo"] = True
        if body.suffix:
            payload["suffix"] = body.suffix
    return payload


def _message(m) -> dict:
    out = {"role": m.role, "content": chat_text(m)}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                             for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out
