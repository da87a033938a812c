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


def test_every_limit_is_in_security_md_with_its_default() -> None:
    from inferno.config import HttpConfig, ProxyConfig, RegistryConfig, RequestLimits, UpstreamConfig
    from inferno.engines.minilm import MiniLMOptions
    from inferno.engines.vision.engine import EfficientNetOptions

    text = (ROOT / "docs" / "security.md").read_text()
    rows = {
        line.split("|")[2].strip(): line.split("|")[3].strip()
        for line in text.splitlines()
        if line.startswith("| ") and line.count("|") >= 5
    }
    limits: list[tuple[str, object]] = [
        (f"--http-{name}".replace("_", "-"), field.default) for name, field in HttpConfig.model_fields.items()
    ]
    limits += [
        (f"--upstream-{name}".replace("_", "-"), field.default)
        for name, field in UpstreamConfig.model_fields.items()
        if name.startswith("max_response") or name == "max_chunk_bytes"
    ]
    limits += [
        (f"--request-{name}".replace("_", "-"), field.default)
        for name, field in RequestLimits.model_fields.items()
    ]
    limits += [
        ("--image-max-aspect-ratio", EfficientNetOptions().image_max_aspect_ratio),
        ("--embedding-max-request-tokens", MiniLMOptions().embedding_max_request_tokens),
        ("--embedding-batch-tokens", MiniLMOptions().embedding_batch_tokens),
        ("--registry-max-backends", RegistryConfig().max_backends),
        ("--registry-resolve-timeout-s", RegistryConfig().resolve_timeout_s),
        ("--max-body-bytes", ProxyConfig().max_body_bytes),
    ]
    for flag, default in limits:
        assert f"`{flag}`" in rows, f"{flag} missing from the limits table"
        assert float(rows[f"`{flag}`"]) == float(default), (flag, rows[f"`{flag}`"], default)  # type: ignore[arg-type]
