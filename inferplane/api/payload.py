"""What the ingress sends a substrate deployment: a parsed OpenAI body as a plain dict.

Only data crosses Serve, so the substrate deployment rebuilds a ``GenerationRequest`` from this
dict (``deployments.substrate.request_from_payload``). ``model`` is filled in per attempt: each
substrate knows the model by its own (upstream) name.
"""

from __future__ import annotations

from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest
from inferplane.api.tokens import chat_text


def substrate_payload(api: str, body: ChatCompletionRequest | CompletionRequest, max_tokens: int,
                      request_id: str) -> dict:
    payload = {"request_id": request_id, "api": api, "max_tokens": max_tokens,
               "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
               "stop": body.stop}
    if api == "chat":
        payload["messages"] = [{"role": m.role, "content": chat_text(m)} for m in body.messages]
    else:
        payload["prompt"] = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return payload
