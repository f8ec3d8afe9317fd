"""Models inferplane can serve without a hub: prepared once from files that installed wheels ship."""
