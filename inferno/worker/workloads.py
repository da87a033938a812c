"""Built-in workloads, named by the workload word: no process is spawned.

- ``sleep SECONDS``: waits (``asyncio.sleep``), within the time limit like any
  workload (past it: a timeout).
- ``fake-device SECONDS [SEED]``: as ``sleep``, and reports the job's device (its
  FILENAME, the ``--glob`` match) with ``device_metrics`` (``temp_c``, ``util``)
  drawn from a generator seeded by SEED and the device, so tests know them.

Each registers itself by name (``__init_subclass__``), like engines and policies.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from typing import ClassVar

from inferno.worker.runner import JobResult, JobSpec, Runner, RunnerSettings


class BuiltinWorkload(Runner):
    """A workload run inside the worker; its args are the worker's then the job's."""

    name: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[BuiltinWorkload]]] = {}

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            BuiltinWorkload._registry[name] = cls

    def __init__(self, settings: RunnerSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock

    @classmethod
    def lookup(cls, word: str) -> type[BuiltinWorkload] | None:
        return cls._registry.get(word)

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._registry)

    async def run(self, job: JobSpec) -> JobResult:
        args = self.settings.argv(job)[1:]
        started = self._clock()
        device = job.device or ""
        try:
            seconds = float(args[0]) if args else 0.0
            if not math.isfinite(seconds) or seconds < 0:
                raise ValueError(seconds)
        except ValueError:
            return JobResult(2, f"{self.name}: the first argument must be seconds >= 0", device=device)
        limit = self.settings.limit(job)
        timed_out = limit is not None and seconds > limit
        slept = min(seconds, limit) if limit is not None else seconds
        await asyncio.sleep(slept)
        result = JobResult(
            exit_code=None if timed_out else 0,
            error=f"timed out after {limit:g}s" if timed_out else None,
            timed_out=timed_out,
            output="" if self.settings.discard_output else f"slept {slept:g}s",
            run_s=self._clock() - started,
            device=device,
        )
        self.finish(result, args)
        return result

    def finish(self, result: JobResult, args: tuple[str, ...]) -> None:
        """Add what this workload reports besides the sleep."""


class SleepWorkload(BuiltinWorkload, name="sleep"):
    pass


class FakeDeviceWorkload(BuiltinWorkload, name="fake-device"):
    def finish(self, result: JobResult, args: tuple[str, ...]) -> None:
        seed = args[1] if len(args) > 1 else "0"
        result.device_metrics = fake_device_metrics(seed, result.device)


def fake_device_metrics(seed: str, device: str) -> dict[str, float]:
    """The metrics ``fake-device`` reports for this seed and device (deterministic)."""
    rng = random.Random(f"{seed}:{device}")
    return {"temp_c": round(rng.uniform(30.0, 85.0), 1), "util": round(rng.random(), 3)}
