"""inferplane: inference placement at the infrastructure layer, on Ray Serve."""

__version__ = "0.1.0"
