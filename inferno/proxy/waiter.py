"""One request waiting in the admission queue."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import RequestContext


@dataclass(eq=False)
class Waiter:
    ctx: RequestContext
    tried: frozenset[str]
    arrival: float
    future: asyncio.Future[WorkerInfo] = field(repr=False)
    #: the backend worth waiting for (affinity), until ``home_until``
    home: WorkerInfo | None = None
    home_until: float = 0.0
    #: a migrating stream: served ahead of every class, and waits for a backend to
    #: come back (until its deadline) rather than failing when none is routable
    urgent: bool = False
    #: when the request's own deadline passes (clock time)
    deadline: float = math.inf
    #: the deployment whose instance it waits to start ("": not a cold start)
    cold: str = ""
    #: told how long a cold start took, when the waiter is handed its backend
    on_cold: Callable[[float], None] | None = None
