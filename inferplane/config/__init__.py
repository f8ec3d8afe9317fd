"""Configuration: schema (shape), references (cross-checks), loader (phase one), build (phase two)."""

from inferplane.config.build import BuiltConfig, build
from inferplane.config.errors import ConfigError, ConfigProblem
from inferplane.config.loader import load_config, parse_config
from inferplane.config.schema import InferplaneConfig

__all__ = ["BuiltConfig", "ConfigError", "ConfigProblem", "InferplaneConfig", "build", "load_config", "parse_config"]


def load_and_build(path) -> BuiltConfig:
    """Both phases, for callers that want the runtime objects of a file."""
    return build(load_config(path))
