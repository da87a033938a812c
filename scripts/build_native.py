"""Compile the proxy's hot path with mypyc, in place (``make native``; docs/architecture.md).

Each module of ``inferno.native.HOT_MODULES`` gets an extension module beside its
source, and the group one shared library, ``inferno/_native__mypyc*.so``; the stamp
records the sources' hash, so an edited source makes Python load the sources again
until the next build. ``--clean`` removes the build (pure Python again).

Needs a C compiler and Python's headers (gcc and python3-dev on Debian).
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inferno import native  # noqa: E402


def artifacts() -> list[Path]:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    found = [native.source_of(m).with_suffix(suffix) for m in native.HOT_MODULES]
    found += list(native.PACKAGE.glob("_native__mypyc*"))
    return [p for p in found if p.exists()]


def clean() -> None:
    for path in [*artifacts(), native.STAMP]:
        if path.exists():
            path.unlink()


def build() -> None:
    # Imported here: a pure-Python install never needs the compiler's packages.
    from mypyc.build import mypycify
    from setuptools import Distribution
    from setuptools.command.build_ext import build_ext

    clean()
    os.chdir(ROOT)  # mypy reads pyproject.toml's [tool.mypy] from here
    sources = [str(native.source_of(m).relative_to(ROOT)) for m in native.HOT_MODULES]
    with tempfile.TemporaryDirectory(prefix="inferno-native-") as tmp:
        extensions = mypycify(sources, opt_level="3", group_name=native.GROUP, target_dir=tmp)
        # A bare Distribution: setup() would read this pyproject.toml as a project.
        dist = Distribution({"name": "inferno-native", "ext_modules": extensions})
        cmd = build_ext(dist)
        cmd.inplace = True
        cmd.build_temp = str(Path(tmp) / "temp")
        cmd.ensure_finalized()
        cmd.run()
    native.STAMP.write_text(native.digest() + "\n")
    print(f"compiled {len(native.HOT_MODULES)} modules: {', '.join(native.HOT_MODULES)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = parser.parse_args()
    if args.clean:
        clean()
        print("removed the compiled modules: pure Python")
        return
    build()


if __name__ == "__main__":
    main()
