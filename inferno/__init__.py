"""Inferno: a load-balancing proxy and inference backends for language, embeddings and image models."""

__version__ = "0.1.0"
