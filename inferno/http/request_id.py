"""Request ids: keep a well-formed client id, otherwise mint a fresh one."""

from __future__ import annotations

import itertools
import os
import re

_VALID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdFactory:
    """Ids are ``<random boot prefix>-<counter>``: unique, cheap, sortable per proxy."""

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = prefix or os.urandom(4).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"

    def accept_or_new(self, client_id: bytes | None) -> str:
        """A client id is kept if it is at most 128 characters from ``[A-Za-z0-9._:-]``."""
        if client_id is not None and _VALID.match(client_id):
            return client_id.decode("ascii")
        return self.new()
