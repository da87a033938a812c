"""The package's shape: dependencies point down, no import cycles, small modules, one error tree."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import inferno
from inferno.errors import InfernoError

PACKAGE = Path(inferno.__file__).parent

#: lower layers never import higher ones (docs/architecture.md draws this)
LAYERS: dict[str, int] = {
    "errors": 0,
    "native": 0,
    "config": 0,
    "schemas": 0,
    "http": 0,
    "state": 0,
    "observability": 1,
    "security": 1,
    "engines": 2,
    "api": 3,
    "deployments": 3,
    "orchestrators": 3,
    "queues": 3,
    "registry": 4,
    "policies": 4,
    "proxy": 5,
    "backend": 5,
    "bench": 5,
    "worker": 5,
    "launcher": 6,
    "controller": 6,
    "healthcheck": 6,
    "cli": 7,
    "__main__": 7,
}
#: pairs that would be allowed by the layers but are not: each process stands alone
FORBIDDEN = {
    ("backend", "proxy"),
    ("backend", "registry"),
    ("backend", "policies"),
    ("proxy", "backend"),
    ("bench", "proxy"),
    ("bench", "backend"),
    # the proxy never holds the Docker socket: the controller does
    ("proxy", "controller"),
    ("controller", "proxy"),
    ("controller", "backend"),
    ("controller", "registry"),
    # the worker only dials out to the proxy's worker routes
    ("worker", "proxy"),
    ("worker", "backend"),
    ("worker", "registry"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(path: Path, *, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("inferno"):
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("inferno"))
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_dependencies_point_down() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        if name == "inferno":
            continue
        source = _top(name)
        for target in _imports(path, module_level_only=False):
            if target not in modules:
                continue  # ``from inferno.x import name``: the module is counted on its own
            dest = _top(target)
            if dest == source:
                continue
            if LAYERS[dest] > LAYERS[source] or (source, dest) in FORBIDDEN:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "upward or forbidden imports:\n" + "\n".join(sorted(wrong))


def test_every_package_has_a_layer() -> None:
    assert {_top(name) for name in _modules() if name != "inferno"} <= set(LAYERS)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {
        name: {t for t in _imports(path, module_level_only=False) if t in modules and t != name}
        for name, path in modules.items()
    }
    # Imports inside functions count too: a lazy import that closes a loop is still a
    # cycle in the design. A package's __init__ importing its own submodules is how
    # registries fill; the submodules import siblings (not the package), so no loop.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_module_is_over_500_lines() -> None:
    long = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert not {k: v for k, v in long.items() if v > 500}


def test_every_inferno_error_lives_in_errors_py() -> None:
    for info in pkgutil.walk_packages(inferno.__path__, "inferno."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
    strays = []
    pending = list(InfernoError.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if inspect.getmodule(cls).__name__ != "inferno.errors":  # type: ignore[union-attr]
            strays.append(f"{cls.__module__}.{cls.__qualname__}")
    assert not strays, strays
