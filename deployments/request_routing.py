"""How Serve picks a replica inside one substrate deployment: a vLLM substrate's ``request_router``
as Serve deployment options, and the prompt text Ray's prefix-cache-affinity router reads.

``prefix_cache_affinity`` is Ray Serve's own ``PrefixCacheAffinityRouter`` (public and stable as
``ray.serve.llm.request_router.PrefixCacheAffinityRouter``): it keeps a prefix tree of the prompt
text it routed to each replica and sends a request to the replica that holds the longest prefix of
its text, while load is balanced. Serve imports the class by its path in the process that deploys
and in every process that holds a handle (the ingress replicas). The public name is a subclass that
adds nothing, but its package imports vLLM (measured: 8.6 s and ~500 MiB per process), so the
path below names the class it subclasses, whose module needs only Ray.
``tests/integration/test_prefix_affinity_live.py`` checks that the public class still adds nothing.

Ray's router reads the text from the first positional argument of the call that has a ``prompt``
or ``messages`` attribute (``_extract_text_from_request``). The ingress sends a substrate a plain
dict (only data crosses Serve), which has neither, so for a substrate routed by prefix it passes a
second argument, a ``RoutingPrompt``, that the replica ignores. No subclass of the router is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferplane.config.schema import PrefixCacheAffinityRequestRouter, Substrate, VllmSubstrate

PREFIX_CACHE_AFFINITY_ROUTER = (
    "ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router.PrefixCacheAffinityRouter")
PUBLIC_PREFIX_CACHE_AFFINITY_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"


@dataclass(frozen=True, slots=True)
class RoutingPrompt:
    """What Ray's prefix router reads from a request: ``prompt``, the prompt as text."""

    prompt: str


def routes_by_prefix(substrate: Substrate) -> bool:
    return isinstance(substrate, VllmSubstrate) and isinstance(
        substrate.vllm.request_router, PrefixCacheAffinityRequestRouter)


def routing_prompt(payload: dict) -> RoutingPrompt:
    """The payload's prompt as text, in the order the engine reads it, so that a conversation's
    next turn extends the previous turn's text: each chat message as ``role: content``, a
    completion's prompt, or a token-id prompt as its ids. It starts with the API's name, so it is
    never empty (Ray's router divides by its length)."""
    if payload["api"] == "chat":
        body = "".join(f"{m['role']}: {m['content']}\n" for m in payload.get("messages", ()))
    elif payload.get("prompt_token_ids") is not None:
        body = " ".join(str(t) for t in payload["prompt_token_ids"])
    else:
        body = payload.get("prompt") or ""
    return RoutingPrompt(f"{payload['api']}\n{body}")


def request_router_options(substrate: Substrate) -> dict:
    """The Serve deployment options of the substrate's ``request_router``: none for Serve's default."""
    if not routes_by_prefix(substrate):
        return {}
    from ray.serve.config import RequestRouterConfig

    router = substrate.vllm.request_router
    kwargs: dict = {"match_rate_threshold": router.match_rate_threshold}
    if router.imbalanced_threshold is not None:  # unset: Ray's default, never imbalanced
        kwargs["imbalanced_threshold"] = router.imbalanced_threshold
    if router.eviction is not None:
        kwargs.update(do_eviction=True, eviction_threshold_chars=router.eviction.threshold_chars,
                      eviction_target_chars=router.eviction.target_chars,
                      eviction_interval_secs=router.eviction.interval_s)
    return {"request_router_config": RequestRouterConfig(
        request_router_class=PREFIX_CACHE_AFFINITY_ROUTER, request_router_kwargs=kwargs)}
