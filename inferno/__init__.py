"""Inferno: a load-balancing proxy and inference backends for language, embeddings and image models."""

from inferno import native as _native

__version__ = "0.1.0"

#: whether the mypyc-compiled hot path will load (``inferno.native``)
NATIVE = _native.choose()
