"""Which placement actor belongs to an application: one per application, named after it alone (a
changed config is applied to it, never a second actor), and app `a`'s is never app `a-b`'s."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from deployments.placement_actor import actor_name


def test_an_app_has_one_actor_named_for_it_alone():
    assert actor_name("chaos") == "inferplane-placement-chaos"
    assert actor_name("chaos") != actor_name("chaos-vllm")
