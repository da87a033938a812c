"""Admission control: per-backend concurrency limits and a bounded priority queue.

A request takes a backend at once when one has spare capacity and nobody is
waiting. Otherwise it waits in a queue of three classes (high, normal, low).
When capacity frees up the best waiter is served: lowest effective class, then
earliest arrival. A waiter's effective class improves by one for every
``aging_s`` seconds it has waited, so ``low`` waits at most ``2 * aging_s``
before it competes as ``high``, and then wins against every ``high`` request
that arrived after it: starvation is bounded.

The controller hands a waiter its backend with the in-flight count already
taken, so capacity cannot be stolen between wake-up and dispatch.

A request that would have to wait is refused at once (429) when its expected
wait, from its place in the queue and the measured service rate of its pool
(``inferno.proxy.waits``), exceeds its deadline or the queue timeout: overload
answers now, not after the full wait. Urgent waiters are never refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence

from inferno.config import AdmissionConfig
from inferno.errors import ColdStartTimeout, InfernoError, ModelNotFound, NoBackendAvailable, Overloaded
from inferno.observability.metrics import Histogram
from inferno.policies.base import LoadBalancingPolicy
from inferno.proxy.coldstart import ColdStarts, ColdStartWaits
from inferno.proxy.waiter import Waiter
from inferno.proxy.waits import ServiceTimes, expected_wait_s, retry_after_s
from inferno.registry.registry import WorkerRegistry
from inferno.registry.worker import WorkerInfo
from inferno.schemas.routing import Priority, RequestContext

logger = logging.getLogger(__name__)
DEFAULT_LIMIT = 8
#: index of urgent waiters in a pool's counts; the classes follow (high = 1, ...)
_URGENT = 0


def _pool_key(ctx: RequestContext) -> str:
    """Waiters of one model (or, with none, one task) compete for the same backends."""
    return ctx.model if ctx.model is not None else "task:" + ctx.task


class AdmissionController(ColdStartWaits):
    def __init__(
        self,
        config: AdmissionConfig,
        registry: WorkerRegistry,
        policy: LoadBalancingPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        affinity_wait_s: float = 0.0,
        cold_starts: ColdStarts | None = None,
    ) -> None:
        #: deployments: a request for one with no instance waits for it to start
        self.cold_starts = cold_starts
        #: model -> requests waiting for a cold start
        self._pending: dict[str, int] = {}
        self._cfg = config
        self._registry = registry
        self._policy = policy
        self._clock = clock
        self._waiters: list[Waiter] = []
        #: waiting for a deployment's first instance to start: apart, so that they never
        #: hold back requests for models that have capacity (nor count in max_queue)
        self._cold_waiters: list[Waiter] = []
        # Affinity: only for a policy that names homes (the check costs others nothing).
        self._affine = type(policy).home is not LoadBalancingPolicy.home
        self._affinity_wait_s = affinity_wait_s
        #: address -> waiters waiting for that backend as their home
        self._home_waiting: dict[str, int] = {}
        self.served_from_queue = {p: 0 for p in Priority}
        #: how long the requests served from the queue waited, per priority class
        self.queue_wait = {p: Histogram() for p in Priority}
        #: per backend, how long requests hold a slot (None: never refuse by expected wait)
        self.service_times = (
            ServiceTimes(
                config.service_time_alpha,
                config.wait_estimate_min_samples,
                clock,
                deviations=config.wait_estimate_deviations,
            )
            if config.wait_estimate_min_samples
            else None
        )
        #: pool key -> waiters queued, urgent first, then by class
        self._queued: dict[str, list[int]] = {}
        #: refused with 429, by reason (queue_full, expected_wait, queue_timeout)
        self.rejected: dict[str, int] = {
            "queue_full": 0,
            "expected_wait": 0,
            "deadline": 0,
            "queue_timeout": 0,
            "cold_start_pending": 0,
            "cold_start_timeout": 0,
        }
        registry.on_change(self.dispatch)
        registry.on_removed(self.forget)

    # -- limits --------------------------------------------------------------------------
    def limit(self, worker: WorkerInfo) -> int:
        if self._cfg.max_in_flight_per_backend:
            return self._cfg.max_in_flight_per_backend
        # No more than the backend runs at once: the rest wait here, where the deadline is
        # known, instead of in the backend, where waiting looks like a slow answer.
        return worker.vitals.slots or DEFAULT_LIMIT

    def _load(self, worker: WorkerInfo) -> int:
        """In flight at this proxy plus the requests waiting for it as their home."""
        return worker.in_flight + self._home_waiting.get(worker.address, 0)

    def _eligible(self, ctx: RequestContext, tried: frozenset[str]) -> Sequence[WorkerInfo]:
        pool = self._registry.routable_for(ctx.model, ctx.task)
        if not tried:
            return pool
        return [w for w in pool if w.address not in tried]

    def _with_capacity(self, workers: Sequence[WorkerInfo]) -> Sequence[WorkerInfo]:
        for worker in workers:
            if not worker.has_capacity(self.limit(worker)):
                return [w for w in workers if w.has_capacity(self.limit(w))]
        return workers  # the common case: no copy

    # -- acquire / release ---------------------------------------------------------------
    async def acquire(
        self,
        ctx: RequestContext,
        tried: frozenset[str] = frozenset(),
        *,
        timeout_s: float,
        urgent: bool = False,
        on_cold: Callable[[float], None] | None = None,
    ) -> WorkerInfo:
        """A backend for ``ctx`` with its in-flight count taken; ``release`` gives it back.

        ``urgent`` (a stream migrating after its backend failed) takes the next free slot
        ahead of every waiting request, is never refused for a full queue, and waits up
        to ``timeout_s`` for a backend to become routable again.
        """
        eligible = self._eligible(ctx, tried)
        limits = None
        if self.cold_starts is not None:
            model = ctx.model
            if model is None and not eligible:
                # no model named: a deployment doing the task may start for it
                model = self.cold_starts.default_for(ctx.task)
            limits = self.cold_starts.lookup(model)
            if limits is not None and not eligible and not self._registry.routable_for(ctx.model, ctx.task):
                assert model is not None
                return await self._cold_start(ctx, model, tried, limits, timeout_s, on_cold)
        if urgent:
            free = self._with_capacity(eligible)
            if free:
                return self._take(self._policy.choose(ctx, free))
            return await self._wait(Waiter(ctx, tried, self._clock(), self._future(), urgent=True), timeout_s)
        if not eligible:
            self._raise_unavailable(ctx, tried)
        home = self._policy.home(ctx, eligible, self._load) if self._affine else None
        if not self._waiters:
            if home is not None:
                if home.has_capacity(self.limit(home)):
                    return self._take(home)
            else:
                free = self._with_capacity(eligible)
                if free:
                    return self._take(self._policy.choose(ctx, free))
        if len(self._waiters) >= self._cfg.max_queue:
            self.rejected["queue_full"] += 1
            if limits is not None:
                self._scale_for(ctx)
            raise Overloaded(f"the request queue is full ({self._cfg.max_queue}); retry later")
        if self.service_times is not None and not (limits is not None and self._scaling(ctx)):
            # (a deployment that is starting instances is not refused by what runs now)
            try:
                self._refuse_if_late(ctx, eligible, timeout_s)
            except Overloaded:
                if limits is not None:
                    self._scale_for(ctx)
                raise
        waiter = Waiter(ctx, tried, self._clock(), self._future())
        waiter.deadline = waiter.arrival + timeout_s
        if home is not None and self._affinity_wait_s > 0:
            waiter.home, waiter.home_until = home, waiter.arrival + self._affinity_wait_s
            self._home_waiting[home.address] = self._home_waiting.get(home.address, 0) + 1
        return await self._wait(waiter, min(timeout_s, self._cfg.queue_timeout_s))

    def waiting_for(self, model: str) -> int:
        """Requests queued for ``model`` (cold-start waiters among them)."""
        counts = self._queued.get(model)
        return sum(counts) if counts is not None else 0

    def _take(self, worker: WorkerInfo) -> WorkerInfo:
        worker.in_flight += 1
        if self.service_times is not None:
            self.service_times.started(worker.address)
        return worker

    def forget(self, address: str) -> None:
        """A backend left (or restarted): its service time is measured afresh."""
        if self.service_times is not None:
            self.service_times.forget(address)

    def expected_wait(
        self, ctx: RequestContext, eligible: Sequence[WorkerInfo]
    ) -> tuple[float, float] | None:
        """(seconds until a request arriving now for ``ctx`` gets a slot, seconds it then
        holds it), or None while the pool's service rate is not measured yet. Waiters of
        its pool that rank at least as well count as ahead of it (aging may add more:
        the estimate errs towards admitting)."""
        assert self.service_times is not None
        measured = self.service_times.rate((w.address, self.limit(w)) for w in eligible)
        if measured is None:
            return None
        rate, service_s = measured
        counts = self._queued.get(_pool_key(ctx))
        ahead = sum(counts[: int(ctx.priority) + 2]) if counts is not None else 0
        return expected_wait_s(ahead, rate), service_s

    def _refuse_if_late(self, ctx: RequestContext, eligible: Sequence[WorkerInfo], timeout_s: float) -> None:
        """429 now for a request that would start after the queue timeout, or finish
        after its deadline."""
        estimate = self.expected_wait(ctx, eligible)
        if estimate is None:
            return
        wait_s, service_s = estimate
        queue_timeout_s = self._cfg.queue_timeout_s
        if wait_s <= queue_timeout_s and wait_s + service_s <= timeout_s:
            return
        budget_s = min(queue_timeout_s, timeout_s - service_s)
        self.rejected["expected_wait"] += 1
        raise Overloaded(
            f"the expected wait for a backend ({wait_s:.3g}s, then {service_s:.3g}s to serve) "
            f"does not fit this request's {timeout_s:.3g}s deadline or the {queue_timeout_s:.3g}s "
            "queue timeout; retry later",
            reason="expected_wait",
            retry_after_s=retry_after_s(wait_s, budget_s, queue_timeout_s),
        )

    def _future(self) -> asyncio.Future[WorkerInfo]:
        return asyncio.get_running_loop().create_future()

    async def _wait(self, waiter: Waiter, wait_s: float) -> WorkerInfo:
        """Queue ``waiter`` until ``dispatch`` hands it a backend or ``wait_s`` passes."""
        loop = asyncio.get_running_loop()
        wake: asyncio.TimerHandle | None = None
        if waiter.home is not None:
            # When the wait for the home ends, any free backend will do.
            wake = loop.call_later(self._affinity_wait_s, self.dispatch)
        queue = self._cold_waiters if waiter.cold else self._waiters
        queue.append(waiter)
        counts = self._queued.get(key := _pool_key(waiter.ctx))
        if counts is None:
            counts = self._queued[key] = [0] * (len(Priority) + 1)
        slot = _URGENT if waiter.urgent else int(waiter.ctx.priority) + 1
        counts[slot] += 1
        handle = loop.call_later(wait_s, self._expire, waiter, wait_s)
        if not waiter.cold and self._with_capacity(self._eligible(waiter.ctx, waiter.tried)):
            # It queued behind waiters of other pools while its own has a free slot: the
            # queue's order decides now, not at the next release. (When its pool is full,
            # as under overload, there is nothing to hand out: no sort of the queue.)
            self.dispatch()
        try:
            return await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled() and not waiter.future.exception():
                # Cancelled after being handed a backend: give it back.
                self.release(waiter.future.result(), failed=True)
            raise
        finally:
            counts[slot] -= 1
            if not any(counts):
                self._queued.pop(key, None)
            handle.cancel()
            if wake is not None:
                wake.cancel()
            if waiter.home is not None:
                address = waiter.home.address
                left = self._home_waiting.get(address, 1) - 1
                if left > 0:
                    self._home_waiting[address] = left
                else:
                    self._home_waiting.pop(address, None)
            if waiter in queue:
                queue.remove(waiter)

    def release(self, worker: WorkerInfo, *, failed: bool = False) -> None:
        """Give the slot back; ``failed`` (no answer) keeps it out of the service time."""
        worker.in_flight -= 1
        if self.service_times is not None:
            self.service_times.finished(worker.address, failed=failed)
        if self._waiters or self._cold_waiters:
            self.dispatch()

    def _expire(self, waiter: Waiter, timeout: float) -> None:
        if waiter.cold and not waiter.future.done():
            self.rejected["cold_start_timeout"] += 1
            waiter.future.set_exception(
                ColdStartTimeout(
                    f"no instance of {waiter.cold} started within {timeout:.3g}s; retry later",
                    retry_after_s=max(1, math.ceil(timeout / 4)),
                )
            )
        if waiter.urgent and not waiter.future.done():
            waiter.future.set_exception(
                NoBackendAvailable(f"no backend came back within {timeout:.3g}s to continue the stream on")
            )
        if not waiter.future.done():
            self.rejected["queue_timeout"] += 1
            waiter.future.set_exception(
                Overloaded(
                    f"no backend capacity within {timeout:.3g}s of queueing; retry later",
                    reason="queue_timeout",
                )
            )

    def _raise_unavailable(self, ctx: RequestContext, tried: frozenset[str]) -> None:
        if ctx.model is not None and not any(w.serves(ctx.model) for w in self._registry.all()):
            raise ModelNotFound(
                f"the requested model is not served by any backend; available: {self._registry.models()}",
                param="model",
            )
        workers = self._registry.all()
        # Backends exist, but none (healthy or not) does this task: a client error.
        if (
            ctx.model is None
            and workers
            and not self._registry.routable_for(None, ctx.task)
            and not any(ctx.task in w.tasks.values() or not w.models for w in workers)
        ):
            raise ModelNotFound(
                f"no backend serves a {ctx.task} model; available: {self._registry.models()}",
                param="model",
            )
        if tried:
            raise NoBackendAvailable(
                f"all backends failed for this request ({len(tried)} tried) and none is left"
            )
        raise NoBackendAvailable("no healthy backend is available; retry later")

    # -- the queue -----------------------------------------------------------------------
    def rank(self, waiter: Waiter, now: float) -> tuple[int, float]:
        if waiter.urgent:
            return -1_000_000, waiter.arrival
        waited = max(0.0, now - waiter.arrival)
        return int(waiter.ctx.priority) - math.floor(waited / self._cfg.aging_s), waiter.arrival

    def dispatch(self) -> None:
        """Hand free capacity to waiters, best rank first (cold-start waiters, which
        wait for instances of their own, in arrival order after them)."""
        if not self._waiters and not self._cold_waiters:
            return
        now = self._clock()
        for waiter in [*sorted(self._waiters, key=lambda w: self.rank(w, now)), *self._cold_waiters]:
            if waiter.future.done():
                continue
            eligible = self._eligible(waiter.ctx, waiter.tried)
            if not eligible and (waiter.urgent or waiter.cold):
                continue  # it waits for a backend to come back, or to start
            if not eligible:
                try:
                    self._raise_unavailable(waiter.ctx, waiter.tried)
                except InfernoError as exc:
                    waiter.future.set_exception(exc)
                continue
            free = self._with_capacity(eligible)
            if not free:
                continue
            home = waiter.home
            if home is not None and home in free:
                worker = home
            elif home is not None and now < waiter.home_until and home in eligible:
                continue  # its home is busy, and worth waiting for a while longer
            else:
                worker = self._policy.choose(waiter.ctx, free)
            if (
                self.service_times is not None
                and not waiter.urgent
                and self._cannot_finish(waiter, worker, now)
            ):
                continue  # refused; the slot goes to the next waiter
            self._take(worker)
            self.served_from_queue[waiter.ctx.priority] += 1
            self.queue_wait[waiter.ctx.priority].observe(now - waiter.arrival)
            if waiter.cold:
                self._cold_started(waiter, now - waiter.arrival)
            waiter.future.set_result(worker)

    def _cannot_finish(self, waiter: Waiter, worker: WorkerInfo, now: float) -> bool:
        """A waiter whose deadline is nearer than the service time planned for the
        backend (its mean plus deviations, as at arrival) is refused rather than started:
        its try would likely be cut short into a 504, and the slot time it wasted would
        make every waiter behind it later still (a cascade after a stall)."""
        assert self.service_times is not None
        mean_s = self.service_times.service_s(worker.address)
        if mean_s is None or now + mean_s <= waiter.deadline:
            return False
        self.rejected["deadline"] += 1
        waiter.future.set_exception(
            Overloaded(
                f"a backend was free only {waiter.deadline - now:.3g}s before this request's deadline, "
                f"less than the {mean_s:.3g}s it takes; retry later",
                reason="deadline",
            )
        )
        return True

    def queue_sizes(self) -> dict[str, int]:
        """Requests waiting, by priority class name."""
        sizes = {p.name.lower(): 0 for p in Priority}
        for waiter in self._waiters:
            if not waiter.future.done():
                sizes[waiter.ctx.priority.name.lower()] += 1
        return sizes

    def status(self) -> dict[str, object]:
        sizes = self.queue_sizes()
        return {
            "size": sum(sizes.values()),
            "max": self._cfg.max_queue,
            "by_priority": sizes,
            "queue_timeout_s": self._cfg.queue_timeout_s,
            "aging_s": self._cfg.aging_s,
            "served_from_queue": {p.name.lower(): n for p, n in self.served_from_queue.items()},
            "cold_start_waiting": len(self._cold_waiters),
            "rejected": dict(self.rejected),
        }
