"""What admission asks of the deployments a request may wait for while they start."""

from __future__ import annotations

from typing import Protocol


class ColdStarts(Protocol):
    """The deployments a request may wait for while they start (``DeploymentManager``)."""

    def lookup(self, model: str | None) -> AutoScalingLimits | None: ...

    def default_for(self, task: str) -> str | None:
        """A live deployment doing ``task``, for a request that names no model."""

    def wake(self, model: str) -> None: ...

    def refused(self, model: str) -> None: ...

    def starting(self, model: str) -> bool: ...

    def observe_cold_start(self, model: str, seconds: float) -> None: ...


class AutoScalingLimits(Protocol):
    @property
    def cold_start_timeout_s(self) -> float: ...

    @property
    def max_pending(self) -> int: ...
