"""The load-balancing policy interface and its registry of named policies.

A policy ranks; it never does I/O, takes no locks and never sleeps. The proxy and
the registry do the probing, timing and retrying (as in Ray Serve's router).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from inferno.config import AffinityConfig
from inferno.errors import ConfigError
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


class LoadBalancingPolicy(ABC):
    """Pick one backend from a snapshot of routable ones.

    ``candidates`` is never empty, holds only healthy backends that serve the
    requested model and were not already tried for this request. Each entry
    exposes ``address``, ``node_id``, ``in_flight`` (at this proxy), ``vitals``
    and ``weight``.
    """

    name: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[LoadBalancingPolicy]]] = {}

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            LoadBalancingPolicy._registry[name] = cls

    def __init__(self, rng: random.Random | None = None, *, affinity: AffinityConfig | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()

    @abstractmethod
    def choose(self, ctx: RequestContext, candidates: Sequence[WorkerInfo]) -> WorkerInfo:
        """Return one of ``candidates``."""

    def home(
        self, ctx: RequestContext, candidates: Sequence[WorkerInfo], load: Callable[[WorkerInfo], int]
    ) -> WorkerInfo | None:
        """The backend this request is worth waiting for when it is busy (an affinity
        policy's answer among all routable ``candidates``, busy ones included, under
        ``load``), or None: then it goes to whichever backend is free first."""
        return None

    @classmethod
    def create(
        cls, name: str, rng: random.Random | None = None, *, affinity: AffinityConfig | None = None
    ) -> LoadBalancingPolicy:
        try:
            policy_cls = cls._registry[name]
        except KeyError:
            raise ConfigError(f"unknown policy {name!r}; choose from {sorted(cls._registry)}") from None
        return policy_cls(rng, affinity=affinity)

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._registry)
