"""The Ray Serve layer, kept thin: ingress, substrate deployments, placement actor, app builder."""
