"""Inferno: a load-balancing proxy and inference backends for language models."""

__version__ = "0.1.0"
