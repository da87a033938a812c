"""The worker's output reader cancelled while it connects its pipe (a job cancelled
as it starts, as on a second SIGTERM): it ends cancelled, its pipe closed, on both
event loops the worker may run on. Real pipes, real loops."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from inferno.worker.runner import OutputCapture, _read_pipe


async def _cancel_while_connecting() -> tuple[bool, bool]:
    read_fd, write_fd = os.pipe()
    try:
        task = asyncio.create_task(_read_pipe(read_fd, OutputCapture(1024)))
        await asyncio.sleep(0)  # the task now waits in connect_read_pipe
        task.cancel()
        await asyncio.wait({task})
        closed = True
        try:
            os.fstat(read_fd)
            closed = False
            os.close(read_fd)
        except OSError:
            pass
        return task.cancelled(), closed
    finally:
        os.close(write_fd)


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_reader_cancelled_while_connecting_ends_cancelled_with_its_pipe_closed(
    run: Callable[[Coroutine[Any, Any, tuple[bool, bool]]], tuple[bool, bool]],
) -> None:
    cancelled, closed = run(_cancel_while_connecting())
    assert cancelled  # not an OSError (EBADF) that nobody retrieves
    assert closed
