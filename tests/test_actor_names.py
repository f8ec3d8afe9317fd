"""Which placement actors belong to an application: by exact name, never by prefix (app `a`'s
prefix is also app `a-b`'s, and retiring or tearing down one must never touch the other)."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray

from deployments import placement_actor
from deployments.placement_actor import NAMESPACE, _actor_names, actor_name


def test_an_app_owns_only_actors_named_for_it(monkeypatch):
    mine = [actor_name("chaos", "config one"), actor_name("chaos", "config two")]
    others = [actor_name("chaos-vllm", "config one"), actor_name("chao", "x"), "inferplane-placement-chaos-notahash"]
    listed = [{"name": n, "namespace": NAMESPACE} for n in mine + others]
    listed.append({"name": actor_name("chaos", "elsewhere"), "namespace": "another-namespace"})
    monkeypatch.setattr(ray.util, "list_named_actors", lambda all_namespaces=False: listed)
    assert sorted(_actor_names("chaos")) == sorted(mine)
    assert _actor_names("chaos-vllm") == [actor_name("chaos-vllm", "config one")]
    assert placement_actor.actor_name("chaos", "config one") != placement_actor.actor_name("chaos", "config two")
