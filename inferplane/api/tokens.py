"""Input-token estimates for placement, before any tokenizer runs.

Placement needs the input size before the request reaches a substrate, and substrates tokenize
differently, so the ingress estimates: ``ceil(chars / 4)`` per text plus 4 tokens of framing per
chat message. English text averages about 4 characters per token for current BPE tokenizers; the
substrate's own count is what usage and cost report afterwards.
"""

from __future__ import annotations

from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def _text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def chat_text(message) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content)


def estimate_chat_tokens(body: ChatCompletionRequest) -> int:
    return sum(TOKENS_PER_MESSAGE + _text_tokens(chat_text(m)) for m in body.messages) + 2


def estimate_completion_tokens(body: CompletionRequest) -> int:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    return _text_tokens(prompt) + 1
