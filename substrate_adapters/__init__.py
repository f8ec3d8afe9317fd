"""Clients for each kind of substrate (vLLM engine, OpenAI-compatible API, emulated). No Ray imports.

Not built yet; the placement core in ``inferplane`` is what exists today.
"""
