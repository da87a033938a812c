"""The compiled hot path: which modules mypyc compiles, and when the compiled ones load.

``make native`` (``scripts/build_native.py``, run by ``make install``) compiles the
modules below with mypyc into extension modules beside their sources, plus one
shared library, ``inferno/_native__mypyc*.so``. Python prefers an extension module
to a source file of the same name, so nothing else changes. The pure-Python
source stays the reference and the fallback, and it is what runs:

- when nothing was compiled (``pip install inferno-serve``, the Docker image);
- when ``INFERNO_PURE_PYTHON=1`` (the test suite sets it; ``tests/system/test_native.py``
  runs the compiled path);
- when any compiled module is stale, i.e. a source changed since the build (the
  stamp holds each source's hash): compiled modules call each other directly, so
  it is all of them or none.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

#: the modules on the path of every request and every streamed chunk: the HTTP layer,
#: the request route, admission, forwarding and the stream relay. Three more compile
#: too (``observability.logging``, ``proxy.job``, ``proxy.bodies``), but with them the
#: unit suite crashed now and then in the garbage collector (a set of weak references
#: holding a freed one; benchmarks/README.md, "Compiled hot path"): they stay Python.
HOT_MODULES: tuple[str, ...] = (
    "inferno.http.messages",
    "inferno.http.upstream",
    "inferno.http.client",
    "inferno.http.server",
    "inferno.proxy.requestlog",
    "inferno.proxy.admission",
    "inferno.proxy.streams",
    "inferno.proxy.forward",
    "inferno.proxy.app",
)
#: the group's shared library (``mypycify(group_name=...)`` adds ``__mypyc``)
GROUP = "inferno._native"
PACKAGE = Path(__file__).resolve().parent
STAMP = PACKAGE / "_native.stamp"
PURE_ENV = "INFERNO_PURE_PYTHON"


def source_of(module: str) -> Path:
    return PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")


def digest() -> str:
    """One hash over every hot module's source, as the stamp records it."""
    h = hashlib.sha256()
    for module in HOT_MODULES:
        h.update(module.encode())
        h.update(source_of(module).read_bytes())
    return h.hexdigest()


def built() -> bool:
    """A compiled build is present (it may be stale)."""
    return STAMP.exists()


def fresh() -> bool:
    """A compiled build is present and matches the sources."""
    try:
        return STAMP.read_text().strip() == digest()
    except OSError:
        return False


class _SourceOnly:
    """A meta-path finder that loads the hot modules from their ``.py`` files."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in HOT_MODULES:
            return None
        return importlib.util.spec_from_file_location(name, source_of(name))


def choose() -> bool:
    """Decide once, at ``import inferno``: True if the compiled modules will load."""
    if not built():
        return False
    if os.environ.get(PURE_ENV, "") not in ("", "0") or not fresh():
        if _SourceOnly not in sys.meta_path:
            sys.meta_path.insert(0, _SourceOnly)
        return False
    return True


def active() -> bool:
    """Whether the hot path that is loaded is the compiled one."""
    module = sys.modules.get("inferno.http.server")
    return module is not None and not (module.__file__ or "").endswith(".py")
