"""Deployments in the state database: specs, generations, and what survives a restart.

A row holds the spec (JSON, defaults filled in), its generation (bumped when the
engine or its options change), the replica count the autoscaler last decided, and
the wall-clock time of the last request, so that a restarted proxy carries on with
the same instances and the same keep-alive timers.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from inferno.deployments.spec import DeploymentSpec


@dataclass(frozen=True, slots=True)
class Deployment:
    spec: DeploymentSpec
    generation: int
    replicas: int
    deleting: bool
    #: wall-clock time of the last request, None: none yet
    last_request: float | None
    created: float
    updated: float

    @property
    def id(self) -> str:
        return self.spec.model


class DeploymentStore:
    """The ``deployments`` table; every write is one autocommitted statement."""

    def __init__(self, db: sqlite3.Connection, *, wall: Callable[[], float] = time.time) -> None:
        self._db = db
        self._wall = wall

    def all(self) -> list[Deployment]:
        rows = self._db.execute(
            "SELECT spec, generation, replicas, deleting, last_request, created, updated "
            "FROM deployments ORDER BY created"
        ).fetchall()
        return [
            Deployment(
                DeploymentSpec.model_validate(json.loads(r[0])), r[1], r[2], bool(r[3]), r[4], r[5], r[6]
            )
            for r in rows
        ]

    def insert(self, spec: DeploymentSpec, replicas: int) -> Deployment | None:
        """A new deployment, or None when its id is taken."""
        now = self._wall()
        record = Deployment(spec, 1, replicas, False, None, now, now)
        try:
            self._db.execute(
                "INSERT INTO deployments (id, spec, generation, replicas, deleting, last_request, "
                "created, updated) VALUES (?, ?, 1, ?, 0, NULL, ?, ?)",
                (spec.model, _dump(spec), replicas, now, now),
            )
        except sqlite3.IntegrityError:
            return None
        return record

    def update(self, record: Deployment, **changes: object) -> Deployment:
        new = replace(record, updated=self._wall(), **changes)  # type: ignore[arg-type]
        self._db.execute(
            "UPDATE deployments SET spec = ?, generation = ?, replicas = ?, deleting = ?, last_request = ?, "
            "updated = ? WHERE id = ?",
            (
                _dump(new.spec),
                new.generation,
                new.replicas,
                int(new.deleting),
                new.last_request,
                new.updated,
                new.id,
            ),
        )
        return new

    def touch(self, rows: list[tuple[str, int, float | None]]) -> None:
        """Autoscaling state of several deployments in one transaction: (id, replicas,
        last request) each; cheap enough to run every tick."""
        if not rows:
            return
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "UPDATE deployments SET replicas = ?, last_request = ? WHERE id = ?",
                [(replicas, last, ident) for ident, replicas, last in rows],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def delete(self, ident: str) -> None:
        self._db.execute("DELETE FROM deployments WHERE id = ?", (ident,))


def _dump(spec: DeploymentSpec) -> str:
    return json.dumps(spec.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)
