"""A migrating stream's admission (``urgent``): ahead of every class, never refused
for a full queue, and waiting for a backend to come back. Injected clock."""

from __future__ import annotations

import asyncio

import pytest

from inferno.errors import NoBackendAvailable, Overloaded
from inferno.schemas.registration import RegistrationPayload
from inferno.schemas.routing import Priority
from tests.unit.test_admission import rc, setup
from tests.unit.test_registry import FakeClock


async def test_urgent_takes_the_next_slot_ahead_of_every_waiter_and_a_full_queue() -> None:
    clock = FakeClock()
    adm, _ = setup(clock, max_queue=2)
    holder = await adm.acquire(rc("busy", Priority.NORMAL), timeout_s=5)
    order: list[str] = []

    async def queued(name: str, priority: Priority, urgent: bool = False) -> None:
        worker = await adm.acquire(rc(name, priority), timeout_s=5, urgent=urgent)
        order.append(name)
        adm.release(worker)

    tasks = [asyncio.create_task(queued(n, Priority.HIGH)) for n in ("high1", "high2")]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):  # the queue is full for everyone else
        await adm.acquire(rc("late", Priority.HIGH), timeout_s=5)
    clock.now += 0.5
    tasks.append(asyncio.create_task(queued("migrating", Priority.LOW, urgent=True)))
    await asyncio.sleep(0)
    adm.release(holder)
    await asyncio.gather(*tasks)
    assert order == ["migrating", "high1", "high2"]


async def test_urgent_waits_for_a_backend_to_come_back_until_its_deadline() -> None:
    clock = FakeClock()
    adm, reg = setup(clock)
    reg.deregister("h:1")
    with pytest.raises(NoBackendAvailable):  # anyone else is refused at once
        await adm.acquire(rc("plain", Priority.NORMAL), timeout_s=5)
    waiting = asyncio.create_task(adm.acquire(rc("migrating", Priority.NORMAL), timeout_s=5, urgent=True))
    await asyncio.sleep(0)
    assert not waiting.done()
    reg.register(RegistrationPayload(address="h:1", node_id="n"))  # restarted
    worker = await asyncio.wait_for(waiting, 1)
    assert worker.address == "h:1" and worker.in_flight == 1
    adm.release(worker)
    reg.deregister("h:1")
    with pytest.raises(NoBackendAvailable, match="came back"):
        await adm.acquire(rc("migrating", Priority.NORMAL), timeout_s=0.01, urgent=True)
