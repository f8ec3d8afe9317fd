"""Builds the adapter a substrate's config asks for. Engines are imported only when used."""

from __future__ import annotations

from inferplane.config.schema import (
    EmulatedSubstrate,
    OpenAICompatibleSubstrate,
    Substrate,
    VllmSubstrate,
)
from substrate_adapters.base import SubstrateAdapter


def adapter_for(substrate: Substrate) -> SubstrateAdapter:
    match substrate:
        case EmulatedSubstrate():
            from substrate_adapters.emulated import EmulatedAdapter

            return EmulatedAdapter(substrate.models, substrate.emulated, substrate_name=substrate.name)
        case OpenAICompatibleSubstrate():
            from substrate_adapters.openai_compatible import OpenAICompatibleAdapter

            return OpenAICompatibleAdapter(substrate.openai_compatible)
        case VllmSubstrate():
            from substrate_adapters.vllm_engine import VllmEngineAdapter

            return VllmEngineAdapter(substrate.models, substrate.vllm)
    raise ValueError(f"no adapter for kind {substrate.kind}")
