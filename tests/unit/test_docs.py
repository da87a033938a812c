"""The docs stay true: every CLI flag is documented, every doc link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferno.cli import load
from inferno.policies import available_policies

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["proxy", "backend", "up", "bench", "worker"])
def test_every_flag_is_in_configuration_md(name: str) -> None:
    command = load(name)
    text = (ROOT / "docs" / "configuration.md").read_text()
    flags = [p.opts[0] for p in command.params if p.opts and p.opts[0].startswith("--")]
    missing = [f for f in flags if f"`{f}`" not in text]
    assert not missing, f"undocumented {name} flags: {missing}"


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


def _code_blocks(text: str) -> list[tuple[int, str]]:
    """(offset, body) of every fenced code block."""
    return [(m.start(), m.group(1)) for m in re.finditer(r"```[a-z]*\n(.*?)```", text, flags=re.S)]


def test_readme_commands_run_from_the_venv_make_run_made() -> None:
    """`make run` installs into .venv, which is not on the PATH: the README activates it
    before its first `inferno` or `python` command, and says so once, consistently."""
    readme = (ROOT / "README.md").read_text()
    activate = readme.index("source .venv/bin/activate")
    assert readme.index("make run") < activate
    for offset, block in _code_blocks(readme):
        for line in block.splitlines():
            if re.match(r"\s*(inferno|python) ", line) and "pip install" not in readme[offset - 300 : offset]:
                assert offset > activate, f"README runs {line.strip()!r} before activating .venv"
    assert ".venv/bin/inferno" not in readme  # one way of saying it, not two


def _extras_make_run_installs() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^install: .*\$\(INSTALLED\)", makefile, re.M) and "run: install" in makefile
    extras = re.search(r"^EXTRAS := (.+)$", makefile, re.M)
    assert extras is not None
    return set(extras.group(1).split(","))


def test_make_run_installs_the_openai_client_the_readme_uses() -> None:
    import tomllib

    readme = (ROOT / "README.md").read_text()
    assert "from openai import OpenAI" in readme
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [dep for extra in _extras_make_run_installs() for dep in project["optional-dependencies"][extra]]
    assert any(re.fullmatch(r"openai>=[0-9.]+", dep) for dep in deps), deps


def test_the_banners_image_example_names_a_photo_that_exists(tmp_path: Path) -> None:
    from inferno.launcher import Launcher, banner, example_photo, make_plan

    plan = make_plan(1, free_ports=True, engine="fake", policy="round_robin", log_format="text")
    text = banner(Launcher(plan), {"image-classification": "efficientnet-lite0"})
    named = re.search(r"base64 -w0 (\S+)\)", text)
    assert named is not None, text
    assert (ROOT / named.group(1)).is_file() or Path(named.group(1)).is_file(), named.group(1)
    # From the repository (where `make run` starts it) the path is the README's own.
    assert example_photo(ROOT) == "tests/data/images/cat.jpg"
    elsewhere = example_photo(tmp_path)  # run from anywhere else: a path that works there
    assert Path(elsewhere).is_absolute() and Path(elsewhere).is_file()


def test_the_banners_deploy_command_finds_a_cluster_on_other_ports_or_state(tmp_path: Path) -> None:
    import dataclasses

    from inferno.launcher import Launcher, deploy_command, make_plan

    # make run's: the default ports (not bound here: the test must not need them free)
    free = make_plan(0, free_ports=True, engine="fake", policy="round_robin", log_format="text", models=())
    default = dataclasses.replace(free, proxy_port=8080, ops_port=6100)
    assert deploy_command(Launcher(default)) == "inferno deploy"
    plan = make_plan(
        0,
        free_ports=True,
        engine="fake",
        policy="round_robin",
        log_format="text",
        models=(),
        state_dir=str(tmp_path),
    )
    assert deploy_command(Launcher(plan)) == (
        f"inferno deploy --proxy-ops 127.0.0.1:{plan.ops_port} --admin-token-file {tmp_path / 'admin-token'}"
    )
