"""The docs stay true: every CLI flag is documented, every doc link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferno.cli import backend, bench, proxy, up
from inferno.policies import available_policies

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", [proxy, backend, up, bench], ids=lambda c: c.name)
def test_every_flag_is_in_configuration_md(command: object) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    flags = [p.opts[0] for p in command.params if p.opts and p.opts[0].startswith("--")]  # type: ignore[attr-defined]
    missing = [f for f in flags if f"`{f}`" not in text]
    assert not missing, f"undocumented {command.name} flags: {missing}"  # type: ignore[attr-defined]


def test_every_policy_is_documented() -> None:
    text = (ROOT / "docs" / "policies.md").read_text()
    assert all(f"`{name}`" in text for name in available_policies())


def test_relative_links_resolve() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
