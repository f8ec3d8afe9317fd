"""Clients for each kind of substrate (vLLM engine, OpenAI-compatible API, emulated). No Ray imports."""
