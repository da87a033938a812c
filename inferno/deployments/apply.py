"""``inferno deploy apply`` (and ``inferno up --deployments``): what the proxy has, plus a
file of specs, gives actions; ``apply_file`` carries them out.

A pure function of its inputs (no I/O), so it is tested on its own. Each spec in the
file is filled with its defaults before it is compared with the proxy's (``GET``
shows every default), so applying the same file twice changes nothing. A changed
deployment gets a JSON merge patch (RFC 7396) of just what differs: ``null`` for a
key the file no longer has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from inferno.deployments.client import AdminClient, deployment_path

ActionKind = Literal["create", "update", "delete", "unchanged", "blocked"]
#: a spec as the user wrote it -> the same with every default filled in (raises ValueError)
Normalize = Callable[[Mapping[str, Any]], dict[str, Any]]
#: how many deployments one file may hold (the proxy bounds it too)
MAX_SPECS = 256


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    id: str
    #: ``create``: the spec to POST; ``update``: the merge patch to PATCH
    body: dict[str, Any] | None = None
    #: ``update``: the dotted paths that change; ``blocked``: why
    changes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        if self.kind == "update":
            return f"update {self.id}: {', '.join(self.changes)}"
        if self.kind == "blocked":
            return f"blocked {self.id}: {'; '.join(self.changes)}"
        return f"{self.kind} {self.id}"


def load_specs(document: object) -> list[dict[str, Any]]:
    """The ``deployments:`` list of a parsed YAML (or JSON) file; ValueError if malformed."""
    if (
        not isinstance(document, dict)
        or "deployments" not in document
        or set(document) - {"deployments", "queues"}
    ):
        raise ValueError(
            "the file must hold the top-level key `deployments:`, a list of deployment specs "
            "(and may hold `queues:`, the pull queues)"
        )
    specs = document["deployments"]
    if specs is None:
        return []
    if not isinstance(specs, list):
        raise ValueError("`deployments:` must be a list of deployment specs")
    if len(specs) > MAX_SPECS:
        raise ValueError(f"at most {MAX_SPECS} deployments in one file")
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
            raise ValueError(f"deployments[{index}] must be a mapping with a `model:` string")
        if spec["model"] in seen:
            raise ValueError(f"deployments[{index}]: model {spec['model']!r} appears twice")
        seen.add(spec["model"])
    return specs


def load_queues(document: object) -> list[str]:
    """The ``queues:`` of a deployments file as ``--queue`` values (``NAME[:MAX_SIZE[:MAX_MESSAGE_BYTES]]``):
    each entry a name, or a mapping with ``name``, ``max_size``, ``max_message_bytes``."""
    queues = document.get("queues") if isinstance(document, dict) else None
    if queues is None:
        return []
    if not isinstance(queues, list) or len(queues) > MAX_SPECS:
        raise ValueError(f"`queues:` must be a list of at most {MAX_SPECS} queues")
    out = []
    for index, item in enumerate(queues):
        entry = {"name": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not set(entry) <= {"name", "max_size", "max_message_bytes"}:
            raise ValueError(f"queues[{index}] is a name or a mapping of name, max_size, max_message_bytes")
        parts = [str(entry.get("name", "")), str(entry.get("max_size", 1024))]
        if "max_message_bytes" in entry:
            parts.append(str(entry["max_message_bytes"]))
        out.append(":".join(parts))
    return out


def check_queues(declared: Sequence[str], wanted: Sequence[str]) -> None:
    """Queues are declared when the proxy starts: a file may only name ones it has."""
    missing = sorted({w.partition(":")[0] for w in wanted} - set(declared))
    if missing:
        raise ValueError(
            f"queue(s) {', '.join(missing)} are not declared on the proxy: queues are declared when it "
            "starts (inferno proxy --queue, or inferno up --deployments FILE)"
        )


def plan(
    current: Sequence[Mapping[str, Any]],
    wanted: Sequence[Mapping[str, Any]],
    *,
    normalize: Normalize,
    prune: bool = False,
) -> list[Action]:
    """Actions, in order: creates and updates in the file's order, then deletions.

    ``current`` are the proxy's deployment views (``GET /v1/deployments``'s ``data``);
    ``wanted`` the file's specs (``load_specs``). Deployments the file does not name
    are left alone unless ``prune``. A bad spec raises ValueError naming it, before
    anything is done.
    """
    views = {str(v["id"]): v for v in current}
    filled = []
    for spec in wanted:
        try:
            filled.append(normalize(spec))
        except ValueError as exc:
            raise ValueError(f"deployment {spec.get('model')!r}: {exc}") from None
    actions: list[Action] = []
    for spec in filled:
        name = str(spec["model"])
        view = views.get(name)
        if view is None:
            actions.append(Action("create", name, spec))
        elif view.get("state") == "deleting":
            actions.append(
                Action("blocked", name, changes=("it is being deleted; apply again once it is gone",))
            )
        else:
            patch = merge_patch(dict(view.get("spec") or {}), spec)
            if patch:
                actions.append(Action("update", name, patch, tuple(changed_paths(patch))))
            else:
                actions.append(Action("unchanged", name))
    if prune:
        named = {str(s["model"]) for s in filled}
        for name, view in sorted(views.items()):
            if name not in named and view.get("state") != "deleting":
                actions.append(Action("delete", name))
    return actions


def merge_patch(current: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7396 merge patch that turns ``current`` into ``target`` ({} when equal)."""
    patch: dict[str, Any] = {}
    for key in current:
        if key not in target:
            patch[key] = None
    for key, value in target.items():
        old = current.get(key, _MISSING)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = merge_patch(old, value)
            if sub:
                patch[key] = sub
        elif value is None:
            if key in current and old is not None:
                patch[key] = None
        elif old != value:
            patch[key] = value
    return patch


def changed_paths(patch: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in patch.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += changed_paths(value, f"{path}.")
        else:
            out.append(path)
    return out


_MISSING = object()


def normalize(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A file's spec with every default filled in, as ``GET`` shows it (ValueError if invalid)."""
    from pydantic import ValidationError

    from inferno.deployments.spec import DeploymentSpec

    try:
        return DeploymentSpec.model_validate(dict(spec)).with_defaults()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"{where}: {message}" if where else message) from None


def parse_document(text: str, name: str) -> object:
    """Parsed YAML (or JSON: JSON is YAML too); ValueError if malformed."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{name} is not valid YAML: {exc}") from None


def read_document(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return parse_document(text, str(path))


def execute(client: AdminClient, action: Action) -> None:
    if action.kind == "create":
        client.call("POST", "/v1/deployments", action.body)
    elif action.kind == "update":
        client.call("PATCH", deployment_path(action.id), action.body)
    elif action.kind == "delete":
        client.call("DELETE", deployment_path(action.id))


def done(action: Action) -> str:
    past = {"create": "created", "update": "updated", "delete": "deleted"}[action.kind]
    return past + action.describe()[len(action.kind) :]


def apply_file(client: AdminClient, path: Path, *, prune: bool = False) -> list[str]:
    """Apply a deployments file; one line per action (``AdminError``, ``ValueError``)."""
    document = read_document(path)
    wanted_queues = load_queues(document)
    if wanted_queues:
        check_queues(list(client.call("GET", "/queues")["queues"]), wanted_queues)
    actions = plan(client.views(), load_specs(document), normalize=normalize, prune=prune)
    lines = []
    for action in actions:
        if action.kind in ("create", "update", "delete"):
            execute(client, action)
            lines.append(done(action))
        else:
            lines.append(action.describe())
    return lines
