"""The Ray Serve layer: ingress, substrate deployments, placement actor, app builder.

Not built yet; the placement core in ``inferplane`` is what exists today.
"""
