"""The processes ``inferno up`` supervises: how each starts, and when it is restarted."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Linux prctl: the child gets this signal when its parent dies
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "inferno", *args],
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env} if env else None,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - Linux-only, no threads yet
    )


class RestartPolicy:
    """Backoff and a restart budget for one supervised child, on an injected clock.

    After the n-th consecutive quick death the child waits ``base_s * 2**(n-1)``
    (capped at ``max_backoff_s``); a child that ran ``stable_s`` resets the backoff.
    More than ``max_restarts`` restarts within ``window_s`` and the policy gives up.
    """

    def __init__(
        self,
        *,
        base_s: float = 0.5,
        max_backoff_s: float = 10.0,
        max_restarts: int = 5,
        window_s: float = 60.0,
        stable_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_s
        self._max_backoff = max_backoff_s
        self._max_restarts = max_restarts
        self._window = window_s
        self._stable = stable_s
        self._clock = clock
        self._restarts: list[float] = []
        self._streak = 0
        self._started = clock()

    def started(self) -> None:
        self._started = self._clock()

    def on_exit(self) -> float | None:
        """Seconds to wait before the restart, or None to give up on this child."""
        now = self._clock()
        self._restarts = [t for t in self._restarts if now - t < self._window]
        if len(self._restarts) >= self._max_restarts:
            return None
        self._restarts.append(now)
        self._streak = 1 if now - self._started >= self._stable else self._streak + 1
        return float(min(self._max_backoff, self._base * 2 ** (self._streak - 1)))

    @property
    def restarts_in_window(self) -> int:
        return len(self._restarts)


@dataclass(slots=True)
class Child:
    """One supervised process: how to start it again, and its restart policy."""

    name: str
    args: list[str]
    policy: RestartPolicy
    popen: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    given_up: bool = False
    env: dict[str, str] | None = None

    def spawn(self) -> None:
        self.popen = _spawn(self.args, self.env)
        self.policy.started()
        self.restart_at = None
